"""The sources table: the config's desired state, leases, the schedule, and what a poll records.

Storage takes plain ``SourceSpec``s and poll records; what a source's next poll should be,
and whether it retires, is decided before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from aggregator.records import (
    ClaimedSource,
    FetchResult,
    PollRecord,
    SourceLabel,
    SourceSpec,
    SourceToFetch,
    renamed_sources,
)
from aggregator.store._sql import StoreBase, TransactionBase, rowcount, serialize_writers
from aggregator.store.models import FetchLogRow, ItemRow, SourceRow

SYNC_LOCK_KEY = 0x61676772_00000002  # pg_advisory_xact_lock key of sync_sources ("aggr", 2)


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()  # (old name, new name)


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


class SourceStore(StoreBase):
    """The sources table outside a poll: syncing with the config, leasing, and health."""

    # --- the desired state from feeds.yaml ------------------------------------------------
    def sync_sources(self, specs: Sequence[SourceSpec], now: datetime) -> SyncReport:
        """Make the sources table match the config; removed sources stop, their items stay.

        Safe under any number of processes syncing at once (workers started together, a
        reload in each): the whole read-compare-write runs under a lock the database holds
        until commit, so each process sees what the one before it wrote and finds nothing
        left to add. Without it two of them inserted the same new source and one died on
        the unique name.

        A source the config renames (``records.renamed_sources``) keeps its items, validators
        and schedule under its new name.
        """
        added: list[str] = []
        changed: list[str] = []
        removed: list[str] = []
        renamed: list[tuple[str, str]] = []
        with self.session() as s:
            serialize_writers(s.connection(), SYNC_LOCK_KEY)
            rows = {row.name: row for row in s.scalars(select(SourceRow))}
            renames = renamed_sources(specs, {name: row.config_url for name, row in rows.items()})
            for spec in specs:
                row = rows.get(spec.name)
                if spec.name in renames:
                    row = rows[renames[spec.name]]
                    renamed.append((row.name, spec.name))
                    row.name = spec.name
                    _apply_spec(row, spec, now)
                elif row is None:
                    s.add(_new_source(spec, now))
                    added.append(spec.name)
                elif _apply_spec(row, spec, now):
                    changed.append(spec.name)
            wanted = {spec.name for spec in specs}
            for stored in rows.values():
                if stored.name not in wanted and stored.in_config:
                    stored.in_config = False
                    stored.lease_owner = stored.lease_until = None
                    removed.append(stored.name)
        return SyncReport(tuple(added), tuple(changed), tuple(removed), tuple(renamed))

    def source_labels(self) -> list[SourceLabel]:
        """Every stored source's id, name and tags: what an output's choice of sources is made from."""
        with self.session() as s:
            rows = s.execute(select(SourceRow.id, SourceRow.name, SourceRow.tags)).all()
        return [SourceLabel(r.id, r.name, tuple(r.tags or ())) for r in rows]

    def sources_changed_at(self) -> dict[int, datetime]:
        """When a poll last stored a new or changed item of each source (those it ever did)."""
        with self.session() as s:
            rows = s.execute(select(SourceRow.id, SourceRow.changed_at).where(SourceRow.changed_at.is_not(None)))
            return {r.id: r.changed_at for r in rows}

    # --- the schedule -----------------------------------------------------------------
    def make_all_due(self, now: datetime) -> int:
        """``poll --all``: every active source becomes due now (leases are still respected)."""
        with self.session() as s:
            result = s.execute(
                update(SourceRow)
                .where(SourceRow.in_config.is_(True), SourceRow.retired_at.is_(None), SourceRow.enabled.is_(True))
                .values(next_poll_at=now, next_poll_reason="poll --all")
            )
            return rowcount(result)

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
                    SourceRow.last_success_at, SourceRow.created_at, SourceRow.restarted_at,
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
                failing_since(r.last_success_at, r.created_at, r.restarted_at),
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
            return rowcount(result)

    # --- visibility ------------------------------------------------------------------
    def health(self) -> list[SourceHealth]:
        """Every source's state for /status and ``aggregator sources``: the sources table alone,
        its items counted by ``SourceRow.item_count``."""
        with self.session() as s:
            return [_health(r) for r in s.scalars(select(SourceRow).order_by(SourceRow.name))]


def failing_since(last_success: datetime | None, created: datetime, restarted: datetime | None) -> datetime:
    """Since when a source has had no successful poll under its present configuration: its
    last success, else when it was added, or when the config last gave it a fresh start if
    that is later (``SourceRow.restarted_at``)."""
    since = last_success or created
    return max(since, restarted) if restarted is not None else since


def _new_source(spec: SourceSpec, now: datetime) -> SourceRow:
    return SourceRow(
        name=spec.name,
        url=spec.url,
        config_url=spec.url,
        tags=list(spec.tags),
        interval_seconds=spec.interval_seconds,
        enabled=spec.enabled,
        in_config=True,
        allow_private=spec.allow_private,
        next_poll_at=now,
        next_poll_reason="new source",
        error_count=0,
        created_at=now,
    )


def _apply_spec(row: SourceRow, spec: SourceSpec, now: datetime) -> bool:
    """Bring a stored source in line with its spec; True when a configured value changed."""
    before = (row.config_url, row.tags, row.interval_seconds, row.enabled, row.in_config, row.allow_private)
    if row.config_url != spec.url:
        # The user pointed the source elsewhere: forget validators and retirement.
        row.url = row.config_url = spec.url
        row.etag = row.last_modified = row.body_hash = None
        row.retired_at = None
        row.retired_reason = None
        row.error_count = 0
        row.restarted_at = now
        row.next_poll_at = now
        row.next_poll_reason = "URL changed in config"
    interval = spec.interval_seconds
    if interval != row.interval_seconds and interval is not None:
        sooner = now + timedelta(seconds=interval)
        if row.next_poll_at > sooner:
            row.next_poll_at, row.next_poll_reason = sooner, "interval changed in config"
    if not row.in_config:
        # Removed and added again: a fresh start, also for a retired source.
        row.next_poll_at, row.next_poll_reason = now, "back in config"
        row.retired_at = row.retired_reason = None
        row.error_count = 0
        row.restarted_at = now
    row.tags, row.interval_seconds, row.enabled = list(spec.tags), interval, spec.enabled
    row.in_config, row.allow_private = True, spec.allow_private
    after = (row.config_url, row.tags, row.interval_seconds, row.enabled, row.in_config, row.allow_private)
    return before != after


def _health(r: SourceRow) -> SourceHealth:
    return SourceHealth(
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
        items=r.item_count,
        items_per_day=r.items_per_day,
        feed_title=r.feed_title,
        last_warning=r.last_warning,
    )


_ITEMS_SINCE = select(func.count()).where(
    ItemRow.source_id == bindparam("source_id"), ItemRow.sort_at >= bindparam("since")
)
_FETCH_LOG = insert(FetchLogRow)
_ITEM_COUNT = (
    update(SourceRow)
    .where(SourceRow.id == bindparam("source_id"))
    .values(item_count=SourceRow.item_count + bindparam("added"))
)


def count_items(connection: Connection, added: Mapping[int, int]) -> None:
    """Add to sources' stored-item counts (``SourceRow.item_count``) what a transaction inserted
    or, as negative numbers, deleted, by source id; in that transaction, so the counts commit
    with the items or not at all.

    The database adds (``item_count + :added``): two transactions changing one source's count
    at once (two workers, a poll and retention) each add their own, where reading the count
    and writing a sum would lose one of them. One UPDATE per source, all in one executemany, in
    the order of source ids: two transactions updating the same sources lock their rows in the
    same order and cannot deadlock on each other there.
    """
    params = [{"source_id": source_id, "added": n} for source_id, n in sorted(added.items()) if n]
    if params:
        # One parameter set goes as a plain execute (see ``TransactionBase._update_rows``).
        connection.execute(_ITEM_COUNT, params[0] if len(params) == 1 else params)


class SourcePollWrites(TransactionBase):
    """What a poll reads and writes about sources inside the ingest transaction."""

    def items_since(self, source_id: int, since: datetime) -> int:
        """How many of the source's stored items sort at or after ``since`` (its publishing rate's input)."""
        return int(self.c.scalar(_ITEMS_SINCE, {"source_id": source_id, "since": since}) or 0)

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
        if self._update_rows(SourceRow, {source_id: _polled_values(result, record)}) == 0:
            return  # the source was removed meanwhile
        self.c.execute(
            _FETCH_LOG,
            {
                "source_id": source_id,
                "fetched_at": result.fetched_at,
                "duration_ms": int(result.elapsed * 1000),
                "status": result.status,
                "outcome": record.outcome,
                "error": result.error,
                "items_new": record.items_new,
                "items_updated": record.items_updated,
                "bytes": len(result.body or b""),
            },
        )


def _polled_values(result: FetchResult, record: PollRecord) -> dict[str, Any]:
    """The source row's columns after a poll (those left out keep their stored values)."""
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
        if result.permanent_url:
            values["url"] = result.permanent_url
    else:
        values["last_error"] = result.error
    if record.body_hash is not None:
        values["body_hash"] = record.body_hash
    if record.items_new:
        values["last_new_item_at"] = now
    if record.items_new or record.items_updated:
        values["changed_at"] = now
    values.update({attr: value for attr in _FEED_STATE if (value := getattr(record, attr)) is not None})
    if record.parsed:
        values["last_warning"] = record.warning
    if record.retired_reason:
        values.update(retired_at=now, retired_reason=record.retired_reason)
    return values


_FEED_STATE = ("feed_title", "feed_link", "feed_id", "items_per_day")
