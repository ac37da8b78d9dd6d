"""The queries the pipeline needs, and nothing that decides anything.

``Store`` wraps the engine. ``Store.ingest()`` opens the transaction in which fetch results
are written, one or several (group commit), never one split across two (DESIGN.md, decision
3): items, stories, the source's new state and the fetch-log row commit together or not at
all, so killing the process at any instant leaves either the old state (the poll is simply
redone) or the new one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    distinct,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.config import Config, Output
from aggregator.curate import Editorial, draws_from
from aggregator.errors import StorageError, UsageError
from aggregator.normalize import canonical_url
from aggregator.records import (
    Candidate,
    Enclosure,
    FetchResult,
    Item,
    ItemUpdate,
    NewItem,
    SourceToFetch,
    StoredItem,
)
from aggregator.store.models import (
    ArchiveRow,
    Base,
    DeletedItemRow,
    EditorialRow,
    FetchLogRow,
    ItemRow,
    MatchKeyRow,
    PublishedRow,
    SourceRow,
    StoryRow,
)

T = TypeVar("T")
IN_CHUNK = 500  # stay well under SQLite's bound-parameter limit
STORY_NAMESPACE = uuid.UUID("6f1c6b0e-5d0a-4d5e-9a57-5e7f1a0b2c3d")
_STORY_NAMESPACE_BYTES = STORY_NAMESPACE.bytes
RATE_WINDOW = timedelta(days=7)
MATCH_KEY_RETENTION = timedelta(days=14)
MAX_KEY_FANOUT = 100  # a story copied by more outlets than this still matches through its other keys
SYNC_LOCK_KEY = 0x61676772_00000002  # pg_advisory_xact_lock key of sync_sources ("aggr", 2)


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


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
class MatchCandidate:
    item_id: int
    story_id: int
    sort_at: datetime
    signature: str


@dataclass(frozen=True)
class StoredMember:
    """A stored item of a candidate story, as story matching reads it."""

    item_id: int
    story_id: int
    sort_at: datetime
    features: str | None  # stories.Features.dumps()
    signature: str | None  # cluster.Signature.dumps()


@dataclass(frozen=True)
class StoryMemberRow:
    """One item of a story as ``aggregator story`` shows it."""

    item_id: int
    source: str
    title: str
    link: str | None
    sort_at: datetime
    reason: str | None


@dataclass(frozen=True)
class PruneReport:
    items: int
    stories: int
    fetch_log: int


@dataclass(frozen=True)
class StoreStats:
    sources: int
    failing: int
    retired: int
    items: int
    stories: int
    due: int
    lag_seconds: float


@dataclass(frozen=True)
class ArchivePage:
    """A frozen archive week of an output that has entries (the links of the chain)."""

    week: str
    entries: int
    updated_at: datetime | None


@dataclass(frozen=True)
class CoverageItem:
    """One outlet's item of a story, as the story page lists it."""

    source_name: str
    title: str
    link: str | None
    sort_at: datetime
    dated: bool  # False: the outlet gave no date; sort_at is when we first saw it


@dataclass(frozen=True)
class StoryCoverage:
    story_id: int
    uid: str
    items: tuple[CoverageItem, ...]  # newest first


@dataclass
class SourceHealth:
    name: str
    url: str
    enabled: bool
    in_config: bool
    last_polled_at: datetime | None
    last_status: int | None
    last_success_at: datetime | None
    next_poll_at: datetime | None
    next_poll_reason: str
    error_count: int
    last_error: str | None
    retired_reason: str | None
    items: int
    items_per_day: float | None
    feed_title: str | None = None  # the feed's own title; outputs name the source by ``name``
    last_warning: str | None = None


