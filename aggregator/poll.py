"""What one poll changes: a pure decision over the fetch result and what the store said.

The writer commits a poll in three steps, ``reader``'s decide-then-store: it reads what the
decision needs (``PollLookups``: the keys retention deleted, the stored items with the
fetched keys, the stories already known for their URLs, the plan after story matching, the
source's recent item count, and — only when a host may be throttling us — the host's other
sources), then ``decide_poll`` returns a frozen ``PollPlan`` (the outcome, the items to insert
and update, the source's new state, the other sources to postpone, the lines to log), and the
writer applies the plan. The decision holds no transaction, so every rule of a poll (retire,
back off, 304, unchanged, new, updated, joined a story) is tested without a database.

Story matching by text stays a lookup: ``StoryMatcher.match`` reads candidate stories for the
plan ``ingest_plan`` gives and returns it with stories joined, which ``decide_poll`` takes
as ``PollLookups.matched``.

The per-source fault boundary's choices are here too (``source_fault``, ``fault_class``,
``fault_reason``): whether an unexpected exception is one source's to record, and how.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aggregator.dedupe import decide_ingest
from aggregator.errors import StorageError, one_line
from aggregator.records import (
    ClaimedSource,
    FetchResult,
    IngestPlan,
    Item,
    ItemUpdate,
    NewItem,
    ParsedFeed,
    PollRecord,
    StoredItem,
)
from aggregator.schedule import (
    THROTTLED_STATUSES,
    HostSource,
    NextPoll,
    PollOutcome,
    ScheduleSettings,
    host_of,
    host_slowdown,
    next_poll,
    retirement,
)

if TYPE_CHECKING:
    from aggregator import cluster, parseworker

NO_ITEMS = IngestPlan((), (), 0)
RATE_WINDOW = timedelta(days=7)
"""The window a source's publishing rate (items per day, for adaptive polling) is measured over."""


@dataclass(frozen=True)
class Polled:
    """One source's fetch (and parse) on its way to the writer.

    ``parse_error`` is set when the body could not be parsed, or when handling the source
    failed unexpectedly (then ``parsed`` is None); ``body_hash`` is kept so the same bytes
    are not parsed again; ``signatures`` and ``features`` are what the parse workers already
    computed for story matching.
    """

    source: ClaimedSource
    result: FetchResult
    parsed: ParsedFeed | None = None
    parse_error: str | None = None
    body_hash: str | None = None
    signatures: dict[str, cluster.Signed] = field(default_factory=dict)
    features: dict[str, parseworker.Featurized] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return not self.result.ok or self.parse_error is not None


@dataclass(frozen=True)
class PollLookups:
    """What the store said before the decision, read in the poll's transaction.

    ``matched`` is the ingest plan after story matching (None: decide from the other lookups
    alone, as with ``story_matching: off``). ``recent_items`` counts the source's items stored
    within ``RATE_WINDOW`` before this poll. ``host_sources`` are the active sources on the
    source's host (its own row still as before this poll), read only when
    ``schedule.host_needs_check`` says so; None: not read.
    """

    deleted_keys: frozenset[str] = frozenset()
    stored: Mapping[str, StoredItem] = field(default_factory=dict)
    stories_by_url: Mapping[str, int] = field(default_factory=dict)
    matched: IngestPlan | None = None
    recent_items: int = 0
    host_sources: tuple[HostSource, ...] | None = None


@dataclass(frozen=True)
class LogLine:
    """A line to log once the poll is committed (``logging.Logger.log`` arguments)."""

    level: int
    message: str
    args: tuple[object, ...] = ()
    extra: Mapping[str, object] | None = None


