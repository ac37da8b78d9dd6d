"""What the database holds, in counts, and letting old things go.

What must be kept is curation's call (``publisher.prune`` passes the protected item ids):
storage deletes what it is told may go, and remembers the keys of what it deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from aggregator.store._sql import IN_CHUNK, StoreBase, epoch, insert_ignore, rowcount
from aggregator.store.matchkeys import MATCH_KEY_RETENTION
from aggregator.store.models import DeletedItemRow, FetchLogRow, ItemRow, MatchKeyRow, SourceRow, StoryRow


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


_STORIES = select(func.count()).select_from(StoryRow).where(StoryRow.merged_into.is_(None))
"""How many stories there are: a merged one's row only forwards to the story it became."""


class RetentionStore(StoreBase):
    def prune(self, now: datetime, keep: timedelta, protected: set[int], *, fetch_log_keep: timedelta) -> PruneReport:
        """Retention: delete items older than ``keep`` (by date and by first sight) that no
        output shows, remember their keys so they are not re-imported, drop stories left
        without items (a merged story's row once the story it became has none either), and
        trim the fetch log."""
        with self.session() as s:
            deleted = _delete_old_items(s, now, now - keep, protected)
            orphans = s.execute(
                delete(StoryRow).where(
                    ~select(ItemRow.id).where(ItemRow.story_id == StoryRow.id).exists(),
                    ~select(ItemRow.id).where(ItemRow.story_id == StoryRow.merged_into).exists(),
                )
            )
            log_rows = s.execute(delete(FetchLogRow).where(FetchLogRow.fetched_at < now - fetch_log_keep))
            # Copies of a story arrive within days; older lookup keys only cost space.
            s.execute(delete(MatchKeyRow).where(MatchKeyRow.sort_epoch < epoch(now - MATCH_KEY_RETENTION)))
        return PruneReport(deleted, rowcount(orphans), rowcount(log_rows))

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
            stories = s.scalar(_STORIES)
        lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        return StoreStats(sources or 0, failing or 0, retired or 0, items or 0, stories or 0, due or 0, lag)

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
                "stories": s.scalar(_STORIES) or 0,
            }


def _delete_old_items(s: Session, now: datetime, cutoff: datetime, protected: set[int]) -> int:
    """Delete unprotected items sorted and first seen before ``cutoff``, in chunks, keeping
    their keys in the deleted-items table; how many went."""
    deleted = 0
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
        insert_ignore(s, DeletedItemRow, [{"source_id": r.source_id, "key": r.key, "deleted_at": now} for r in batch])
        s.execute(delete(ItemRow).where(ItemRow.id.in_([r.id for r in batch])))
        deleted += len(batch)
        if len(batch) < IN_CHUNK:
            break
    return deleted
