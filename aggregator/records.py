"""The plain, typed records that travel between pipeline stages.

Each name says where in the pipeline a value lives: the config hands storage
``SourceSpec``s; a lease comes out as a ``ClaimedSource`` whose ``SourceToFetch`` goes into
``fetch``, a ``FetchResult`` comes out; ``parse`` turns its body into a
``ParsedFeed``; ``normalize`` makes ``Item``s; ``dedupe`` compares them with
``StoredItem``s (and story matching with ``MatchCandidate``s) and
returns an ``IngestPlan``; the poll's outcome goes back as a ``PollRecord``; ``curate``
picks ``Candidate``s for an output, with the ``Editorial`` overrides. They are frozen
dataclasses so the pure deciders cannot mutate them, and they import nothing of the
package, so storage and the deciders can both speak them without knowing each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class SourceToFetch:
    """What the fetcher needs to know about one claimed source."""

    id: int
    name: str
    url: str
    etag: str | None = None
    last_modified: str | None = None
    allow_private: bool = False


@dataclass(frozen=True)
class SourceSpec:
    """A source as the config wants it, in plain values: what ``Store.sync_sources`` makes true."""

    name: str
    url: str
    tags: tuple[str, ...] = ()
    interval_seconds: int | None = None
    enabled: bool = True
    allow_private: bool = False


def renamed_sources(specs: Sequence[SourceSpec], stored: Mapping[str, str]) -> dict[str, str]:
    """Which stored sources the config renames: new name -> stored name. ``stored``: each stored
    source's name -> its URL as configured. A source is known by its name, but a name the store
    does not know, with the URL of the one stored source the config no longer names, is that
    source renamed: taken for a new source, it stored every item of its feed a second time, and
    each story showed the outlet twice under two names. Where two stored sources the config no
    longer names share the URL, neither is taken."""
    wanted = {spec.name for spec in specs}
    vacated: dict[str, list[str]] = {}  # URL as configured -> stored sources the config no longer names
    for name, url in stored.items():
        if name not in wanted:
            vacated.setdefault(url, []).append(name)
    renames = {}
    for spec in specs:
        if spec.name not in stored and len(was := vacated.pop(spec.url, [])) == 1:
            renames[spec.name] = was[0]
    return renames


@dataclass(frozen=True)
class SourceLabel:
    """A stored source's id with what outputs choose sources by (``curate.source_scope``)."""

    id: int
    name: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class ClaimedSource:
    """A leased source: what to fetch, plus the state the decisions after the fetch need."""

    fetch: SourceToFetch
    body_hash: str | None
    error_count: int
    interval_seconds: int | None
    tags: tuple[str, ...]
    items_per_day: float | None = None  # as last measured: a 304 must not forget the adaptive rate
    failing_since: datetime | None = None  # last success, else when the source was added


@dataclass(frozen=True)
class PollRecord:
    """The source's new state after one poll, as decided by the wiring."""

    outcome: str  # new | updated | unchanged | not_modified | error | retired
    next_poll_at: datetime | None
    next_poll_reason: str
    error_count: int
    body_hash: str | None = None
    items_new: int = 0
    items_updated: int = 0
    feed_title: str | None = None
    feed_link: str | None = None
    feed_id: str | None = None
    items_per_day: float | None = None
    retired_reason: str | None = None
    # Set when a document was parsed: its warning (None: parsed cleanly) replaces the stored one.
    parsed: bool = False
    warning: str | None = None


@dataclass(frozen=True)
class FetchResult:
    """The outcome of one HTTP poll, successful or not.

    ``body`` is None for a 304 and for failures. ``permanent_url`` is set when a
    301/308 chain moved the feed for good (302/307 leave the stored URL alone).
    """

    source_id: int
    url: str
    fetched_at: datetime
    status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None
    cache_control: str | None = None
    expires: str | None = None
    retry_after: str | None = None
    error: str | None = None
    retryable: bool = True
    elapsed: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and (self.status == 304 or 200 <= self.status < 300)


@dataclass(frozen=True)
class Enclosure:
    """A file attached to an item (podcast audio, an image), or, with ``thumbnail``, the
    preview image the source gave for it (``media:thumbnail``, JSON Feed ``image``)."""

    url: str
    type: str | None = None
    length: int | None = None
    thumbnail: bool = False


@dataclass(frozen=True)
class Item:
    """One normalized entry of one source, ready to be compared and stored.

    ``key`` is its identity within the source (guid, else canonical link, else a
    hash of title + content); ``fingerprint`` changes when its content does.
    """

    key: str
    guid: str | None
    link: str | None
    canonical_url: str | None
    title: str
    summary_html: str
    content_html: str
    text: str
    author: str | None
    categories: tuple[str, ...]
    published_at: datetime | None
    updated_at: datetime | None
    fingerprint: str
    language: str | None = None
    enclosures: tuple[Enclosure, ...] = ()
    # An undated item's place in time, estimated from where it stands in the document between
    # dated neighbours and from when it was first seen (normalize.place_undated); never
    # published as its date, only used to sort it. None for a dated item.
    placed_at: datetime | None = None
    # The key it was stored under before relative ids were kept as written: a relative guid
    # resolved against the feed's URL (``parse._keep_relative_ids_as_written``). None for others.
    former_key: str | None = None

    def __reduce__(self) -> tuple[Callable[..., Item], tuple[Any, ...]]:
        # Items go from the parse workers to the writer by the tens of thousands. Pickled
        # as a tuple of values they load in 40% of the time of the default (a dict each).
        return (_item_from_values, tuple(self.__dict__[name] for name in _ITEM_FIELDS))