@dataclass(frozen=True)
class PollPlan:
    """Everything one poll changes, for the writer to apply in one transaction.

    ``result`` is the fetch result as recorded (a failure carries the message stored as
    ``last_error``); ``postpone`` holds the other sources of a throttling host, moved later,
    and ``host_held_until`` until when that host holds us off.
    """

    outcome: str  # new | updated | unchanged | not_modified | error | retired
    result: FetchResult
    record: PollRecord
    inserts: tuple[NewItem, ...] = ()
    updates: tuple[ItemUpdate, ...] = ()
    merges: tuple[tuple[int, int], ...] = ()  # IngestPlan.merges
    rekeys: tuple[tuple[int, str, str | None], ...] = ()  # IngestPlan.rekeys
    postpone: Mapping[int, NextPoll] = field(default_factory=dict)
    host_held_until: datetime | None = None
    log: tuple[LogLine, ...] = ()
    ages_unknown: bool = False  # ``ages_unknown``: its new items (all undated) are stored as such


def kept_items(parsed: ParsedFeed, deleted_keys: frozenset[str] | set[str]) -> tuple[Item, ...]:
    """The parsed items retention has not deleted: those must not come back as new items."""
    return tuple(i for i in parsed.items if i.key not in deleted_keys)


def lookup_keys(items: Iterable[Item]) -> list[str]:
    """The keys to look an item up by, stored or deleted: its own, and its former one where it has one."""
    return [key for item in items for key in (item.key, item.former_key) if key is not None]


def deleted_item_keys(items: Iterable[Item], deleted: Collection[str]) -> frozenset[str]:
    """The keys of the items retention deleted, given the keys the store answered for
    (``lookup_keys``): an item deleted under its former key is deleted under its own."""
    return frozenset(item.key for item in items if _held_under(item, deleted) is not None)


def stored_by_item_key(items: Iterable[Item], found: Mapping[str, StoredItem]) -> dict[str, StoredItem]:
    """The stored items by the key each parsed item has now, given what the store found by
    ``lookup_keys``: an item stored under its former key (``Item.former_key``) is that row, whose
    ``StoredItem.key`` tells ``decide_ingest`` to re-key it. Its own key wins where both are stored."""
    return {item.key: found[key] for item in items if (key := _held_under(item, found)) is not None}


def _held_under(item: Item, held: Collection[str]) -> str | None:
    """The key ``held`` has ``item`` under: its own, else its former one; None: neither."""
    if item.key in held:
        return item.key
    return item.former_key if item.former_key is not None and item.former_key in held else None


def fresh_urls(items: tuple[Item, ...], stored: Mapping[str, StoredItem]) -> list[str]:
    """The canonical URLs of the items not stored yet: a story they may join is looked up by these."""
    return [i.canonical_url for i in items if i.key not in stored and i.canonical_url]


def ingest_plan(parsed: ParsedFeed | None, lookups: PollLookups) -> IngestPlan:
    """New, updated and unchanged items of the document, before story matching by text."""
    if parsed is None:
        return NO_ITEMS
    return decide_ingest(kept_items(parsed, lookups.deleted_keys), lookups.stored, lookups.stories_by_url)


def decide_poll(
    polled: Polled,
    lookups: PollLookups,
    settings: ScheduleSettings,
    now: datetime,
    rng: random.Random | None = None,
) -> PollPlan:
    """What the poll changes: retire the source, back off, or take its items and schedule it."""
    rng = rng or random.Random()
    plan = _failed(polled, settings, now, rng) if polled.failed else _succeeded(polled, lookups, settings, now, rng)
    if plan.outcome != "retired" and lookups.host_sources is not None:
        plan = _respect_host(plan, polled, lookups.host_sources, now)
    return replace(plan, log=(*plan.log, *_poll_lines(polled, plan)))


def _failed(polled: Polled, settings: ScheduleSettings, now: datetime, rng: random.Random) -> PollPlan:
    source, result = polled.source, polled.result
    errors = source.error_count + 1
    given_up = retirement(source.failing_since, now, settings.retire_after)
    if not result.retryable or given_up:
        cause = result.error or polled.parse_error
        if not result.retryable:
            reason = cause or "permanent failure"
        else:  # the failure that ended the wait says why the source failed, not only for how long
            reason = f"{given_up}; last error: {cause}" if cause else str(given_up)
        record = PollRecord("retired", None, f"retired: {reason}", errors, retired_reason=reason)
        return PollPlan("retired", replace(result, error=reason), record)
    policy = settings.policy(source.interval_seconds)
    outcome = PollOutcome(ok=False, status=result.status, error_count=errors, retry_after=result.retry_after)
    decision = next_poll(policy, outcome, now, rng)
    record = PollRecord("error", decision.at, decision.reason, errors)
    return PollPlan("error", replace(result, error=result.error or polled.parse_error or "failed"), record)