def story_uid(key: str, authority: str, first_seen: datetime) -> str:
    """A tag: URI (RFC 4151), minted once per story and stored: it is the output entry id.

    Its last part is ``uuid.uuid5(STORY_NAMESPACE, key).hex``, computed here without
    building UUID objects (4 µs against 1 µs, once per new item of a first ingest).
    """
    digest = bytearray(hashlib.sha1(_STORY_NAMESPACE_BYTES + key.encode("utf-8")).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    return f"tag:{authority},{first_seen:%Y-%m-%d}:story/{digest.hex()}"


def story_key(source_id: int, item: Item) -> str:
    return f"url:{item.canonical_url}" if item.canonical_url else f"item:{source_id}:{item.key}"


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise _storage_error(exc) from exc

    # --- the desired state from feeds.yaml ------------------------------------------------
    def sync_sources(self, config: Config, now: datetime) -> SyncReport:
        """Make the sources table match the config; removed sources stop, their items stay.

        Safe under any number of processes syncing at once (workers started together, a
        reload in each): the whole read-compare-write runs under a lock the database holds
        until commit, so each process sees what the one before it wrote and finds nothing
        left to add. Without it two of them inserted the same new source and one died on
        the unique name.
        """
        added, changed, removed = [], [], []
        with self.session() as s:
            _serialize_writers(s, SYNC_LOCK_KEY)
            rows = {row.name: row for row in s.scalars(select(SourceRow))}
            for source in config.sources:
                interval = int(source.interval.total_seconds()) if source.interval else None
                row = rows.get(source.name)
                if row is None:
                    s.add(
                        SourceRow(
                            name=source.name,
                            url=source.url,
                            config_url=source.url,
                            tags=list(source.tags),
                            interval_seconds=interval,
                            enabled=source.enabled,
                            in_config=True,
                            allow_private=source.allow_private_network,
                            next_poll_at=now,
                            next_poll_reason="new source",
                            error_count=0,
                            created_at=now,
                        )
                    )
                    added.append(source.name)
                    continue
                before = (row.config_url, row.tags, row.interval_seconds, row.enabled, row.in_config, row.allow_private)
                if row.config_url != source.url:
                    # The user pointed the source elsewhere: forget validators and retirement.
                    row.url = row.config_url = source.url
                    row.etag = row.last_modified = row.body_hash = None
                    row.retired_at = None
                    row.retired_reason = None
                    row.error_count = 0
                    row.next_poll_at = now
                    row.next_poll_reason = "URL changed in config"
                if interval != row.interval_seconds and interval is not None:
                    sooner = now + timedelta(seconds=interval)
                    if row.next_poll_at > sooner:
                        row.next_poll_at, row.next_poll_reason = sooner, "interval changed in config"
                if not row.in_config:
                    # Removed and added again: a fresh start, also for a retired source.
                    row.next_poll_at, row.next_poll_reason = now, "back in config"
                    row.retired_at = row.retired_reason = None
                    row.error_count = 0
                row.tags, row.interval_seconds, row.enabled = list(source.tags), interval, source.enabled
                row.in_config, row.allow_private = True, source.allow_private_network
                after = (row.config_url, row.tags, row.interval_seconds, row.enabled, row.in_config, row.allow_private)
                if before != after:
                    changed.append(source.name)
            wanted = {source.name for source in config.sources}
            for name, row in rows.items():
                if name not in wanted and row.in_config:
                    row.in_config = False
                    row.lease_owner = row.lease_until = None
                    removed.append(name)
        return SyncReport(tuple(added), tuple(changed), tuple(removed))

    # --- the schedule -----------------------------------------------------------------
    def make_all_due(self, now: datetime) -> int:
        """``poll --all``: every active source becomes due now (leases are still respected)."""
        with self.session() as s:
            result = s.execute(
                update(SourceRow)
                .where(SourceRow.in_config.is_(True), SourceRow.retired_at.is_(None), SourceRow.enabled.is_(True))
                .values(next_poll_at=now, next_poll_reason="poll --all")
            )
            return _rowcount(result)

    def claim_due(self, owner: str, now: datetime, limit: int, lease: timedelta) -> list[ClaimedSource]:
        """Lease up to ``limit`` due sources to ``owner`` in one statement.

        The sub-select is ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers
        never claim the same source; SQLite ignores it and serialises writers itself.
        An expired lease (a killed worker) is simply claimable again.
        """
        conditions = [
            SourceRow.enabled.is_(True),
            SourceRow.in_config.is_(True),
            SourceRow.retired_at.is_(None),
            or_(SourceRow.lease_until.is_(None), SourceRow.lease_until < now),
            SourceRow.next_poll_at <= now,
        ]
        due = (
            select(SourceRow.id)
            .where(and_(*conditions))
            .order_by(SourceRow.next_poll_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        # One statement: on SQLite a separate SELECT would run outside the write
        # transaction (pysqlite begins one only at the first write), and two workers
        # could both read, then both lease, the same rows.
        with self.session() as s:
            rows = list(s.execute(
                update(SourceRow)
                .where(SourceRow.id.in_(due))
                .values(lease_owner=owner, lease_until=now + lease)
                .returning(
                    SourceRow.id, SourceRow.name, SourceRow.url, SourceRow.etag, SourceRow.last_modified,
                    SourceRow.allow_private, SourceRow.body_hash, SourceRow.error_count,
                    SourceRow.interval_seconds, SourceRow.tags, SourceRow.next_poll_at, SourceRow.items_per_day,
                    SourceRow.last_success_at, SourceRow.created_at,
                )
            ).all())  # fmt: skip
        rows.sort(key=lambda r: r.next_poll_at)
        return [
            ClaimedSource(
                SourceToFetch(r.id, r.name, r.url, r.etag, r.last_modified, r.allow_private),
                r.body_hash,
                r.error_count,
                r.interval_seconds,
                tuple(r.tags or ()),
                r.items_per_day,
                r.last_success_at or r.created_at,
            )
            for r in rows
        ]

    def release(self, source_ids: Iterable[int], owner: str) -> None:
        """Give back leases we will not use (shutdown), so another worker need not wait."""
        ids = list(source_ids)
        if not ids:
            return
        with self.session() as s:
            s.execute(
                update(SourceRow)
                .where(SourceRow.id.in_(ids), SourceRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def lease_owners(self) -> list[str]:
        with self.session() as s:
            return [o for o in s.scalars(select(SourceRow.lease_owner).distinct()) if o]

    def release_owner(self, owner: str) -> int:
        """Drop every lease held by ``owner`` (a worker known to be dead)."""
        with self.session() as s:
            result = s.execute(
                update(SourceRow).where(SourceRow.lease_owner == owner).values(lease_owner=None, lease_until=None)
            )
            return _rowcount(result)

    def source_state(self, source_id: int) -> SourceRow:
        with self.session() as s:
            row = s.get(SourceRow, source_id)
            if row is None:
                raise StorageError(f"source {source_id} vanished")
            s.expunge(row)
            return row

    # --- ingest ----------------------------------------------------------------------
    @contextmanager
    def ingest(self) -> Iterator[IngestTransaction]:
        """One transaction on a plain connection: no ORM session to set up and tear down, which
        was most of the cost of recording a 304 (a round of 1,000 of them is mostly this)."""
        try:
            with self.engine.begin() as connection:
                yield IngestTransaction(connection)
        except SQLAlchemyError as exc:
            raise _storage_error(exc) from exc

    # --- outputs ---------------------------------------------------------------------
    def candidates(self, config: Config, output: Output, now: datetime, limit: int) -> list[Candidate]:
        """The newest items an output may draw from, joined with their source and story."""
        with self.session() as s:
            where = self._output_filter(s, output)
            if where is None:
                return []
            # Ties (undated items stored before they were placed share their first-seen time)
            # go to the lower id: inserted first, i.e. higher up in the document.
            query = self._candidate_select(where).order_by(ItemRow.sort_at.desc(), ItemRow.id.asc()).limit(limit)
            if output.max_age:
                query = query.where(ItemRow.sort_at >= now - output.max_age)
            # Plain columns, not ORM objects: building 500 entities cost more than the query.
            found = [_candidate_row(row) for row in s.execute(query)]
            if sum(not c.dated for c in found) * 2 > len(found):
                # Undated items sort near their first-seen time, so a few feeds without dates can
                # fill the newest `limit` items on their own: read the dated news as well, or
                # curate's undated cap would have nothing to put above them.
                seen = {c.item_id for c in found}
                dated = query.where(ItemRow.published_at.is_not(None))
                found += [c for c in map(_candidate_row, s.execute(dated)) if c.item_id not in seen]
            return found

    def coverage_candidates(self, output: Output, now: datetime, limit: int) -> list[Candidate]:
        """Every item within ``max_age`` of the ``limit`` stories the most outlets carry
        (``order: coverage``): a widely covered story older than the newest few hundred items
        must still be seen, and counted whole."""
        with self.session() as s:
            where = self._output_filter(s, output)
            if where is None:
                return []
            if output.max_age:
                where = and_(where, ItemRow.sort_at >= now - output.max_age)
            outlets = func.count(distinct(ItemRow.source_id))
            ranked = (
                select(ItemRow.story_id)
                .where(where)
                .group_by(ItemRow.story_id)
                .order_by(outlets.desc(), func.max(ItemRow.sort_at).desc(), ItemRow.story_id.desc())
                .limit(limit)
            )
            query = self._candidate_select(where).where(ItemRow.story_id.in_(ranked.scalar_subquery()))
            return [_candidate_row(row) for row in s.execute(query)]

    def candidates_between(self, output: Output, start: datetime, end: datetime, limit: int) -> list[Candidate]:
        """The output's items dated in [start, end): one page of its archive."""
        with self.session() as s:
            where = self._output_filter(s, output)
            if where is None:
                return []
            query = (
                self._candidate_select(where)
                .where(ItemRow.sort_at >= start, ItemRow.sort_at < end)
                .order_by(ItemRow.sort_at.desc(), ItemRow.id.asc())
                .limit(limit)
            )
            return [_candidate_row(row) for row in s.execute(query)]

    def earliest_item(self, output: Output) -> datetime | None:
        with self.session() as s:
            where = self._output_filter(s, output)
            return None if where is None else s.scalar(select(func.min(ItemRow.sort_at)).where(where))

    def next_item_at(self, output: Output, start: datetime | None, end: datetime) -> datetime | None:
        """The date of the output's first item in [start, end): where the next non-empty week is,
        found in one indexed query however many empty weeks lie between."""
        with self.session() as s:
            where = self._output_filter(s, output)
            if where is None:
                return None
            query = select(func.min(ItemRow.sort_at)).where(where, ItemRow.sort_at < end)
            if start is not None:
                query = query.where(ItemRow.sort_at >= start)
            return s.scalar(query)

    # --- archives ----------------------------------------------------------------------
    def archive_weeks(self, slug: str) -> list[ArchivePage]:
        """Every week evaluated for the archive, oldest first; those with ``entries`` 0 had
        items the output's rules all left out (they are not linked)."""
        with self.session() as s:
            rows = s.execute(
                select(ArchiveRow.week, ArchiveRow.entries, ArchiveRow.updated_at)
                .where(ArchiveRow.slug == slug)
                .order_by(ArchiveRow.week)
            )
            return [ArchivePage(r.week, r.entries, r.updated_at) for r in rows]

    def archive_pages(self, slug: str) -> list[ArchivePage]:
        """The archive weeks with entries, oldest first."""
        return [page for page in self.archive_weeks(slug) if page.entries]

    def archive(self, slug: str, week: str) -> ArchiveRow | None:
        """A frozen archive week with entries (None for an empty or unarchived one)."""
        with self.session() as s:
            row = s.get(ArchiveRow, (slug, week))
            if row is None or row.entries == 0:
                return None
            s.expunge(row)
            return row

    def save_archive(self, row: ArchiveRow) -> None:
        """Freeze a week; when another worker froze it first, theirs stays (same rules, same bytes)."""
        values = {column.name: getattr(row, column.name) for column in ArchiveRow.__table__.columns}
        with self.session() as s:
            _insert_ignore(s, ArchiveRow, [values])

    # --- stories -----------------------------------------------------------------------
    def story_coverage(self, story_id: int) -> StoryCoverage | None:
        """Every stored item of a story, from every source, newest first."""
        with self.session() as s:
            uid = s.scalar(select(StoryRow.uid).where(StoryRow.id == story_id))
            if uid is None:
                return None
            rows = s.execute(
                select(SourceRow.name, ItemRow.title, ItemRow.link, ItemRow.sort_at, ItemRow.published_at)
                .join(SourceRow, ItemRow.source_id == SourceRow.id)
                .where(ItemRow.story_id == story_id)
                .order_by(ItemRow.sort_at.desc(), ItemRow.id.desc())
            )
            items = tuple(CoverageItem(r.name, r.title, r.link, r.sort_at, r.published_at is not None) for r in rows)
        return StoryCoverage(story_id, uid, items)

    def story_candidates(self, config: Config, output: Output, story_ids: Iterable[int]) -> list[Candidate]:
        """Every item of the given stories from the output's sources (pinned stories outlive
        the age window and the candidate limit)."""
        ids = list(story_ids)
        if not ids:
            return []
        with self.session() as s:
            where = self._output_filter(s, output)
            if where is None:
                return []
            return [
                _candidate_row(row) for row in s.execute(self._candidate_select(where).where(ItemRow.story_id.in_(ids)))
            ]

    def editorial(self, slug: str) -> Editorial:
        with self.session() as s:
            rows = s.execute(
                select(EditorialRow.story_id, EditorialRow.action)
                .where(EditorialRow.slug == slug)
                .order_by(EditorialRow.created_at.desc(), EditorialRow.story_id)
            ).all()
        pinned = tuple(story for story, action in rows if action == "pin")
        return Editorial(pinned, frozenset(story for story, action in rows if action == "block"))

    def set_editorial(self, slug: str, story_id: int, action: str | None, now: datetime) -> None:
        """Pin or block a story in an output; ``None`` removes the decision."""
        with self.session() as s:
            row = s.get(EditorialRow, (slug, story_id))
            if action is None:
                if row is not None:
                    s.delete(row)
            elif row is None:
                s.add(EditorialRow(slug=slug, story_id=story_id, action=action, created_at=now))
            else:
                row.action, row.created_at = action, now

    def resolve_story(self, reference: str) -> tuple[int, str]:
        """A story by its number, its tag: id, or the URL of any of its items."""
        with self.session() as s:
            if reference.isdigit():
                row = s.execute(select(StoryRow.id, StoryRow.uid).where(StoryRow.id == int(reference))).first()
            elif reference.startswith("tag:"):
                row = s.execute(select(StoryRow.id, StoryRow.uid).where(StoryRow.uid == reference)).first()
            else:
                url = canonical_url(reference) or reference
                row = s.execute(
                    select(StoryRow.id, StoryRow.uid)
                    .join(ItemRow, ItemRow.story_id == StoryRow.id)
                    .where(or_(ItemRow.canonical_url == url, ItemRow.link == reference))
                    .limit(1)
                ).first()
        if row is None:
            raise UsageError(f"no story matches {reference!r} (use a story number, its tag: id, or an item URL)")
        return int(row[0]), str(row[1])

    def match_reasons(self, item_ids: Iterable[int]) -> dict[int, str]:
        """Why each of these items joined its story (or started one), where it was recorded."""
        found: dict[int, str] = {}
        with self.session() as s:
            for chunk in _chunks(sorted(set(item_ids))):
                rows = s.execute(select(ItemRow.id, ItemRow.match_reason).where(ItemRow.id.in_(chunk)))
                found.update((item_id, reason) for item_id, reason in rows if reason)
        return found

    def story_members_detail(self, story_id: int) -> list[StoryMemberRow]:
        """Every item of a story, earliest first, with why it joined (``aggregator story``)."""
        with self.session() as s:
            rows = s.execute(
                select(ItemRow.id, SourceRow.name, ItemRow.title, ItemRow.link, ItemRow.sort_at, ItemRow.match_reason)
                .join(SourceRow, ItemRow.source_id == SourceRow.id)
                .where(ItemRow.story_id == story_id)
                .order_by(ItemRow.sort_at, ItemRow.id)
            ).all()
        return [StoryMemberRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def save_published(self, slug: str, fmt: str, media_type: str, body: bytes, etag: str, now: datetime) -> bool:
        """Store a rendering; False (and no write) when the bytes are what we already have."""
        with self.session() as s:
            current = s.execute(
                select(PublishedRow.etag, PublishedRow.published_at).where(
                    PublishedRow.slug == slug, PublishedRow.format == fmt
                )
            ).first()
            if current is not None and current.etag == etag:
                return False
            # Last-Modified has one-second resolution: a change within the same second as the
            # previous one must still move it, or readers that only send If-Modified-Since
            # would be told 304 and miss the change.
            now = now.replace(microsecond=0)
            if current is not None and now <= current.published_at.replace(microsecond=0):
                now = current.published_at.replace(microsecond=0) + timedelta(seconds=1)
            # An upsert: several workers may publish the same output at the same moment.
            values: dict[str, object] = {"slug": slug, "format": fmt, "media_type": media_type, "body": body}
            values.update(etag=etag, published_at=now)
            changes = {k: values[k] for k in ("media_type", "body", "etag", "published_at")}
            dialect = s.get_bind().dialect.name
            stmt: Any
            if dialect == "postgresql":
                stmt = postgresql.insert(PublishedRow).values(values)
                stmt = stmt.on_conflict_do_update(index_elements=["slug", "format"], set_=changes)
            else:
                stmt = sqlite.insert(PublishedRow).values(values)
                stmt = stmt.on_conflict_do_update(index_elements=["slug", "format"], set_=changes)
            s.execute(stmt)
            return True

    @staticmethod
    def _output_filter(s: Session, output: Output) -> ColumnElement[bool] | None:
        """The WHERE clause limiting items to the output's sources (curate.draws_from decides);
        None when no source qualifies. An output of every source needs no id list at all."""
        if not output.sources and not output.tags:
            return true()
        rows = s.execute(select(SourceRow.id, SourceRow.name, SourceRow.tags)).all()
        wanted = [r.id for r in rows if draws_from(output, r.name, r.tags or ())]
        return ItemRow.source_id.in_(wanted) if wanted else None

    @staticmethod
    def _candidate_select(where: ColumnElement[bool]) -> Any:
        return (
            select(*CANDIDATE_COLUMNS)
            .join(SourceRow, ItemRow.source_id == SourceRow.id)
            .join(StoryRow, ItemRow.story_id == StoryRow.id)
            .where(where)
        )

    def published(self, slug: str, fmt: str) -> PublishedRow | None:
        with self.session() as s:
            row = s.get(PublishedRow, (slug, fmt))
            if row is not None:
                s.expunge(row)
            return row

    def published_etag(self, slug: str, fmt: str) -> str | None:
        """The current ETag of a rendering, without its body: what ``serve`` asks to learn
        whether the bytes it holds are still the published ones."""
        with self.session() as s:
            return s.scalar(select(PublishedRow.etag).where(PublishedRow.slug == slug, PublishedRow.format == fmt))

    # --- visibility ------------------------------------------------------------------
    def health(self) -> list[SourceHealth]:
        with self.session() as s:
            per_source = s.execute(select(ItemRow.source_id, func.count()).group_by(ItemRow.source_id))
            counts = {source_id: count for source_id, count in per_source}
            return [
                SourceHealth(
                    name=r.name,
                    url=r.url,
                    enabled=r.enabled,
                    in_config=r.in_config,
                    last_polled_at=r.last_polled_at,
                    last_status=r.last_status,
                    last_success_at=r.last_success_at,
                    next_poll_at=None if r.retired_at or not r.in_config or not r.enabled else r.next_poll_at,
                    next_poll_reason=r.next_poll_reason,
                    error_count=r.error_count,
                    last_error=r.last_error,
                    retired_reason=r.retired_reason,
                    items=counts.get(r.id, 0),
                    items_per_day=r.items_per_day,
                    feed_title=r.feed_title,
                    last_warning=r.last_warning,
                )
                for r in s.scalars(select(SourceRow).order_by(SourceRow.name))
            ]

    def stats(self, now: datetime) -> StoreStats:
        """The numbers /metrics and /healthz report, in a handful of aggregate queries."""
        active = and_(SourceRow.in_config.is_(True), SourceRow.enabled.is_(True), SourceRow.retired_at.is_(None))
        with self.session() as s:
            sources = s.scalar(select(func.count()).select_from(SourceRow).where(SourceRow.in_config.is_(True)))
            failing = s.scalar(select(func.count()).where(active, SourceRow.error_count > 0))
            retired = s.scalar(select(func.count()).where(SourceRow.retired_at.is_not(None)))
            due_filter = and_(
                active,
                SourceRow.next_poll_at <= now,
                or_(SourceRow.lease_until.is_(None), SourceRow.lease_until < now),
            )
            due = s.scalar(select(func.count()).where(due_filter))
            oldest = s.scalar(select(func.min(SourceRow.next_poll_at)).where(due_filter))
            items = s.scalar(select(func.count()).select_from(ItemRow))
            stories = s.scalar(select(func.count()).select_from(StoryRow))
        lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        return StoreStats(sources or 0, failing or 0, retired or 0, items or 0, stories or 0, due or 0, lag)

    def prune(self, now: datetime, keep: timedelta, protected: set[int], *, fetch_log_keep: timedelta) -> PruneReport:
        """Retention: delete items older than ``keep`` (by date and by first sight) that no
        output shows, remember their keys so they are not re-imported, drop stories left
        without items, and trim the fetch log."""
        cutoff = now - keep
        deleted = 0
        with self.session() as s:
            while True:
                old = s.execute(
                    select(ItemRow.id, ItemRow.source_id, ItemRow.key)
                    .where(ItemRow.sort_at < cutoff, ItemRow.first_seen_at < cutoff)
                    .order_by(ItemRow.id)
                    .limit(IN_CHUNK + len(protected))
                ).all()
                batch = [row for row in old if row.id not in protected][:IN_CHUNK]
                if not batch:
                    break
                _insert_ignore(
                    s, DeletedItemRow, [{"source_id": r.source_id, "key": r.key, "deleted_at": now} for r in batch]
                )
                s.execute(delete(ItemRow).where(ItemRow.id.in_([r.id for r in batch])))
                deleted += len(batch)
                if len(batch) < IN_CHUNK:
                    break
            orphans = s.execute(
                delete(StoryRow).where(~select(ItemRow.id).where(ItemRow.story_id == StoryRow.id).exists())
            )
            log_rows = s.execute(delete(FetchLogRow).where(FetchLogRow.fetched_at < now - fetch_log_keep))
            # Copies of a story arrive within days; older lookup keys only cost space.
            s.execute(delete(MatchKeyRow).where(MatchKeyRow.sort_epoch < _epoch(now - MATCH_KEY_RETENTION)))
        return PruneReport(deleted, _rowcount(orphans), _rowcount(log_rows))

    def items_per_day(self, since: datetime) -> dict[str, dict[str, int]]:
        """Items first seen per source name and UTC day (``YYYY-MM-DD``) since ``since``."""
        day = func.date(ItemRow.first_seen_at)
        with self.session() as s:
            rows = s.execute(
                select(SourceRow.name, day, func.count())
                .join(SourceRow, ItemRow.source_id == SourceRow.id)
                .where(ItemRow.first_seen_at >= since)
                .group_by(SourceRow.name, day)
            ).all()
        found: dict[str, dict[str, int]] = {}
        for name, date, count in rows:
            found.setdefault(name, {})[str(date)[:10]] = int(count)
        return found

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            return {
                "sources": s.scalar(select(func.count()).select_from(SourceRow)) or 0,
                "items": s.scalar(select(func.count()).select_from(ItemRow)) or 0,
                "stories": s.scalar(select(func.count()).select_from(StoryRow)) or 0,
            }


# The statements of one poll, built once: constructing a select() on every call cost six
# times its execution (140 µs against 22 µs), and a first ingest runs ten per source.
_KEYS: BindParameter[Any] = bindparam("keys", expanding=True)
_Wanted = Callable[[Any], ColumnElement[bool]]  # column -> "column is one of the given values"


class _ByValues:
    """A prebuilt statement about a list of values (a poll's item keys, URLs, match keys),
    whose SQL text stays the same whatever the list's length.

    An expanding IN list is rendered into the SQL on every execution (SQLAlchemy's
    post-compile step, then a new prepared statement in SQLite for each length); a first
    ingest runs six such statements per poll. Here the list is one parameter: a JSON array
    read by json_each on SQLite, an array with ``= ANY`` on PostgreSQL. Other backends get
    the expanding IN list, in chunks.
    """

    def __init__(self, build: Callable[[_Wanted], Any]) -> None:
        self._sqlite = build(
            lambda column: column.in_(select(func.json_each(bindparam("values_json")).table_valued("value").c.value))
        )
        self._postgresql = build(
            lambda column: column == func.any(bindparam("values_array", type_=postgresql.ARRAY(column.type)))
        )
        self._portable = build(lambda column: column.in_(_KEYS))

    def batches(self, dialect: str, values: Sequence[Any], **params: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(statement, parameters) to execute for ``values``: one pair, or none for no values."""
        if not values:
            return
        if dialect == "sqlite":
            yield self._sqlite, {**params, "values_json": json.dumps(list(values))}
        elif dialect == "postgresql":
            yield self._postgresql, {**params, "values_array": list(values)}
        else:  # pragma: no cover - other backends get the portable IN list
            for chunk in _chunks(values):
                yield self._portable, {**params, "keys": chunk}


_SOURCE: BindParameter[int] = bindparam("source_id")
_DELETED_KEYS = _ByValues(
    lambda wanted: select(DeletedItemRow.key).where(DeletedItemRow.source_id == _SOURCE, wanted(DeletedItemRow.key))
)
_STORED_ITEMS = _ByValues(
    lambda wanted: select(ItemRow.id, ItemRow.key, ItemRow.fingerprint, ItemRow.story_id, ItemRow.update_count).where(
        ItemRow.source_id == _SOURCE, wanted(ItemRow.key)
    )
)
_STORIES_BY_URL = _ByValues(
    lambda wanted: select(StoryRow.canonical_url, StoryRow.id).where(wanted(StoryRow.canonical_url))
)
_ITEM_STORIES_BY_URL = _ByValues(
    lambda wanted: select(ItemRow.canonical_url, ItemRow.story_id).where(wanted(ItemRow.canonical_url))
)
_STORY_IDS = _ByValues(lambda wanted: select(StoryRow.key, StoryRow.id).where(wanted(StoryRow.key)))
_ITEM_IDS = _ByValues(
    lambda wanted: select(ItemRow.key, ItemRow.id).where(ItemRow.source_id == _SOURCE, wanted(ItemRow.key))
)
_MATCH_WINDOW = MatchKeyRow.sort_epoch.between(bindparam("earliest"), bindparam("latest"))


def _match_candidates(wanted: Any) -> Any:
    """Stored items carrying one of the ``wanted`` keys in the window, leaving out keys whose
    fan-out exceeds :fanout (one statement: the fan-out test is its sub-select)."""
    return (
        select(MatchKeyRow.key, ItemRow.id, ItemRow.story_id, ItemRow.sort_at, ItemRow.match_signature)
        .join(ItemRow, MatchKeyRow.item_id == ItemRow.id)
        .where(
            MatchKeyRow.key.in_(
                select(MatchKeyRow.key)
                .where(wanted, _MATCH_WINDOW)
                .group_by(MatchKeyRow.key)
                .having(func.count() <= bindparam("fanout"))
            ),
            _MATCH_WINDOW,
        )
    )


# Stories per name key among at most :sample of the window's items carrying it: a common name
# ("Tuesday") costs :sample index entries, not every item of the week that names it.
_TERM_SAMPLE = (
    "(SELECT COUNT(DISTINCT sampled.story_id) FROM (SELECT items.story_id FROM item_match_keys "
    "JOIN items ON items.id = item_match_keys.item_id WHERE item_match_keys.key = {key} "
    "AND item_match_keys.sort_epoch BETWEEN :earliest AND :latest LIMIT :sample) AS sampled)"
)
_TERM_STORY_COUNTS_SQLITE = text(
    f"SELECT wanted.value, {_TERM_SAMPLE.format(key='wanted.value')} FROM json_each(:values_json) AS wanted"
)
_TERM_STORY_COUNTS_POSTGRESQL = text(
    f"SELECT wanted.key, {_TERM_SAMPLE.format(key='wanted.key')} FROM unnest(:values_array) AS wanted(key)"
).bindparams(bindparam("values_array", type_=postgresql.ARRAY(BigInteger())))
_STORIES_WITH_KEYS = _ByValues(
    lambda wanted: (
        select(MatchKeyRow.key, ItemRow.story_id)
        .join(ItemRow, MatchKeyRow.item_id == ItemRow.id)
        .where(wanted(MatchKeyRow.key), _MATCH_WINDOW)
        .distinct()
    )
)


def _story_members(wanted: _Wanted) -> Any:
    """The first ``:per_story`` items of each wanted story dated from ``:since`` on."""
    order = (ItemRow.sort_at, ItemRow.id)
    ranked = (
        select(
            ItemRow.id,
            ItemRow.story_id,
            ItemRow.sort_at,
            ItemRow.match_features,
            ItemRow.match_signature,
            func.row_number().over(partition_by=ItemRow.story_id, order_by=order).label("rank"),
        )
        .where(wanted(ItemRow.story_id), ItemRow.sort_at >= bindparam("since"))
        .subquery()
    )
    columns = (ranked.c.id, ranked.c.story_id, ranked.c.sort_at, ranked.c.match_features, ranked.c.match_signature)
    return select(*columns).where(ranked.c.rank <= bindparam("per_story"))


_STORY_MEMBERS = _ByValues(_story_members)


def _story_member_refs(wanted: _Wanted) -> Any:
    """The first ``:per_story`` items of each wanted story dated from ``:since`` on, earliest
    first, without their features: which members, and how often each was updated."""
    order = (ItemRow.sort_at, ItemRow.id)
    ranked = (
        select(
            ItemRow.id,
            ItemRow.story_id,
            ItemRow.update_count,
            func.row_number().over(partition_by=ItemRow.story_id, order_by=order).label("rank"),
        )
        .where(wanted(ItemRow.story_id), ItemRow.sort_at >= bindparam("since"))
        .subquery()
    )
    columns = (ranked.c.id, ranked.c.story_id, ranked.c.update_count)
    return select(*columns).where(ranked.c.rank <= bindparam("per_story")).order_by(ranked.c.story_id, ranked.c.rank)


_STORY_MEMBER_REFS = _ByValues(_story_member_refs)
_BOUNDED_KEYS = (
    "WITH usable AS MATERIALIZED (SELECT wanted.{column} AS key FROM {values} AS {wanted} "
    "WHERE (SELECT COUNT(*) FROM (SELECT 1 FROM item_match_keys AS counted WHERE counted.key = wanted.{column} "
    "AND counted.sort_epoch BETWEEN :earliest AND :latest LIMIT :fanout + 1) AS bounded) <= :fanout) "
    "SELECT DISTINCT item_match_keys.key, items.story_id FROM usable "
    "JOIN item_match_keys ON item_match_keys.key = usable.key JOIN items ON items.id = item_match_keys.item_id "
    "WHERE item_match_keys.sort_epoch BETWEEN :earliest AND :latest"
)
_TERM_STORIES = (
    "(SELECT {aggregate} FROM (SELECT DISTINCT sampled.story_id FROM (SELECT items.story_id FROM item_match_keys "
    "JOIN items ON items.id = item_match_keys.item_id WHERE item_match_keys.key = {key} "
    "AND item_match_keys.sort_epoch BETWEEN :earliest AND :latest LIMIT :sample) AS sampled) AS found)"
)
_TERM_STORIES_SQLITE = text(
    "SELECT wanted.value, "
    + _TERM_STORIES.format(key="wanted.value", aggregate="group_concat(found.story_id)")
    + " FROM json_each(:values_json) AS wanted"
)
_TERM_STORIES_POSTGRESQL = text(
    "SELECT wanted.key, "
    + _TERM_STORIES.format(key="wanted.key", aggregate="string_agg(found.story_id::text, ',')")
    + " FROM unnest(:values_array) AS wanted(key)"
).bindparams(bindparam("values_array", type_=postgresql.ARRAY(BigInteger())))
_COPY_KEY_STORIES_SQLITE = text(_BOUNDED_KEYS.format(column="value", values="json_each(:values_json)", wanted="wanted"))
_COPY_KEY_STORIES_POSTGRESQL = text(
    _BOUNDED_KEYS.format(column="key", values="unnest(:values_array)", wanted="wanted(key)")
).bindparams(bindparam("values_array", type_=postgresql.ARRAY(BigInteger())))
_MEMBER_FEATURES = _ByValues(
    lambda wanted: select(ItemRow.id, ItemRow.sort_at, ItemRow.match_features, ItemRow.match_signature).where(
        wanted(ItemRow.id)
    )
)
_COPY_KEY_STORIES = _ByValues(
    lambda wanted: (
        select(MatchKeyRow.key, ItemRow.story_id)
        .join(ItemRow, MatchKeyRow.item_id == ItemRow.id)
        .where(
            MatchKeyRow.key.in_(
                select(MatchKeyRow.key)
                .where(wanted(MatchKeyRow.key), _MATCH_WINDOW)
                .group_by(MatchKeyRow.key)
                .having(func.count() <= bindparam("fanout"))
            ),
            _MATCH_WINDOW,
        )
        .distinct()
    )
)
_STORIES_IN_WINDOW = select(func.count(ItemRow.story_id.distinct())).where(
    ItemRow.sort_at.between(bindparam("earliest"), bindparam("latest"))
)
_MATCH_CANDIDATES = _ByValues(lambda wanted: _match_candidates(wanted(MatchKeyRow.key)))  # ~300 keys a poll
_ITEMS_SINCE = select(func.count()).where(ItemRow.source_id == _SOURCE, ItemRow.sort_at >= bindparam("since"))
_FETCH_LOG = insert(FetchLogRow)


@functools.cache
def _update_by_id(model: type[Base], columns: tuple[str, ...]) -> Any:
    """UPDATE <table> SET <columns> WHERE id = :row_id, one prebuilt statement per column set
    (values are bound as ``v_<column>``: a bind named like a column it sets is reserved)."""
    table: Any = model.__table__
    return update(table).where(table.c.id == bindparam("row_id")).values({c: bindparam(f"v_{c}") for c in columns})


class IngestTransaction:
    """Reads and writes for fetch results, all inside one database transaction.

    Core statements on a plain connection rather than the ORM: the rows are plain
    columns, and the ORM layer cost more than the queries.
    """

    def __init__(self, connection: Connection) -> None:
        self.c = connection

    def deleted_keys(self, source_id: int, keys: Sequence[str]) -> set[str]:
        """Keys retention removed from this source: they must not come back as new items."""
        found: set[str] = set()
        for statement, params in _DELETED_KEYS.batches(self.c.dialect.name, keys, source_id=source_id):
            found.update(self.c.scalars(statement, params))
        return found

    def stored_items(self, source_id: int, keys: Sequence[str]) -> dict[str, StoredItem]:
        found: dict[str, StoredItem] = {}
        for statement, params in _STORED_ITEMS.batches(self.c.dialect.name, keys, source_id=source_id):
            for r in self.c.execute(statement, params):
                found[r.key] = StoredItem(r.id, r.key, r.fingerprint, r.story_id, r.update_count)
        return found

    def stories_by_url(self, urls: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for query in (_STORIES_BY_URL, _ITEM_STORIES_BY_URL):
            for statement, params in query.batches(self.c.dialect.name, urls):
                for url, story_id in self.c.execute(statement, params):
                    if url is not None:
                        found.setdefault(url, story_id)
        return found

    def insert_items(self, source_id: int, new: Sequence[NewItem], now: datetime, authority: str) -> int:
        """Insert new items, creating a story for each that does not join an existing one.

        Rows go straight to the driver's executemany (``_RawInsert``); one indexed query
        per table then finds their ids.
        """
        if not new:
            return 0
        # Sorted: concurrent workers then take the unique-index locks in the same order
        # and cannot deadlock on each other's stories. By the key alone: new items sharing a
        # canonical URL (a link blog, a podcast linking its site) share one story key, and
        # Items do not compare.
        # An item joining the new story of another item of the batch (``NewItem.joins_new``)
        # takes that item's story key instead of creating a story of its own.
        batch = {n.item.key: n.item for n in new}

        def founder(n: NewItem) -> Item:
            return batch.get(n.joins_new, n.item) if n.joins_new is not None else n.item

        needed = dict(
            sorted(
                ((story_key(source_id, founder(n)), founder(n)) for n in new if n.story_id is None), key=lambda p: p[0]
            )
        )
        story_ids: dict[str, int] = {}
        if needed:
            story_rows = [
                {
                    "uid": story_uid(key, authority, now),
                    "key": key,
                    "canonical_url": item.canonical_url,
                    "first_seen_at": now,
                    "updated_at": now,
                }
                for key, item in needed.items()
            ]
            self._insert_rows(StoryRow, story_rows)
            # Also finds a story another worker created meanwhile (ON CONFLICT skipped ours).
            story_ids = self._ids(_STORY_IDS, list(needed))
        rows = []
        for n in new:
            item = n.item
            story_id = n.story_id if n.story_id is not None else story_ids[story_key(source_id, founder(n))]
            rows.append(
                {
                    "source_id": source_id,
                    "story_id": story_id,
                    "match_signature": n.match_signature,
                    "match_features": n.match_features,
                    "match_reason": n.match_reason,
                    **_item_columns(item),
                    "sort_at": item.published_at or item.placed_at or now,
                    "first_seen_at": now,
                    "changed_at": now,
                    "update_count": 0,
                }
            )
        self._insert_rows(ItemRow, rows)
        item_ids = self._ids(_ITEM_IDS, [n.item.key for n in new], source_id=source_id)
        self._write_match_keys(
            [(item_ids[n.item.key], n.item.published_at or now, n.match_keys) for n in new if n.item.key in item_ids],
            replace=False,
        )
        return len(rows)

    def match_candidates(
        self, keys: Sequence[int], earliest: datetime, latest: datetime
    ) -> dict[int, list[MatchCandidate]]:
        """Stored items sharing each story-matching key, within the window.

        A key carried by more than ``MAX_KEY_FANOUT`` items is a stock phrase (a feed's own
        boilerplate, a recurring teaser), not evidence: it is dropped, which also keeps
        matching linear when a feed repeats the same words in every item.
        """
        found: dict[int, list[MatchCandidate]] = {}
        wanted = sorted(set(keys))
        params: dict[str, Any] = {"earliest": _epoch(earliest), "latest": _epoch(latest), "fanout": MAX_KEY_FANOUT}
        for statement, values in _MATCH_CANDIDATES.batches(self.c.dialect.name, wanted, **params):
            for key, item_id, story_id, sort_at, signature in self.c.execute(statement, values):
                if signature:
                    found.setdefault(key, []).append(MatchCandidate(item_id, story_id, sort_at, signature))
        return found

    def term_story_counts(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, sample: int
    ) -> dict[int, int]:
        """How many stories carry each name key among (at most ``sample`` of) the items dated in
        the window: the stream statistics ``stories.TermStats`` weighs by. Keys no item carries
        are left out."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        params: dict[str, Any] = {"earliest": _epoch(earliest), "latest": _epoch(latest), "sample": sample}
        if self.c.dialect.name == "postgresql":
            rows = self.c.execute(_TERM_STORY_COUNTS_POSTGRESQL, {**params, "values_array": wanted})
        else:
            rows = self.c.execute(_TERM_STORY_COUNTS_SQLITE, {**params, "values_json": json.dumps(wanted)})
        return {int(key): int(count) for key, count in rows if count}

    def stories_in_window(self, earliest: datetime, latest: datetime) -> int:
        """Stories with an item dated in the window (what term counts are shares of)."""
        return int(self.c.scalar(_STORIES_IN_WINDOW, {"earliest": earliest, "latest": latest}) or 0)

    def stories_with_keys(self, keys: Sequence[int], earliest: datetime, latest: datetime) -> dict[int, set[int]]:
        """The stories whose items dated in the window carry each name key. Called only with
        keys few stories carry (``stories.TermStats.keys``), so the answer stays small."""
        found: dict[int, set[int]] = {}
        params = {"earliest": _epoch(earliest), "latest": _epoch(latest)}
        for statement, values in _STORIES_WITH_KEYS.batches(self.c.dialect.name, sorted(set(keys)), **params):
            for key, story_id in self.c.execute(statement, values):
                found.setdefault(int(key), set()).add(int(story_id))
        return found

    def story_members(self, story_ids: Sequence[int], since: datetime, per_story: int) -> dict[int, list[StoredMember]]:
        """Each story's first ``per_story`` items dated from ``since`` on, earliest first, with
        what they matched on."""
        found: dict[int, list[StoredMember]] = {}
        params = {"since": since, "per_story": per_story}
        for statement, values in _STORY_MEMBERS.batches(self.c.dialect.name, sorted(set(story_ids)), **params):
            for item_id, story_id, sort_at, features, signature in self.c.execute(statement, values):
                found.setdefault(story_id, []).append(StoredMember(item_id, story_id, sort_at, features, signature))
        for members in found.values():
            members.sort(key=lambda m: (m.sort_at, m.item_id))
        return found

    def copy_key_stories(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, fanout: int
    ) -> dict[int, set[int]]:
        """The stories whose items in the window carry each lead-copy key, leaving out keys more
        than ``fanout`` items carry (stock phrases)."""
        found: dict[int, set[int]] = {}
        params = {"earliest": _epoch(earliest), "latest": _epoch(latest), "fanout": fanout}
        for statement, values in _COPY_KEY_STORIES.batches(self.c.dialect.name, sorted(set(keys)), **params):
            for key, story_id in self.c.execute(statement, values):
                found.setdefault(int(key), set()).add(int(story_id))
        return found

    def _write_match_keys(self, entries: Sequence[tuple[int, datetime, tuple[int, ...]]], *, replace: bool) -> None:
        """Store items' story-matching keys, given as (item id, sort time, keys).

        ``replace`` first drops an updated item's old keys (a fresh insert has none, and the
        DELETE was a measurable share of a first ingest). A first ingest writes about ten
        keys per item, so the rows go straight to the driver's executemany (``_RawInsert``),
        each item's time converted once rather than once per key.
        """
        wanted = [(item_id, at, keys) for item_id, at, keys in entries if keys]
        if not wanted:
            return
        if replace:
            self.c.execute(delete(MatchKeyRow).where(MatchKeyRow.item_id.in_([item_id for item_id, _, _ in wanted])))
        rows: list[tuple[int, int, int]] = []
        for item_id, at, keys in wanted:
            epoch = _epoch(at)
            rows.extend((match_key, epoch, item_id) for match_key in dict.fromkeys(keys))
        _RawInsert.of(self.c.dialect, MatchKeyRow, ("key", "sort_epoch", "item_id")).run(self.c, rows)

    def update_items(self, updates: Sequence[ItemUpdate], now: datetime, source_id: int | None = None) -> int:
        if not updates:
            return 0
        if source_id is not None:
            entries = [(u.stored.id, u.item.published_at or now, u.match_keys) for u in updates if u.match_keys]
            self._write_match_keys(entries, replace=True)
        changes = {
            u.stored.id: {
                **_item_columns(u.item),
                **({"match_signature": u.match_signature} if u.match_signature else {}),
                **({"match_features": u.match_features} if u.match_features else {}),
                "changed_at": now,
                "update_count": u.stored.update_count + 1,
            }
            for u in updates
        }
        self._update_rows(ItemRow, changes)
        # The story's entry moves its `updated` only because its content did.
        self.c.execute(
            update(StoryRow).where(StoryRow.id.in_({u.stored.story_id for u in updates})).values(updated_at=now)
        )
        return len(updates)

    def items_per_day(self, source_id: int, now: datetime) -> float | None:
        count = self.c.scalar(_ITEMS_SINCE, {"source_id": source_id, "since": now - RATE_WINDOW})
        return (count or 0) / RATE_WINDOW.days if count else None

    def sources_on_host(self, host: str) -> list[tuple[int, datetime, int | None]]:
        """(id, next_poll_at, last_status) of the active sources whose current URL is on ``host``.

        Sees this transaction's own writes, so the poll just recorded counts.
        """
        rows = self.c.execute(
            select(SourceRow.id, SourceRow.url, SourceRow.next_poll_at, SourceRow.last_status).where(
                SourceRow.in_config.is_(True),
                SourceRow.enabled.is_(True),
                SourceRow.retired_at.is_(None),
                SourceRow.url.contains(host, autoescape=True),  # a prefilter; the exact test is below
            )
        )
        return [(r.id, r.next_poll_at, r.last_status) for r in rows if (urlsplit(r.url).hostname or "") == host]

    def postpone(self, moves: dict[int, tuple[datetime, str]]) -> None:
        """Move sources' next poll later (never earlier); a source being polled right now is left alone."""
        for source_id, (at, reason) in moves.items():
            self.c.execute(
                update(SourceRow)
                .where(SourceRow.id == source_id, SourceRow.next_poll_at < at, SourceRow.lease_owner.is_(None))
                .values(next_poll_at=at, next_poll_reason=reason)
            )

    def record_poll(self, source_id: int, result: FetchResult, record: PollRecord) -> None:
        """The source's new state and its fetch-log line: two prebuilt statements.

        Written as Core statements rather than by loading the row into the ORM: a round of
        1,000 answers of 304 is mostly this method, and the load + flush cost twice as much.
        """
        now = result.fetched_at
        values: dict[str, Any] = {
            "last_polled_at": now,
            "last_status": result.status,
            "lease_owner": None,
            "lease_until": None,
            "error_count": record.error_count,
            "next_poll_reason": record.next_poll_reason,
        }
        if record.next_poll_at is not None:
            values["next_poll_at"] = record.next_poll_at
        if result.ok:
            values.update(last_success_at=now, last_error=None, etag=result.etag, last_modified=result.last_modified)
        else:
            values["last_error"] = result.error
        if result.permanent_url and result.ok:
            values["url"] = result.permanent_url
        if record.body_hash is not None:
            values["body_hash"] = record.body_hash
        if record.items_new:
            values["last_new_item_at"] = now
        for attr in ("feed_title", "feed_link", "feed_id", "items_per_day"):
            value = getattr(record, attr)
            if value is not None:
                values[attr] = value
        if record.parsed:
            values["last_warning"] = record.warning
        if record.retired_reason:
            values.update(retired_at=now, retired_reason=record.retired_reason)
        if self._update_rows(SourceRow, {source_id: values}) == 0:
            return  # the source was removed meanwhile
        self.c.execute(
            _FETCH_LOG,
            {
                "source_id": source_id,
                "fetched_at": now,
                "duration_ms": int(result.elapsed * 1000),
                "status": result.status,
                "outcome": record.outcome,
                "error": result.error,
                "items_new": record.items_new,
                "items_updated": record.items_updated,
                "bytes": len(result.body or b""),
            },
        )

    def _update_rows(self, model: type[Base], changes: dict[int, dict[str, Any]]) -> int:
        """Set each row's (by id) columns to its values: one executemany per set of columns."""
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row_id, values in changes.items():
            params = {"row_id": row_id, **{f"v_{name}": value for name, value in values.items()}}
            by_columns.setdefault(tuple(values), []).append(params)
        # One parameter set goes as a plain execute: executemany row counts are not reliable everywhere.
        return sum(
            _rowcount(self.c.execute(_update_by_id(model, columns), params[0] if len(params) == 1 else params))
            for columns, params in by_columns.items()
        )

    def _insert_rows(self, model: type[Base], rows: list[dict[str, Any]]) -> None:
        """INSERT … ON CONFLICT DO NOTHING of rows that all have the same columns (``_RawInsert``)."""
        if rows:
            _RawInsert.of(self.c.dialect, model, tuple(rows[0])).run_dicts(self.c, rows)

    def _ids(self, query: _ByValues, keys: Sequence[str], **params: Any) -> dict[str, int]:
        found: dict[str, int] = {}
        for statement, values in query.batches(self.c.dialect.name, keys, **params):
            found.update((key, row_id) for key, row_id in self.c.execute(statement, values))
        return found

    def story_member_refs(
        self, story_ids: Sequence[int], since: datetime, per_story: int
    ) -> dict[int, list[tuple[int, int]]]:
        """Each story's first ``per_story`` items dated from ``since`` on, earliest first, as
        (item id, update count): ``story_members`` without the stored features, for a reader
        that keeps decoded features and fetches only those it lacks (``member_features``)."""
        found: dict[int, list[tuple[int, int]]] = {}
        params = {"since": since, "per_story": per_story}
        for statement, values in _STORY_MEMBER_REFS.batches(self.c.dialect.name, sorted(set(story_ids)), **params):
            for item_id, story_id, update_count in self.c.execute(statement, values):
                found.setdefault(story_id, []).append((item_id, update_count))
        return found

    def copy_key_stories_bounded(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, fanout: int
    ) -> dict[int, set[int]]:
        """``copy_key_stories``, with each key's items in the window counted only up to
        ``fanout`` + 1: a stock phrase carried by thousands of items is recognised after
        reading ``fanout`` + 1 of them rather than all."""
        wanted = sorted(set(keys))
        found: dict[int, set[int]] = {}
        if not wanted:
            return found
        params: dict[str, Any] = {"earliest": _epoch(earliest), "latest": _epoch(latest), "fanout": fanout}
        if self.c.dialect.name == "postgresql":
            rows = self.c.execute(_COPY_KEY_STORIES_POSTGRESQL, {**params, "values_array": wanted})
        else:
            rows = self.c.execute(_COPY_KEY_STORIES_SQLITE, {**params, "values_json": json.dumps(wanted)})
        for key, story_id in rows:
            found.setdefault(int(key), set()).add(int(story_id))
        return found

    def term_stories(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, sample: int
    ) -> dict[int, frozenset[int]]:
        """The stories carrying each name key among (at most ``sample`` of) the items dated in
        the window: ``term_story_counts`` and ``stories_with_keys`` in one query, for a reader
        that needs the stories of the rare keys and only the count of the others. Keys no item
        carries are left out."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        params: dict[str, Any] = {"earliest": _epoch(earliest), "latest": _epoch(latest), "sample": sample}
        if self.c.dialect.name == "postgresql":
            rows = self.c.execute(_TERM_STORIES_POSTGRESQL, {**params, "values_array": wanted})
        else:
            rows = self.c.execute(_TERM_STORIES_SQLITE, {**params, "values_json": json.dumps(wanted)})
        return {int(key): frozenset(map(int, str(found).split(","))) for key, found in rows if found}

    def member_features(self, item_ids: Sequence[int]) -> dict[int, tuple[datetime, str | None, str | None]]:
        """Sort time, stored story features and lead signature of each item, by id."""
        found: dict[int, tuple[datetime, str | None, str | None]] = {}
        for statement, values in _MEMBER_FEATURES.batches(self.c.dialect.name, sorted(set(item_ids))):
            for item_id, sort_at, features, signature in self.c.execute(statement, values):
                found[item_id] = (sort_at, features, signature)
        return found


def _serialize_writers(session: Session, key: int) -> None:
    """Make this transaction wait for, and then exclude, every other one calling this with ``key``.

    PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback, or when
    the connection dies). SQLite: take the write lock up front with ``BEGIN IMMEDIATE``; a
    transaction that read first and wrote later would fail with "database is locked" instead
    of waiting when another process wrote in between.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _insert_ignore(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """INSERT … ON CONFLICT DO NOTHING: idempotent writes under retries and concurrency."""
    if not rows:
        return 0
    session.execute(_insert_ignore_statement(session.get_bind().dialect.name, model), rows)
    return len(rows)


def _insert_ignore_statement(dialect: str, model: type[Base]) -> Any:
    table: Any = model.__table__
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return table.insert()  # pragma: no cover - other backends get plain inserts


class _RawInsert:
    """An INSERT … ON CONFLICT DO NOTHING of many small rows, handed to the driver's executemany.

    SQLAlchemy spends ~10 µs of Python per row of an executemany (building and converting
    each parameter set); a first ingest writes ~10 story-matching keys per item, so for
    those rows that was a third of the main process's CPU. The SQL is compiled by
    SQLAlchemy once per dialect, table and columns; rows are tuples in ``columns`` order,
    with values already in the driver's form (``convert`` applies each column type's own
    conversion, so nothing about storage formats is restated here).
    """

    _compiled: ClassVar[dict[tuple[str, str, tuple[str, ...]], _RawInsert]] = {}

    def __init__(self, dialect: Dialect, model: type[Base], columns: tuple[str, ...]) -> None:
        self._table: Any = model.__table__
        self._dialect = dialect
        stmt = _insert_ignore_statement(dialect.name, model).values({name: bindparam(name) for name in columns})
        # for_executemany: without it PostgreSQL's compiler adds an implicit RETURNING id.
        compiled = stmt.compile(dialect=dialect, for_executemany=True)
        self.sql = compiled.string
        # Positional (SQLite's qmark): tuples in the order the SQL wants them, which need not
        # be the order the columns were given in. Named (psycopg's pyformat): any order.
        self._positional = compiled.positiontup is not None
        self._columns = tuple(compiled.positiontup) if compiled.positiontup is not None else columns
        # Tuples given to ``run`` are in ``columns`` order; reordered only if the SQL differs.
        self._reorder = None if self._columns == columns else [columns.index(name) for name in self._columns]
        self._conversions = [
            (index, process)
            for index, name in enumerate(self._columns)
            if (process := self._bind_processor(name)) is not None
        ]

    @classmethod
    def of(cls, dialect: Dialect, model: type[Base], columns: tuple[str, ...]) -> _RawInsert:
        key = (dialect.name, model.__tablename__, columns)
        if key not in cls._compiled:
            cls._compiled[key] = cls(dialect, model, columns)
        return cls._compiled[key]

    def _bind_processor(self, column: str) -> Callable[[Any], Any] | None:
        # The dialect's own implementation: psycopg's JSON, for one, wraps values itself.
        processor: Callable[[Any], Any] | None = (
            self._table.c[column].type.dialect_impl(self._dialect).bind_processor(self._dialect)
        )
        return processor

    def convert(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Rows given as column → value dicts, as driver-ready tuples in the SQL's order (each
        column type's own bind conversion, e.g. aware datetime → naive UTC → SQLite text)."""
        columns, conversions = self._columns, self._conversions
        out = []
        for row in rows:
            values = [row[name] for name in columns]
            for index, process in conversions:
                values[index] = process(values[index])
            out.append(tuple(values))
        return out

    def run(self, connection: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Execute for ``rows``, tuples in the ``columns`` order given to ``of``."""
        self._execute(connection, rows if self._reorder is None else [tuple(r[i] for i in self._reorder) for r in rows])

    def run_dicts(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Execute for rows given as column → value dicts, converted (see ``convert``)."""
        self._execute(connection, self.convert(rows))

    def _execute(self, connection: Connection, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        params: list[Any] = rows
        if not self._positional:
            params = [dict(zip(self._columns, r, strict=True)) for r in rows]
        connection.exec_driver_sql(self.sql, params)


def _epoch(moment: datetime) -> int:
    """Unix seconds, the unit of ``MatchKeyRow.sort_epoch``."""
    return int(moment.timestamp())


TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
DATA_REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def _storage_error(exc: SQLAlchemyError) -> StorageError:
    message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")
    # PostgreSQL: 22 data exception, 23 integrity constraint, 54 program limit exceeded (an
    # index entry too large): the values were refused, the database itself is fine.
    refused = isinstance(exc, DataError | IntegrityError) or sqlstate[:2] in DATA_REFUSED_SQLSTATE_CLASSES
    return StorageError(
        f"database error: {message}", transient=_transient(exc), data_refused=refused and not _transient(exc)
    )


def _transient(exc: SQLAlchemyError) -> bool:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(orig or exc)


def _item_columns(item: Item) -> dict[str, Any]:
    return {
        "key": item.key,
        "guid": item.guid,
        "link": item.link,
        "canonical_url": item.canonical_url,
        "title": item.title,
        "summary_html": item.summary_html,
        "content_html": item.content_html,
        "text": item.text,
        "author": item.author,
        "categories": list(item.categories),
        "enclosures": [
            {"url": e.url, "type": e.type, "length": e.length, **({"thumbnail": True} if e.thumbnail else {})}
            for e in item.enclosures
        ],
        "language": item.language,
        "published_at": item.published_at,
        "updated_at": item.updated_at,
        "fingerprint": item.fingerprint,
    }


CANDIDATE_COLUMNS = (
    ItemRow.id, StoryRow.id.label("story_id"), StoryRow.uid, SourceRow.name, SourceRow.tags,
    SourceRow.feed_title, SourceRow.url, SourceRow.feed_link, SourceRow.feed_id, ItemRow.title, ItemRow.link,
    ItemRow.summary_html, ItemRow.content_html, ItemRow.text, ItemRow.author, ItemRow.categories, ItemRow.sort_at,
    ItemRow.changed_at, ItemRow.updated_at, ItemRow.first_seen_at, ItemRow.language,
    ItemRow.published_at.is_not(None).label("dated"), ItemRow.enclosures,
)  # fmt: skip


def _candidate_row(r: Any) -> Candidate:
    return Candidate(
        item_id=r.id,
        story_id=r.story_id,
        story_uid=r.uid,
        source_name=r.name,
        source_tags=tuple(r.tags or ()),
        source_title=r.feed_title,
        source_url=r.url,
        source_link=r.feed_link,
        source_feed_id=r.feed_id,
        title=r.title,
        link=r.link,
        summary_html=r.summary_html,
        content_html=r.content_html,
        text=r.text,
        author=r.author,
        categories=tuple(r.categories or ()),
        published_at=r.sort_at,
        updated_at=max(r.changed_at, r.updated_at or r.changed_at),
        first_seen_at=r.first_seen_at,
        language=r.language,
        dated=bool(r.dated),
        **_attachments(r.enclosures),
    )


def _attachments(stored: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A stored enclosures list as a Candidate's ``enclosures`` and ``thumbnail``."""
    enclosures, thumbnail = [], None
    for e in stored or ():
        if not isinstance(e, dict) or not isinstance(e.get("url"), str):
            continue
        if e.get("thumbnail"):
            thumbnail = thumbnail or e["url"]
        else:
            enclosures.append(Enclosure(e["url"], e.get("type"), e.get("length")))
    return {"enclosures": tuple(enclosures), "thumbnail": thumbnail}


def _chunks(values: Sequence[T]) -> Iterator[list[T]]:
    values = list(values)
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def utcnow() -> datetime:
    return datetime.now(UTC)
