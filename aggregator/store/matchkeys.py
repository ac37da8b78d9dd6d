"""Story matching's reads: stored items and stories by their match keys, inside the ingest transaction.

The keys themselves are written with their items (``items.py``); what counts as a match is
decided in ``storymatch`` and ``stories``, from what these queries return.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import BigInteger, bindparam, case, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from aggregator.records import MatchCandidate, StoryRefs
from aggregator.store._sql import ByValues, TransactionBase, Wanted, epoch, serialize_writers, sqlite_rows
from aggregator.store.models import EditorialRow, ItemRow, MatchKeyRow, StoryRow

MATCH_KEY_RETENTION = timedelta(days=14)
MATCHING_LOCK_KEY = 0x61676772_00000003  # pg_advisory_xact_lock key of story matching ("aggr", 3)
MAX_KEY_FANOUT = 100  # a story copied by more outlets than this still matches through its other keys

# The statements, built once: constructing a select() on every call cost six times its
# execution (140 µs against 22 µs), and a first ingest runs ten per source.
_MATCH_WINDOW = MatchKeyRow.sort_epoch.between(bindparam("earliest"), bindparam("latest"))


def _keys_within_fanout(wanted: Any) -> Any:
    """The ``wanted`` keys carried by at most :fanout items in the window (stock phrases left out)."""
    return MatchKeyRow.key.in_(
        select(MatchKeyRow.key)
        .where(wanted, _MATCH_WINDOW)
        .group_by(MatchKeyRow.key)
        .having(func.count() <= bindparam("fanout"))
    )


def _match_candidates(wanted: Any) -> Any:
    """Stored items carrying one of the ``wanted`` keys in the window, leaving out keys whose
    fan-out exceeds :fanout (one statement: the fan-out test is its sub-select)."""
    return (
        select(MatchKeyRow.key, ItemRow.id, ItemRow.story_id, ItemRow.sort_at, ItemRow.match_signature)
        .join(ItemRow, MatchKeyRow.item_id == ItemRow.id)
        .where(_keys_within_fanout(wanted), _MATCH_WINDOW)
    )


def _story_member_refs(wanted: Wanted) -> Any:
    """The first ``:per_story`` items of each wanted story dated from ``:since`` on, earliest
    first, without their features: which members, how often each was updated, whose, and when."""
    order = (ItemRow.sort_at, ItemRow.id)
    ranked = (
        select(
            ItemRow.id,
            ItemRow.story_id,
            ItemRow.update_count,
            ItemRow.source_id,
            ItemRow.sort_at,
            func.row_number().over(partition_by=ItemRow.story_id, order_by=order).label("rank"),
        )
        .where(wanted(ItemRow.story_id), ItemRow.sort_at >= bindparam("since"))
        .subquery()
    )
    # Only the first member's time is used (when the story begins): the others' are not
    # converted, a datetime each for hundreds of rows a poll.
    begins = case((ranked.c.rank == 1, ranked.c.sort_at))
    columns = (ranked.c.id, ranked.c.story_id, ranked.c.update_count, ranked.c.source_id, begins)
    return select(*columns).where(ranked.c.rank <= bindparam("per_story")).order_by(ranked.c.story_id, ranked.c.rank)


_STORY_MEMBER_REFS = ByValues(_story_member_refs)
# The same on SQLite, run on the driver (``sqlite_rows``): a poll reads a few hundred of these
# rows, and SQLAlchemy's execution and row wrapping cost more than reading them. Compiled from
# the statement above, so the two cannot drift apart; its constants (the first rank) come along.
_STORY_MEMBER_REFS_COMPILED = _STORY_MEMBER_REFS.sqlite.compile(dialect=sqlite.dialect(paramstyle="named"))
_STORY_MEMBER_REFS_SQLITE = text(str(_STORY_MEMBER_REFS_COMPILED))
_STORY_MEMBER_REFS_CONSTANTS = {k: v for k, v in _STORY_MEMBER_REFS_COMPILED.params.items() if v is not None}
# Each wanted key's items in the window, counted up to :fanout + 1; then the stories of the keys
# within the fan-out, and the keys beyond it with no story (NULL), which the caller keeps. Both
# this and the next read each carrier's story in its key row (``MatchKeyRow.story_id``), with
# no seek into ``items``.
_BOUNDED_KEYS = (
    "WITH counted AS MATERIALIZED (SELECT wanted.{column} AS key, (SELECT COUNT(*) FROM (SELECT 1 "
    "FROM item_match_keys AS carrier WHERE carrier.key = wanted.{column} "
    "AND carrier.sort_epoch BETWEEN :earliest AND :latest LIMIT :fanout + 1) AS bounded) AS carriers "
    "FROM {values} AS {wanted}) "
    "SELECT DISTINCT item_match_keys.key, item_match_keys.story_id FROM counted "
    "JOIN item_match_keys ON item_match_keys.key = counted.key "
    "WHERE counted.carriers BETWEEN 1 AND :fanout AND item_match_keys.sort_epoch BETWEEN :earliest AND :latest "
    "AND item_match_keys.story_id IS NOT NULL "
    "UNION ALL SELECT counted.key, NULL FROM counted WHERE counted.carriers > :fanout"
)
# Each story once, as twice its id plus 1 where one of its sampled items is dated by :until.
_TERM_STORIES = (
    "(SELECT {aggregate} FROM (SELECT sampled.story_id * 2 + MAX(CASE WHEN sampled.sort_epoch <= :until THEN 1 "
    "ELSE 0 END) AS story FROM (SELECT item_match_keys.story_id, item_match_keys.sort_epoch FROM item_match_keys "
    "WHERE item_match_keys.key = {key} AND item_match_keys.sort_epoch BETWEEN :earliest AND :latest "
    "AND item_match_keys.story_id IS NOT NULL LIMIT :sample) AS sampled "
    "GROUP BY sampled.story_id) AS found)"
)
_TERM_STORIES_SQLITE = text(
    "SELECT wanted.value, "
    + _TERM_STORIES.format(key="wanted.value", aggregate="group_concat(found.story)")
    + " FROM json_each(:values_json) AS wanted"
)
_TERM_STORIES_POSTGRESQL = text(
    "SELECT wanted.key, "
    + _TERM_STORIES.format(key="wanted.key", aggregate="string_agg(found.story::text, ',')")
    + " FROM unnest(:values_array) AS wanted(key)"
).bindparams(bindparam("values_array", type_=postgresql.ARRAY(BigInteger())))
_COPY_KEY_STORIES_SQLITE = text(_BOUNDED_KEYS.format(column="value", values="json_each(:values_json)", wanted="wanted"))
_COPY_KEY_STORIES_POSTGRESQL = text(
    _BOUNDED_KEYS.format(column="key", values="unnest(:values_array)", wanted="wanted(key)")
).bindparams(bindparam("values_array", type_=postgresql.ARRAY(BigInteger())))
_STORY_ENDS = ByValues(
    lambda wanted: (
        select(ItemRow.story_id, func.max(ItemRow.sort_at)).where(wanted(ItemRow.story_id)).group_by(ItemRow.story_id)
    )
)
# On SQLite run on the driver too (``sqlite_rows``): one small statement at most polls, where
# SQLAlchemy's execution cost several times the seeks.
_STORY_ENDS_SQLITE = text(str(_STORY_ENDS.sqlite.compile(dialect=sqlite.dialect(paramstyle="named"))))
_MEMBER_FEATURES = ByValues(
    lambda wanted: select(ItemRow.id, ItemRow.sort_at, ItemRow.match_features, ItemRow.match_signature).where(
        wanted(ItemRow.id)
    )
)
_STORIES_IN_WINDOW = select(func.count(ItemRow.story_id.distinct())).where(
    ItemRow.sort_at.between(bindparam("earliest"), bindparam("latest"))
)
_MATCH_CANDIDATES = ByValues(lambda wanted: _match_candidates(wanted(MatchKeyRow.key)))  # ~300 keys a poll
_STORIES_EDITED = select(StoryRow.id, StoryRow.edited_at).where(StoryRow.edited_at >= bindparam("since"))
# On SQLite run on the driver (``sqlite_rows``): asked at every poll, mostly for no row, where
# SQLAlchemy's execution cost more than the seek.
_STORIES_EDITED_SQLITE = text(str(_STORIES_EDITED.compile(dialect=sqlite.dialect(paramstyle="named"))))
_MERGEABLE_STORIES = select(StoryRow.id).where(
    StoryRow.id.in_(bindparam("ids", expanding=True)),
    StoryRow.merged_into.is_(None),
    StoryRow.edited_at.is_(None),
    ~select(EditorialRow.story_id).where(EditorialRow.story_id == StoryRow.id).exists(),
)


class TermCarriers(NamedTuple):
    """The stories carrying a term in a window (``StoryLookups.term_stories``)."""

    stories: frozenset[int]
    """All of them, to look candidates up among."""
    counted: frozenset[int]
    """Those carrying it by the moment the term is counted at: its share of the stream."""


class StoryLookups(TransactionBase):
    """The reads story matching makes inside the ingest transaction (so they see its writes)."""

    def exclude_other_matching(self) -> None:
        """Wait until no other transaction is deciding stories, and keep them out until this one
        ends. Two transactions that each decide before the other committed cannot see each
        other's new items: two reports of one event polled at once, by two workers or two of
        a worker's commit slots (``pipeline.COMMIT_SLOTS``), would each start a story of its
        own, and nothing would bring them together later. Polls with nothing new to decide
        (most of them: 304s) do not take it and still commit side by side."""
        serialize_writers(self.c, MATCHING_LOCK_KEY)

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
        params: dict[str, Any] = {"earliest": epoch(earliest), "latest": epoch(latest), "fanout": MAX_KEY_FANOUT}
        for statement, values in _MATCH_CANDIDATES.batches(self.c.dialect.name, wanted, **params):
            for key, item_id, story_id, sort_at, signature in self.c.execute(statement, values):
                if signature:
                    found.setdefault(key, []).append(MatchCandidate(item_id, story_id, sort_at, signature))
        return found

    def mergeable_stories(self, story_ids: Sequence[int]) -> set[int]:
        """Of ``story_ids``, the stories that may be merged into another
        (``stories.Decision.absorbs``): those named in no editorial decision, which is an
        editor's about that story and no other, and those no editor split or merged
        (``StoryRow.edited_at``): matching must not undo what an editor made. A published
        one may: its entry leaves the outputs for the entry of the story it joins, which
        carries its items, and its page forwards there (``StoryRow.merged_into``)."""
        if not story_ids:
            return set()
        return set(self.c.scalars(_MERGEABLE_STORIES, {"ids": sorted(set(story_ids))}))

    def stories_edited_since(self, since: datetime) -> dict[int, datetime]:
        """The stories an editor split or merged at ``since`` or later, and when
        (``StoryRow.edited_at``): read through their partial index, which holds only those."""
        if self.c.dialect.name == "sqlite":
            as_time = _sort_at_result(self.c.dialect)  # the same UTCDateTime as a sort time
            rows = sqlite_rows(self.c, _STORIES_EDITED_SQLITE, {"since": _sort_at_bind(self.c.dialect)(since)})
            return {int(story): as_time(at) for story, at in rows}
        return {int(story): at for story, at in self.c.execute(_STORIES_EDITED, {"since": since}) if at is not None}

    def stories_in_window(self, earliest: datetime, latest: datetime) -> int:
        """Stories with an item dated in the window (what term counts are shares of)."""
        return int(self.c.scalar(_STORIES_IN_WINDOW, {"earliest": earliest, "latest": latest}) or 0)

    def story_member_refs(self, story_ids: Sequence[int], since: datetime, per_story: int) -> dict[int, StoryRefs]:
        """Each story's first ``per_story`` items dated from ``since`` on (``StoryRefs``):
        ``story_members`` without the stored features, for a reader that keeps decoded features
        and fetches only those it lacks (``member_features``). Built in one pass over the rows:
        a first ingest reads hundreds of thousands."""
        found: dict[int, StoryRefs] = {}
        wanted = sorted(set(story_ids))
        rows: Iterable[Any]
        if self.c.dialect.name == "sqlite" and wanted:
            since_text = _sort_at_bind(self.c.dialect)(since)
            params = {
                **_STORY_MEMBER_REFS_CONSTANTS, "since": since_text, "per_story": per_story,
                "values_json": json.dumps(wanted),
            }  # fmt: skip
            rows = sqlite_rows(self.c, _STORY_MEMBER_REFS_SQLITE, params)
            as_time = _sort_at_result(self.c.dialect)
        else:
            batches = _STORY_MEMBER_REFS.batches(self.c.dialect.name, wanted, since=since, per_story=per_story)
            rows = (row for statement, values in batches for row in self.c.execute(statement, values))
            as_time = None
        for item_id, story_id, update_count, source_id, begins in rows:
            refs = found.get(story_id)
            if refs is None:  # rows come earliest first: this is the story's first member
                first = begins if as_time is None else as_time(begins)
                refs = found[story_id] = StoryRefs(first, [], set())
            refs.members.append((item_id, update_count))
            refs.sources.add(source_id)
        return found

    def copy_key_stories_bounded(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, fanout: int
    ) -> tuple[dict[int, set[int]], set[int]]:
        """The stories carrying each lead-copy key in the window, for the keys at most ``fanout``
        items carry, and the keys more do (stock phrases, not evidence). Each key's items are
        counted only up to ``fanout`` + 1: a stock phrase carried by thousands of items is
        recognised after reading ``fanout`` + 1 of them rather than all."""
        wanted = sorted(set(keys))
        found: dict[int, set[int]] = {}
        stock: set[int] = set()
        if not wanted:
            return found, stock
        params: dict[str, Any] = {"earliest": epoch(earliest), "latest": epoch(latest), "fanout": fanout}
        if self.c.dialect.name == "postgresql":
            rows: Iterable[Any] = self.c.execute(_COPY_KEY_STORIES_POSTGRESQL, {**params, "values_array": wanted})
        else:
            rows = sqlite_rows(self.c, _COPY_KEY_STORIES_SQLITE, {**params, "values_json": json.dumps(wanted)})
        for key, story_id in rows:
            if story_id is None:
                stock.add(int(key))
            else:
                found.setdefault(int(key), set()).add(int(story_id))
        return found, stock

    def term_stories(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, sample: int, until: datetime | None = None
    ) -> dict[int, TermCarriers]:
        """The stories carrying each name key among (at most ``sample`` of) the items dated in
        the window, and of those the ones carrying it in an item dated by ``until`` (None: the
        window's end): ``term_story_counts`` and ``stories_with_keys`` in one query, for a reader
        that needs the stories of the rare keys and only the count of the others, and that looks
        stories up further ahead than it counts (``storymatch._TermCounts``). Keys no item
        carries are left out."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        params: dict[str, Any] = {
            "earliest": epoch(earliest), "latest": epoch(latest), "sample": sample,
            "until": epoch(latest if until is None else until),
        }  # fmt: skip
        if self.c.dialect.name == "postgresql":
            rows: Iterable[Any] = self.c.execute(_TERM_STORIES_POSTGRESQL, {**params, "values_array": wanted})
        else:
            rows = sqlite_rows(self.c, _TERM_STORIES_SQLITE, {**params, "values_json": json.dumps(wanted)})
        found: dict[int, TermCarriers] = {}
        for key, stories in rows:
            if stories:
                coded = [int(story) for story in str(stories).split(",")]
                found[int(key)] = TermCarriers(
                    frozenset(c >> 1 for c in coded), frozenset(c >> 1 for c in coded if c & 1)
                )
        return found

    def story_ends(self, story_ids: Sequence[int]) -> dict[int, datetime]:
        """When each story's latest item was published (its members index: one seek each), for
        stories of which ``story_member_refs`` read only the first members."""
        wanted = sorted(set(story_ids))
        if self.c.dialect.name == "sqlite" and wanted:
            as_time = _sort_at_result(self.c.dialect)
            rows = sqlite_rows(self.c, _STORY_ENDS_SQLITE, {"values_json": json.dumps(wanted)})
            return {story_id: as_time(ends) for story_id, ends in rows}
        found: dict[int, datetime] = {}
        for statement, values in _STORY_ENDS.batches(self.c.dialect.name, wanted):
            for story_id, ends in self.c.execute(statement, values):
                found[story_id] = ends
        return found

    def member_features(self, item_ids: Sequence[int]) -> dict[int, tuple[datetime, str | None, str | None]]:
        """Sort time, stored story features and lead signature of each item, by id."""
        found: dict[int, tuple[datetime, str | None, str | None]] = {}
        for statement, values in _MEMBER_FEATURES.batches(self.c.dialect.name, sorted(set(item_ids))):
            for item_id, sort_at, features, signature in self.c.execute(statement, values):
                found[item_id] = (sort_at, features, signature)
        return found


@functools.cache
def _sort_at_bind(dialect: Dialect) -> Callable[[datetime], Any]:
    """How SQLAlchemy writes a sort time as a bound value (the dialect's text form, on SQLite),
    for a statement run on the driver."""
    kind = ItemRow.__table__.c.sort_at.type.dialect_impl(dialect)
    process = kind.bind_processor(dialect)
    assert process is not None, "a sort time is bound through UTCDateTime"
    return process


@functools.cache
def _sort_at_result(dialect: Dialect) -> Callable[[Any], datetime]:
    """How SQLAlchemy reads a stored sort time back (UTC-aware), for a statement run on the driver."""
    kind = ItemRow.__table__.c.sort_at.type.dialect_impl(dialect)
    process = kind.result_processor(dialect, None)
    assert process is not None, "a sort time is read through UTCDateTime"
    return cast(Callable[[Any], datetime], process)