def _succeeded(
    polled: Polled, lookups: PollLookups, settings: ScheduleSettings, now: datetime, rng: random.Random
) -> PollPlan:
    source, result, parsed = polled.source, polled.result, polled.parsed
    items = lookups.matched if lookups.matched is not None else ingest_plan(parsed, lookups)
    new, updated = len(items.inserts), len(items.updates)
    outcome = (
        "not_modified" if result.not_modified else
        "unchanged" if parsed is None else
        "new" if new else "updated" if updated else "unchanged"
    )  # fmt: skip
    # Not re-measured when the body did not change: keep the last rate.
    rate = items_per_day(lookups.recent_items, items.inserts, now) if parsed is not None else None
    hints = PollOutcome(
        ok=True,
        status=result.status,
        cache_control=result.cache_control,
        expires=result.expires,
        ttl_minutes=parsed.ttl_minutes if parsed else None,
        update_period_minutes=parsed.update_period_minutes if parsed else None,
        items_per_day=rate if parsed is not None else source.items_per_day,
    )
    decision = next_poll(settings.policy(source.interval_seconds), hints, now, rng)
    record = PollRecord(
        outcome,
        decision.at,
        decision.reason,
        0,
        body_hash=polled.body_hash,
        items_new=new,
        items_updated=updated,
        feed_title=parsed.title if parsed else None,
        feed_link=parsed.link if parsed else None,
        feed_id=parsed.feed_id if parsed else None,
        items_per_day=rate,
        parsed=parsed is not None,
        warning=parsed.warning if parsed else None,
    )
    return PollPlan(
        outcome, result, record, inserts=items.inserts, updates=items.updates, merges=items.merges,
        rekeys=items.rekeys, ages_unknown=ages_unknown(source, parsed),
    )  # fmt: skip


def ages_unknown(source: ClaimedSource, parsed: ParsedFeed | None) -> bool:
    """Whether the undated items of this poll are of an age nobody can tell: those of the first
    document read from the source's feed (none read before, or its URL changed since,
    ``ClaimedSource.body_hash``) that dates none of its items.

    Such a document's items are placed at the moment they were first seen
    (``normalize.place_undated``), as if they had just appeared. An item that appears between
    two polls did, within an interval; what a feed already held when it was first read may be
    years old, and placed at "now" it went above every dated report (a first poll of many feeds
    put their undated items at the top of World). Outputs put these after the dated news
    (``curate``). A document with some dates places its undated items between them, from
    what it says: those ages are known well enough."""
    return (
        source.body_hash is None
        and parsed is not None
        and bool(parsed.items)
        and all(item.published_at is None for item in parsed.items)
    )


def items_per_day(recent_items: int, inserts: tuple[NewItem, ...], now: datetime) -> float | None:
    """The source's publishing rate over ``RATE_WINDOW`` once this poll's items are stored
    (None: nothing in the window). An item counts by the time it sorts at, as stored: its
    publication date, else its place among undated items, else now."""
    since = now - RATE_WINDOW
    count = recent_items + sum(1 for n in inserts if (n.item.published_at or n.item.placed_at or now) >= since)
    return count / RATE_WINDOW.days if count else None


def _respect_host(plan: PollPlan, polled: Polled, host_sources: tuple[HostSource, ...], now: datetime) -> PollPlan:
    """Apply ``schedule.host_slowdown`` to the host's sources as they are once this poll is
    recorded, so whichever of a host's polls commits last, its sources end up waiting together."""
    source, result = polled.source, polled.result
    host = host_of(source.fetch.url)
    moves = host_slowdown(_after_poll(host_sources, polled, plan.record, host), now)
    if not moves:
        return plan
    lines = plan.log
    if result.status in THROTTLED_STATUSES:
        message = "host %s is throttling us: %d more of its sources wait"
        lines = (*lines, LogLine(logging.WARNING, message, (host, len(moves))))
    mine = moves.get(source.fetch.id)
    record = replace(plan.record, next_poll_at=mine.at, next_poll_reason=mine.reason) if mine else plan.record
    held = max(decision.at for decision in moves.values())
    return replace(plan, record=record, postpone=moves, host_held_until=held, log=lines)


