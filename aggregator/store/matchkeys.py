"""Story matching's reads: stored items and stories by their match keys, inside the ingest transaction.

The keys themselves are written with their items (``items.py``); what counts as a match is
decided in ``storymatch`` and ``stories``, from what these queries return.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, bindparam, func, select, text
from sqlalchemy.dialects import postgresql

from aggregator.records import MatchCandidate, StoredMember
from aggregator.store._sql import ByValues, TransactionBase, Wanted, epoch
from aggregator.store.models import ItemRow, MatchKeyRow

MATCH_KEY_RETENTION = timedelta(days=14)
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
_STORIES_WITH_KEYS = ByValues(
    lambda wanted: (
        select(MatchKeyRow.key, ItemRow.story_id)
        .join(ItemRow, MatchKeyRow.item_id == ItemRow.id)
        .where(wanted(MatchKeyRow.key), _MATCH_WINDOW)
        .distinct()
    )
)


def _story_members(wanted: Wanted) -> Any:
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


_STORY_MEMBERS = ByValues(_story_members)
_COPY_KEY_STORIES = ByValues(
    lambda wanted: (
        select(MatchKeyRow.key, ItemRow.story_id)
        .join(ItemRow, MatchKeyRow.item_id == ItemRow.id)
        .where(_keys_within_fanout(wanted(MatchKeyRow.key)), _MATCH_WINDOW)
        .distinct()
    )
)
_STORIES_IN_WINDOW = select(func.count(ItemRow.story_id.distinct())).where(
    ItemRow.sort_at.between(bindparam("earliest"), bindparam("latest"))
)
_MATCH_CANDIDATES = ByValues(lambda wanted: _match_candidates(wanted(MatchKeyRow.key)))  # ~300 keys a poll


class StoryLookups(TransactionBase):
    """The reads story matching makes inside the ingest transaction (so they see its writes)."""

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

    def term_story_counts(
        self, keys: Sequence[int], earliest: datetime, latest: datetime, sample: int
    ) -> dict[int, int]:
        """How many stories carry each name key among (at most ``sample`` of) the items dated in
        the window: the stream statistics ``stories.TermStats`` weighs by. Keys no item carries
        are left out."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        params: dict[str, Any] = {"earliest": epoch(earliest), "latest": epoch(latest), "sample": sample}
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
        params = {"earliest": epoch(earliest), "latest": epoch(latest)}
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
        params = {"earliest": epoch(earliest), "latest": epoch(latest), "fanout": fanout}
        for statement, values in _COPY_KEY_STORIES.batches(self.c.dialect.name, sorted(set(keys)), **params):
            for key, story_id in self.c.execute(statement, values):
                found.setdefault(int(key), set()).add(int(story_id))
        return found
