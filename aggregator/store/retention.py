"""What the database holds, in counts, and letting old things go.

What must be kept is curation's call (``publisher.prune`` passes the protected item ids):
storage deletes what it is told may go, and remembers the keys of what it deleted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, true, tuple_, update
from sqlalchemy.orm import Session

from aggregator.store._sql import IN_CHUNK, StoreBase, epoch, insert_ignore, rowcount
from aggregator.store.matchkeys import MATCH_KEY_RETENTION
from aggregator.store.models import DeletedItemRow, FetchLogRow, ItemRow, MatchKeyRow, SourceRow, StoryRow
from aggregator.store.sources import count_items


@dataclass(frozen=True)
class PruneReport:
    items: int
    stories: int
    fetch_log: int
    match_keys: int
    complete: bool = True
    """False: the pass stopped midway (``RetentionStore.prune``'s ``stopping``)."""
    recounted: int = 0
    """Sources whose stored-item count (``SourceRow.item_count``) was off and was set right."""


@dataclass(frozen=True)
class StoreStats:
    sources: int
    failing: int
    retired: int
    items: int
    stories: int
    due: int
    lag_seconds: float


Stopping = Callable[[], bool]
"""Whether a retention pass should stop before its next transaction (the service is stopping)."""
KEYS_PER_TRANSACTION = 5_000
"""Story-matching key rows one of retention's transactions looks through (``prune``)."""
STORIES_PER_TRANSACTION = 5_000
"""Story ids one of retention's transactions looks through for stories left without items."""
SOURCES_PER_TRANSACTION = 50
"""Sources whose old fetch-log rows one of retention's transactions deletes."""
MIN_PAUSE_SECONDS = 0.01
"""The shortest pause between two of retention's transactions on SQLite (``prune``)."""


class _Pass:
    """One retention pass's progress: whether it may go on to its next transaction, and
    whether it was cut short (``RetentionStore.prune``)."""

    def __init__(self, stopping: Stopping) -> None:
        self._stopping = stopping
        self.cut = False

    def go(self) -> bool:
        self.cut = self.cut or self._stopping()
        return not self.cut


_STORIES = select(
    select(func.count()).select_from(StoryRow).scalar_subquery()
    - select(func.count()).select_from(StoryRow).where(StoryRow.merged_into.is_not(None)).scalar_subquery()
)
"""How many stories there are: a merged one's row only forwards to the story it became. Counted
as all rows less the merged ones, each count from an index (the merged ones' is partial and
small): counting the rows that are not merged read the whole table, at every /metrics scrape."""


class RetentionStore(StoreBase):
    def prune(
        self,
        now: datetime,
        keep: timedelta | None,
        protected: set[int],
        *,
        fetch_log_keep: timedelta,
        stopping: Stopping = lambda: False,
    ) -> PruneReport:
        """Retention: delete items older than ``keep`` (by date and by first sight; None: keep
        every item) that no output shows, remember their keys so they are not re-imported, drop
        stories left without items (a merged story's row once the story it became has none
        either), and trim the fetch log and the story-matching keys, which have retentions of
        their own whatever ``keep`` says.

        In many short transactions rather than one: on SQLite a transaction that writes holds
        the only write lock until it ends, and one deleting a day of a large service's keys,
        or the first pass over a database that kept everything, held it for as long as the
        whole deletion took, which grows with the database, while every poll waited
        (``SQLITE_BUSY_TIMEOUT_MS``, after which a poll fails). Each transaction deletes a
        bounded share, and between two of them the lock is left free at least as long as the
        last one held it, so a waiting poll gets its turn. A pass that stops midway
        (``stopping`` says so between two transactions: the service is stopping; or a killed
        process) leaves what it deleted so far consistently deleted, and the next pass goes on
        (``PruneReport.complete``)."""
        run = _Pass(stopping)
        items = self._delete_old_items(now, now - keep, protected, run) if keep is not None else 0
        stories = self._delete_orphan_stories(run)
        log_rows = self._trim_fetch_log(now - fetch_log_keep, run)
        # Copies of a story arrive within days; older lookup keys only cost space.
        keys = self._trim_match_keys(epoch(now - MATCH_KEY_RETENTION), run)
        recounted = self._recount_items(run)
        return PruneReport(items, stories, log_rows, keys, not run.cut, recounted)

    def _delete_old_items(self, now: datetime, cutoff: datetime, protected: set[int], run: _Pass) -> int:
        """Delete unprotected items sorted and first seen before ``cutoff``, ``IN_CHUNK`` per
        transaction, keeping their keys in the deleted-items table and taking them off their
        sources' counts in the same transaction; how many went.

        The counts go by the rows the DELETE returns, not by the rows the SELECT found: on
        SQLite the SELECT runs before the write transaction begins, and a row another pass
        deleted in between must not be taken off twice.

        On PostgreSQL the sources' rows are locked after the items': a group commit that has
        recorded one source's poll and then updates another source's item, one this transaction
        is deleting at that moment, waits for it while it waits for the first source's row.
        PostgreSQL breaks such a deadlock by failing one of the two with a transient error: the
        batch is committed again result by result, or this pass fails ("retention failed" in the
        log) and the next one goes on. It needs an item past retention to change in its feed at
        the very moment it is deleted."""
        deleted = 0
        while run.go():
            with self._turn() as s:
                old = s.execute(
                    select(ItemRow.id, ItemRow.source_id, ItemRow.key)
                    .where(ItemRow.sort_at < cutoff, ItemRow.first_seen_at < cutoff)
                    .order_by(ItemRow.sort_at, ItemRow.id)  # the sort index finds them: by id read every item
                    .limit(IN_CHUNK + len(protected))
                ).all()
                batch = [row for row in old if row.id not in protected][:IN_CHUNK]
                if batch:
                    rows = [{"source_id": r.source_id, "key": r.key, "deleted_at": now} for r in batch]
                    insert_ignore(s, DeletedItemRow, rows)
                    gone = s.execute(
                        delete(ItemRow).where(ItemRow.id.in_([r.id for r in batch])).returning(ItemRow.source_id)
                    ).scalars()
                    count_items(s.connection(), {source: -n for source, n in Counter(gone).items()})
            deleted += len(batch)
            if len(batch) < IN_CHUNK:
                break
        return deleted

    def _trim_fetch_log(self, cutoff: datetime, run: _Pass) -> int:
        """Delete fetch-log rows from before ``cutoff``, source by source (the log's index
        leads with the source), ``SOURCES_PER_TRANSACTION`` sources per transaction."""
        removed = 0
        for s, chunk in self._source_turns(run, SOURCES_PER_TRANSACTION):
            old = and_(FetchLogRow.source_id.in_(chunk), FetchLogRow.fetched_at < cutoff)
            removed += rowcount(s.execute(delete(FetchLogRow).where(old)))
        return removed

    def _recount_items(self, run: _Pass) -> int:
        """Set every source's stored-item count (``SourceRow.item_count``) to what its items
        number, and say how many were off. The transactions that add and delete items keep
        the counts, and nothing else should change them; but a worker of an older version
        still writing after an upgrade, or an operator's DELETE by hand, would leave a count
        wrong for good. Counting each source's items once a day, through the index that leads
        with the source, costs what a single /metrics scrape cost before the counts were kept.

        Each count is taken with its source's row locked, and the items counted after the
        lock is held: a poll's transaction holds that lock from recording the poll to its
        commit, so its items are either committed and counted, or added to the count once this
        transaction commits. On PostgreSQL one source per transaction, so that it never holds
        one source's row while waiting for another's (a group commit locks several in the order
        of its polls); on SQLite, which locks the whole database for one statement,
        ``SOURCES_PER_TRANSACTION`` at a time."""
        per_turn = SOURCES_PER_TRANSACTION if self.engine.dialect.name == "sqlite" else 1
        counted = select(func.count()).where(ItemRow.source_id == SourceRow.id).scalar_subquery()
        wrong = 0
        for s, chunk in self._source_turns(run, per_turn):
            if per_turn == 1:
                # FOR NO KEY UPDATE: an UPDATE's own lock, which waits for a poll that
                # recorded itself on the row but not for one that only inserted items of
                # the source (their foreign key locks the row FOR KEY SHARE).
                s.execute(select(SourceRow.id).where(SourceRow.id.in_(chunk)).with_for_update(key_share=True))
            fixed = s.execute(
                update(SourceRow)
                .where(SourceRow.id.in_(chunk), SourceRow.item_count != counted)
                .values(item_count=counted)
                .execution_options(synchronize_session=False)
            )
            wrong += rowcount(fixed)
        return wrong

    def _source_turns(self, run: _Pass, per_turn: int) -> Iterator[tuple[Session, list[int]]]:
        """Every source's id, ``per_turn`` at a time in the order of ids, each share in one of
        retention's short transactions (``_turn``), until the pass is told to stop
        (``_Pass.go``): what the passes that go source by source share."""
        with self.session() as s:
            sources = list(s.scalars(select(SourceRow.id).order_by(SourceRow.id)))
        for start in range(0, len(sources), per_turn):
            if not run.go():
                return
            with self._turn() as s:
                yield s, sources[start : start + per_turn]

    def _trim_match_keys(self, cutoff: int, run: _Pass) -> int:
        """Delete story-matching keys dated before ``cutoff`` (Unix seconds), one stretch of
        ``KEYS_PER_TRANSACTION`` rows of the table's primary key per transaction: the keys are
        hashes, so old rows lie all through the table, and no index leads with their time. The
        stretches end at rows, not at keys: a common name's key is carried by thousands of
        items."""
        row = tuple_(MatchKeyRow.key, MatchKeyRow.sort_epoch, MatchKeyRow.item_id)
        removed, after = 0, None
        while run.go():
            with self._turn() as s:
                rest = row > tuple_(*after) if after is not None else true()
                bound = s.execute(
                    select(MatchKeyRow.key, MatchKeyRow.sort_epoch, MatchKeyRow.item_id)
                    .where(rest)
                    .order_by(MatchKeyRow.key, MatchKeyRow.sort_epoch, MatchKeyRow.item_id)
                    .offset(KEYS_PER_TRANSACTION)
                    .limit(1)
                ).first()
                upto = row <= tuple_(*bound) if bound is not None else true()
                removed += rowcount(s.execute(delete(MatchKeyRow).where(rest, upto, MatchKeyRow.sort_epoch < cutoff)))
            if bound is None:
                break
            after = tuple(bound)
        return removed

    def _delete_orphan_stories(self, run: _Pass) -> int:
        """Delete stories left without items (a merged story's row once the story it became
        has none either), ``STORIES_PER_TRANSACTION`` ids per transaction, from the lowest id
        still stored: ids keep growing while retention deletes the oldest."""
        with self.session() as s:
            first, last = s.execute(select(func.min(StoryRow.id), func.max(StoryRow.id))).one()
        removed = 0
        for start in range((first or 1) - 1, last or 0, STORIES_PER_TRANSACTION):
            if not run.go():
                break
            with self._turn() as s:
                orphans = s.execute(
                    delete(StoryRow).where(
                        StoryRow.id > start,
                        StoryRow.id <= start + STORIES_PER_TRANSACTION,
                        ~select(ItemRow.id).where(ItemRow.story_id == StoryRow.id).exists(),
                        ~select(ItemRow.id).where(ItemRow.story_id == StoryRow.merged_into).exists(),
                    )
                )
                removed += rowcount(orphans)
        return removed

    @contextmanager
    def _turn(self) -> Iterator[Session]:
        """One of retention's short transactions (``prune``), followed on SQLite by a pause at
        least as long as it took, at least ``MIN_PAUSE_SECONDS``: the lock it held is then free
        for a poll that waited for it. PostgreSQL locks rows, not the database: no pause."""
        started = time.monotonic()
        with self.session() as s:
            yield s
        if self.engine.dialect.name == "sqlite":
            time.sleep(max(MIN_PAUSE_SECONDS, time.monotonic() - started))

    def stats(self, now: datetime) -> StoreStats:
        """The numbers /metrics and /status report, in a handful of aggregate queries over the
        sources table and two indexes of stories: the items are added up from the sources'
        counts (``SourceRow.item_count``), as counting the items table read every item."""
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
            items = s.scalar(select(func.sum(SourceRow.item_count)))
            stories = s.scalar(_STORIES)
        lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        return StoreStats(sources or 0, failing or 0, retired or 0, items or 0, stories or 0, due or 0, lag)

    def items_per_day(self, since: datetime) -> dict[str, dict[str, int]]:
        """Items per source name and UTC day (``YYYY-MM-DD``) of their sort time, since
        ``since``: the day their feed dates them (or where an undated item was placed, about
        when it was first seen), which is what /status shows of a source's rhythm, and a
        first fetch's backlog falls on the days it was published, not all on the day it was
        read. Found through the sort time's index: counting by the time items were first
        seen, which no index leads with, read every item at every view of /status."""
        day = func.date(ItemRow.sort_at)
        with self.session() as s:
            rows = s.execute(
                select(SourceRow.name, day, func.count())
                .join(SourceRow, ItemRow.source_id == SourceRow.id)
                .where(ItemRow.sort_at >= since)
                .group_by(SourceRow.name, day)
            ).all()
        found: dict[str, dict[str, int]] = {}
        for name, date, count in rows:
            found.setdefault(name, {})[str(date)[:10]] = int(count)
        return found

    def ping(self) -> None:
        """Read the newest item's id and one source: proof that the database answers and its
        tables can be read, for a health check, at the cost of two index lookups. Counting the
        rows, as a health check did, reads every item: a probe every few seconds then costs
        more as the database grows, until it nears the probe's timeout and reports a working
        database as failing. StorageError: it does not answer."""
        with self.session() as s:
            s.scalar(select(ItemRow.id).order_by(ItemRow.id.desc()).limit(1))
            s.scalar(select(SourceRow.id).limit(1))

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            return {
                "sources": s.scalar(select(func.count()).select_from(SourceRow)) or 0,
                "items": s.scalar(select(func.count()).select_from(ItemRow)) or 0,
                "stories": s.scalar(_STORIES) or 0,
            }