def _after_poll(
    host_sources: tuple[HostSource, ...], polled: Polled, record: PollRecord, host: str
) -> list[HostSource]:
    """The host's sources with the polled one's row as recording the poll leaves it: its new
    time and status, or gone from the host when it moved for good to another one."""
    result = polled.result
    moved_away = bool(result.permanent_url and result.ok and host_of(result.permanent_url) != host)
    rows = []
    for row in host_sources:
        if row.id != polled.source.fetch.id:
            rows.append(row)
        elif not moved_away:
            rows.append(HostSource(row.id, record.next_poll_at or row.next_poll_at, result.status))
    return rows


def _poll_lines(polled: Polled, plan: PollPlan) -> tuple[LogLine, ...]:
    source, result, record = polled.source, polled.result, plan.record
    name, url = source.fetch.name, source.fetch.url
    context = {"source": name, "url": url, "outcome": plan.outcome, "status": result.status}
    moved: tuple[LogLine, ...] = ()
    if result.permanent_url and result.ok:
        message = "source %r moved permanently: %s -> %s (stored URL updated)"
        moved = (LogLine(logging.WARNING, message, (name, url, result.permanent_url), context),)
    if plan.outcome == "retired":
        line = LogLine(logging.ERROR, "source %r (%s) retired: %s", (name, url, record.retired_reason), context)
    elif plan.outcome == "error":
        line = LogLine(
            logging.WARNING,
            "source %r (%s): %s; next try %s (%s)",
            (name, url, polled.parse_error or result.error, _at(record.next_poll_at, result.fetched_at),
             record.next_poll_reason),
            context,
        )  # fmt: skip
    else:
        line = LogLine(
            logging.INFO,
            "source %r: %s, %d new, %d updated; next poll %s (%s)%s",
            (name, plan.outcome, record.items_new, record.items_updated, _at(record.next_poll_at, result.fetched_at),
             record.next_poll_reason, f"; read leniently: {record.warning}" if record.warning else ""),
            context,
        )  # fmt: skip
    return (*moved, line)


def _at(moment: datetime | None, now: datetime) -> str:
    """When a source is polled next, as a log line says it: the time alone on the poll's own
    day (UTC), the date as well on any other. A quiet feed's adaptive interval or a long
    backoff runs past midnight, and "next poll 07:06Z" logged at 09:26 reads as overdue."""
    if moment is None:
        return "never"
    moment = moment.astimezone(UTC)
    return f"{moment:%H:%M:%S}Z" if moment.date() == now.astimezone(UTC).date() else f"{moment:%Y-%m-%d %H:%M:%S}Z"


# --- unexpected failures while handling one source ------------------------------------


def source_fault(exc: Exception) -> bool:
    """Whether an exception raised while handling one source is that source's alone.

    Everything is, except a failure of the database itself (unreachable, read-only, full,
    out of retries): that one would fail every other source the same way, so it stops the
    run instead of being written, in vain, on each source. A statement the database refused
    for the values it carried is the source's.
    """
    return not isinstance(exc, StorageError) or exc.data_refused


def fault_class(exc: Exception) -> str:
    """The metric label of an unexpected failure: the exception's class (the driver's, for the database)."""
    cause = exc.__cause__
    if isinstance(exc, StorageError) and cause is not None:
        cause = getattr(cause, "orig", None) or cause
        return type(cause).__name__
    return type(exc).__name__


def fault_reason(exc: Exception) -> str:
    """What ``last_error`` says about an unexpected failure: one line, its type and message."""
    message = str(exc)
    return one_line(f"{fault_class(exc)}: {message}" if message else fault_class(exc))