def _item_from_values(*values: Any) -> Item:
    item = object.__new__(Item)  # as the default unpickling does: frozen, no __init__
    item.__dict__.update(zip(_ITEM_FIELDS, values, strict=True))
    return item


_ITEM_FIELDS = tuple(f.name for f in fields(Item))


@dataclass(frozen=True)
class ParsedFeed:
    """A feed document after parsing and normalization, before it meets the database."""

    title: str | None
    link: str | None
    feed_id: str | None
    ttl_minutes: int | None
    update_period_minutes: int | None
    items: tuple[Item, ...]
    warning: str | None = None


@dataclass(frozen=True)
class StoredItem:
    """What dedupe needs to know about an item already in the database."""

    id: int
    key: str
    fingerprint: str
    story_id: int
    update_count: int


@dataclass(frozen=True)
class MatchCandidate:
    """A stored item sharing a story-matching key with a new one."""

    item_id: int
    story_id: int
    sort_at: datetime
    signature: str


@dataclass(frozen=True, slots=True)
class StoryRefs:
    """A stored story's first members as story matching looks them up (``story_member_refs``):
    which they are, earliest first, as (item id, update count); whose they are; and when the
    first of them was published, which is when the story begins or later."""

    begins: datetime
    members: list[tuple[int, int]]
    sources: set[int]


@dataclass(frozen=True)
class ItemUpdate:
    stored: StoredItem
    item: Item
    match_signature: str | None = None
    match_keys: tuple[int, ...] = ()
    match_features: str | None = None  # stories.Features.dumps()


@dataclass(frozen=True)
class NewItem:
    """An item to insert, and the stored story it joins (None: it starts a new story)."""

    item: Item
    story_id: int | None
    match_signature: str | None = None  # cluster.Signature.dumps(), stored to find later copies
    match_keys: tuple[int, ...] = ()  # cluster.band_keys(), and name keys (stories.name_key)
    match_reason: str | None = None  # why it joined its story or started one (``aggregator story``)
    match_features: str | None = None  # stories.Features.dumps(), stored to judge later items
    joins_new: str | None = None  # key of an item of the same batch whose new story this one joins


@dataclass(frozen=True)
class InsertedItem:
    """Where a new item was stored: its row, its story and the time it sorts by, for a reader
    that keeps what it decided about the item (``StoryMatcher.stored``)."""

    item_id: int
    story_id: int
    sort_at: datetime


@dataclass(frozen=True)
class IngestPlan:
    """The decision for one fetched document: what to insert, update, or leave alone."""

    inserts: tuple[NewItem, ...]
    updates: tuple[ItemUpdate, ...]
    unchanged: int
    merges: tuple[tuple[int, int], ...] = ()
    """(story, into): stored stories story matching found to be fragments of another
    (``stories.Decision.absorbs``), each into its chain's end (``stories.merge_targets``),
    merged once the inserts are stored."""
    rekeys: tuple[tuple[int, str, str | None], ...] = ()
    """(stored item id, key, guid): unchanged items found under their ``Item.former_key``, to be
    stored under the key they have now (an update rewrites the key with the rest)."""

    @property
    def changed(self) -> bool:
        return bool(self.inserts or self.updates)


@dataclass(frozen=True)
class Candidate:
    """An item as curate sees it: the story it belongs to and where it came from."""

    item_id: int
    story_id: int
    story_uid: str
    source_name: str
    source_tags: tuple[str, ...]
    source_url: str
    source_link: str | None
    source_feed_id: str | None
    title: str
    link: str | None
    summary_html: str
    content_html: str
    text: str
    author: str | None
    categories: tuple[str, ...]
    published_at: datetime
    updated_at: datetime
    first_seen_at: datetime
    language: str | None = None
    # False when the source gave no date: ``published_at`` is then only where the item sorts
    # (see Item.placed_at), and outputs must not present it as a publication date.
    dated: bool = True
    # An undated item from its feed's first fetch (``poll.ages_unknown``): it sorts after
    # the dated news, whatever the undated cap.
    age_unknown: bool = False
    enclosures: tuple[Enclosure, ...] = ()  # attachments only; the preview image is ``thumbnail``
    thumbnail: str | None = None


@dataclass(frozen=True)
class Editorial:
    """An editor's overrides for one output: pinned stories (top first) and blocked ones."""

    pinned: tuple[int, ...] = ()
    blocked: frozenset[int] = frozenset()


@dataclass(frozen=True)
class OutputEntry:
    """One entry of a published output: a story, led by one item, with the other outlets."""

    story_uid: str
    lead: Candidate
    also: tuple[Candidate, ...]
    updated_at: datetime

    @property
    def outlets(self) -> int:
        """How many outlets (configured sources) carry the story in this output."""
        return len({member.source_name for member in (self.lead, *self.also)})


def etag_of(body: bytes) -> str:
    """The ETag of published bytes (a feed, an archive week, a page): a strong validator of
    the bytes alone, so the same bytes carry the same ETag whoever rendered or serves them."""
    return etag_of_digest(hashlib.sha256(body))


def etag_of_digest(digest: hashlib._Hash) -> str:
    """``etag_of`` from the SHA-256 of the bytes, taken as they went by."""
    return '"' + digest.hexdigest()[:32] + '"'
