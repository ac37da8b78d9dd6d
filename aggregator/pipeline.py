"""Wiring: one poll of one source through every stage, then ``publisher`` for the outputs.

``Pipeline.poll_due`` claims due sources, fetches them concurrently, parses changed
bodies in a process pool (feedparser is where the CPU goes), and commits the results
waiting for the writer together (``groupcommit``), each whole or not at all.
``Publisher.publish`` renders the outputs whose sources changed.
The deciders (``schedule.next_poll``, ``dedupe.decide_ingest``, ``curate.select``) are
called from here; the I/O stages never call each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from aggregator import cluster, metrics, parseworker
from aggregator.config import Config
from aggregator.dedupe import decide_ingest
from aggregator.errors import AggregatorError, ParseError, PublishError, StorageError
from aggregator.fetch import Fetcher, FetchOptions
from aggregator.groupcommit import GroupCommit
from aggregator.parse import one_line
from aggregator.publisher import Publisher
from aggregator.records import FetchResult, ParsedFeed
from aggregator.schedule import (
    THROTTLED_STATUSES,
    HostSource,
    NextPoll,
    PollOutcome,
    PollPolicy,
    host_slowdown,
    next_poll,
    retirement,
)
from aggregator.store.repository import (
    ClaimedSource,
    IngestTransaction,
    PollRecord,
    Store,
)
from aggregator.storymatch import StoryMatcher

log = logging.getLogger("aggregator")

LEASE_MARGIN = timedelta(minutes=2)
COMMIT_ATTEMPTS = 4
COMMIT_SLOTS = 4


@dataclass
class PollSummary:
    polled: int = 0
    new_items: int = 0
    updated_items: int = 0
    not_modified: int = 0
    unchanged: int = 0
    errors: int = 0
    changed_sources: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> tags

    def add(self, outcome: str, record: PollRecord, source: ClaimedSource) -> None:
        self.polled += 1
        self.new_items += record.items_new
        self.updated_items += record.items_updated
        if outcome == "not_modified":
            self.not_modified += 1
        elif outcome == "unchanged":
            self.unchanged += 1
        elif outcome in ("error", "retired"):
            self.errors += 1
        if record.items_new or record.items_updated:
            self.changed_sources[source.fetch.name] = source.tags


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reclaim_dead_leases(store: Store) -> int:
    """Release leases held by processes of this host that no longer exist.

    A killed worker's leases would otherwise block its sources until they expire; on
    this host we can tell for sure that the holder is gone, so there is no need to wait.
    Leases of other hosts are left to expire (we cannot see their processes).
    """
    host = socket.gethostname()
    released = 0
    for owner in store.lease_owners():
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        released += store.release_owner(owner)
    if released:
        log.info("released %d leases held by dead workers on this host", released)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


P = ParamSpec("P")
T = TypeVar("T")


def fetch_options(config: Config) -> FetchOptions:
    s = config.settings
    return FetchOptions(
        user_agent=s.effective_user_agent,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        total_timeout=s.total_timeout,
        max_body_bytes=s.max_body_bytes,
        max_redirects=s.max_redirects,
        concurrency=s.concurrency,
        per_host_concurrency=s.per_host_concurrency,
        allow_private_networks=s.allow_private_networks,
    )


class Pipeline:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        parse_pool: Executor | None = None,
        owner: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_progress: Callable[[PollSummary], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.parse_pool = parse_pool
        self.owner = owner or worker_id()
        self.clock = clock
        self.on_progress = on_progress
        # Claims and commits run in turn on threads of their own. SQLite has one writer
        # anyway; PostgreSQL takes a few commits at once (they are short, and a lost race is
        # retried), so one slow fsync does not stall the rest. A queue in front of always the
        # same threads, rather than asyncio.to_thread behind a semaphore: a round of 1,000
        # 304s cost the main process 0.87 s of CPU that way, 0.66-0.78 s this way (and 0.53 s
        # committing on the event loop itself, which would stall it).
        slots = 1 if store.engine.dialect.name == "sqlite" else COMMIT_SLOTS
        self._writer = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="aggregator-writer")
        weakref.finalize(self, self._writer.shutdown, wait=False)
        # Fetch results waiting for those threads go together, one transaction per batch.
        self._group: GroupCommit[tuple[Any, ...], tuple[str, PollRecord]] = GroupCommit(self._write_batch, slots=slots)
        self.authority = _authority(config.settings.public_url)
        # Hosts that are throttling us, and until when: their other sources wait too. Only
        # a shortcut for this process; the postponed times themselves are in the database.
        self._host_holds: dict[str, datetime] = {}
        self.stories = StoryMatcher()

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config. Everything else is read from ``self.config`` where it is
        used; the story-id authority is derived once, so it is derived again here."""
        self.config = config
        self.authority = _authority(config.settings.public_url)

    # --- polling ---------------------------------------------------------------------
    async def poll_due(self, fetcher: Fetcher, *, until: datetime | None = None) -> PollSummary:
        """Poll every source due at ``until`` (default: now), until none is left.

        Claims are refilled as polls finish (whenever fewer than half a batch is in flight),
        rather than batch after batch: waiting for a batch's slowest poll before claiming
        the next left the parse workers idle at every batch's tail and the writer idle at
        every batch's head, and held every source of the next batch back behind one slow
        server.
        """
        summary = PollSummary()
        cutoff = until or self.clock()
        settings = self.config.settings
        lease = timedelta(seconds=settings.total_timeout) * 2 + LEASE_MARGIN
        batch_size = settings.concurrency * 2
        running: dict[asyncio.Task[None], int] = {}  # poll -> its source id
        exhausted = False
        try:
            while True:
                if not exhausted and len(running) <= batch_size // 2:
                    # On the writer (SQLite: queued behind commits, not waiting in its busy handler).
                    wanted = batch_size - len(running)
                    claimed = await self._write(self.store.claim_due, self.owner, cutoff, wanted, lease)
                    exhausted = not claimed
                    for source in claimed:
                        running[asyncio.create_task(self._poll_one(fetcher, source, summary))] = source.fetch.id
                if not running:
                    return summary
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                    task.result()  # a poll raises only when the database failed: stop
        except BaseException:
            # Shutting down, or the database failed: stop the other polls and hand back the
            # leases we did not finish (committed polls already cleared theirs) so nobody
            # waits for them to expire.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            with contextlib.suppress(AggregatorError):
                await asyncio.shield(asyncio.to_thread(self.store.release, list(running.values()), self.owner))
            raise

    async def _poll_one(self, fetcher: Fetcher, source: ClaimedSource, summary: PollSummary) -> None:
        """Fetch, parse, normalize, match and store one source: the per-source fault boundary.

        Anything unexpected in there (a bug, a value the database will not take) costs this
        source alone: it is recorded on the source like any failed poll (``last_error`` with
        the exception's type and message, the normal backoff), counted by class in
        ``aggregator_source_errors`` and logged as one line, its traceback at debug level.
        The transaction it happened in is rolled back and the failure is recorded in a fresh
        one. Only a failure of the database itself (``source_fault`` is False) propagates,
        which stops a ``poll --once`` run and ends the daemon's tick.
        """
        result: FetchResult | None = None
        parse_error: str | None = None
        error_class: str | None = None
        try:
            result = await fetcher.fetch(source.fetch)
            parsed: ParsedFeed | None = None
            signatures: dict[str, cluster.Signed] = {}
            features: dict[str, parseworker.Featurized] = {}
            body_hash = hashlib.sha256(result.body).hexdigest() if result.body is not None else None
            if result.ok and result.body is not None and body_hash != source.body_hash:
                try:
                    parsed, signatures, features = await self._parse(result)
                except ParseError as exc:
                    parse_error, error_class = str(exc), "parse"
            outcome, record = await self._group.submit(
                (source, result, parsed, parse_error, body_hash, signatures, features)
            )
        except Exception as exc:
            if not source_fault(exc):
                raise
            parse_error, error_class = fault_reason(exc), fault_class(exc)
            log.debug(
                "source %r (%s): traceback of %s", source.fetch.name, source.fetch.url, error_class, exc_info=True
            )
            result = result or FetchResult(source.fetch.id, source.fetch.url, self.clock())
            recorded = await self._record_fault(source, result, parse_error)
            if recorded is None:
                metrics.SOURCE_ERRORS.labels(error_class).inc()
                summary.polled += 1
                summary.errors += 1
                return
            outcome, record = recorded
        if outcome in ("error", "retired"):
            metrics.SOURCE_ERRORS.labels(error_class or ("fetch" if not result.ok else "parse")).inc()
        summary.add(outcome, record, source)
        if self.on_progress is not None:
            self.on_progress(summary)
        metrics.POLLS.labels(outcome).inc()
        metrics.FETCH_SECONDS.observe(result.elapsed)
        if record.items_new:
            metrics.ITEMS.labels("new").inc(record.items_new)
        if record.items_updated:
            metrics.ITEMS.labels("updated").inc(record.items_updated)
        self._log(source, result, outcome, record, parse_error)

    async def _record_fault(
        self, source: ClaimedSource, result: FetchResult, reason: str
    ) -> tuple[str, PollRecord] | None:
        """Record an unexpected failure on its source, as a failed poll, in a fresh transaction.

        The transaction it happened in was rolled back, items and all. No body hash is kept, so
        the same bytes are handled again at the next poll (after a fix). None when even this
        fails (short of the database itself): that is logged, and the lease expiring retries.
        """
        try:
            return await self._write(self._commit_with_retry, source, result, None, reason, None, {})
        except Exception as exc:
            if not source_fault(exc):
                raise
            log.error(
                "source %r (%s): %s, and recording it failed too: %s",
                source.fetch.name, source.fetch.url, reason, fault_reason(exc),
            )  # fmt: skip
            return None

    async def _write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the writer threads (FIFO); a cancelled caller's call that has not
        started yet is dropped."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    async def _parse(
        self, result: FetchResult
    ) -> tuple[ParsedFeed, dict[str, cluster.Signed], dict[str, parseworker.Featurized]]:
        assert result.body is not None
        loop = asyncio.get_running_loop()
        semantic = self.config.settings.story_matching == "semantic"
        args = (result.body, result.url, result.content_type, result.fetched_at, semantic)
        if self.parse_pool is None:
            return await asyncio.to_thread(parseworker.parse_and_prepare, *args)
        try:
            return await loop.run_in_executor(self.parse_pool, parseworker.parse_and_prepare, *args)
        except BrokenProcessPool:
            raise ParseError("a parse worker died (out of memory or a crash); retried at the next poll") from None
        # Any other exception is a parser bug: _poll_one's boundary records it on the source.

    async def _write_batch(self, batch: list[tuple[Any, ...]]) -> list[tuple[str, PollRecord] | Exception]:
        return await self._write(self._commit_batch, batch)

    def _commit_batch(self, batch: list[tuple[Any, ...]]) -> list[tuple[str, PollRecord] | Exception]:
        """Commit several fetch results in one transaction, all of them or none.

        When anything in the batch fails (a value the database refuses, a bug, a lost race),
        the whole transaction is rolled back and each result is committed again in one of its
        own, so the failure costs only the result that caused it: that one gets its exception,
        the others their outcome.
        """
        if len(batch) > 1:
            started = time.perf_counter()
            try:
                with self.store.ingest() as tx:
                    done: list[tuple[str, PollRecord] | Exception] = [self._commit(tx, *args) for args in batch]
            except Exception as exc:
                metrics.COMMIT_BATCH_RETRIES.inc()
                log.info("a batch of %d results failed (%s); committing them one by one", len(batch), fault_reason(exc))
            else:
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
                metrics.COMMIT_BATCH_SIZE.observe(len(batch))
                return done
        return [self._commit_alone(args) for args in batch]

    def _commit_alone(self, args: tuple[Any, ...]) -> tuple[str, PollRecord] | Exception:
        started = time.perf_counter()
        try:
            done = self._commit_with_retry(*args)
        except Exception as exc:
            return exc
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_SIZE.observe(1)
        return done

    def _commit_with_retry(self, *args: Any) -> tuple[str, PollRecord]:
        """Commit one fetch result in a transaction of its own, retrying one that lost a race
        with another worker (deadlock, lock timeout)."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                with self.store.ingest() as tx:
                    return self._commit(tx, *args)
            except StorageError as exc:
                if not exc.transient or attempt == COMMIT_ATTEMPTS - 1:
                    raise
                log.info("retrying a commit after a transient database error: %s", exc)
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _commit(
        self,
        tx: IngestTransaction,
        source: ClaimedSource,
        result: FetchResult,
        parsed: ParsedFeed | None,
        parse_error: str | None,
        body_hash: str | None,
        signatures: dict[str, cluster.Signed] | None = None,
        features: dict[str, parseworker.Featurized] | None = None,
    ) -> tuple[str, PollRecord]:
        """Decide and write everything about one poll in ``tx``, which commits it whole or not at all."""
        now = result.fetched_at
        settings = self.config.settings
        interval = timedelta(seconds=source.interval_seconds) if source.interval_seconds else settings.default_interval
        policy = PollPolicy(
            interval=interval,
            explicit=source.interval_seconds is not None,
            min_interval=settings.min_interval,
            max_interval=settings.max_interval,
            max_backoff=settings.max_backoff,
        )
        failed = not result.ok or parse_error is not None
        given_up = retirement(source.failing_since, now, settings.retire_after) if failed else None
        if failed and (not result.retryable or given_up):
            reason = (result.error or parse_error or "permanent failure") if not result.retryable else given_up
            reason = reason or "permanent failure"
            record = PollRecord("retired", None, f"retired: {reason}", source.error_count + 1, retired_reason=reason)
            tx.record_poll(source.fetch.id, _with_error(result, reason), record)
            return "retired", record
        if failed:
            errors = source.error_count + 1
            decision = next_poll(
                policy,
                PollOutcome(ok=False, status=result.status, error_count=errors, retry_after=result.retry_after),
                now,
            )
            record = PollRecord("error", decision.at, decision.reason, errors)
            tx.record_poll(source.fetch.id, _with_error(result, result.error or parse_error or "failed"), record)
            return "error", self._respect_host(tx, source, result, record, now)
        new = updated = 0
        items_per_day = None
        if parsed is not None:
            gone = tx.deleted_keys(source.fetch.id, [i.key for i in parsed.items])
            items = tuple(i for i in parsed.items if i.key not in gone)
            stored = tx.stored_items(source.fetch.id, [i.key for i in items])
            fresh = [i.canonical_url for i in items if i.key not in stored and i.canonical_url]
            plan = self.stories.match(
                tx,
                decide_ingest(items, stored, tx.stories_by_url(fresh)),
                now,
                self.config.settings.story_matching,
                signatures or {},
                features or {},
            )
            new = tx.insert_items(source.fetch.id, plan.inserts, now, self.authority)
            updated = tx.update_items(plan.updates, now, source.fetch.id)
            items_per_day = tx.items_per_day(source.fetch.id, now)
        outcome = (
            "not_modified" if result.not_modified else
            "unchanged" if parsed is None else
            "new" if new else "updated" if updated else "unchanged"
        )  # fmt: skip
        decision = next_poll(
            policy,
            PollOutcome(
                ok=True,
                status=result.status,
                cache_control=result.cache_control,
                expires=result.expires,
                ttl_minutes=parsed.ttl_minutes if parsed else None,
                update_period_minutes=parsed.update_period_minutes if parsed else None,
                # Not re-measured when the body did not change: keep the last rate.
                items_per_day=items_per_day if parsed is not None else source.items_per_day,
            ),
            now,
        )
        record = PollRecord(
            outcome,
            decision.at,
            decision.reason,
            0,
            body_hash=body_hash,
            items_new=new,
            items_updated=updated,
            feed_title=parsed.title if parsed else None,
            feed_link=parsed.link if parsed else None,
            feed_id=parsed.feed_id if parsed else None,
            items_per_day=items_per_day,
            parsed=parsed is not None,
            warning=parsed.warning if parsed else None,
        )
        tx.record_poll(source.fetch.id, result, record)
        return outcome, self._respect_host(tx, source, result, record, now)

    def _respect_host(
        self, tx: IngestTransaction, source: ClaimedSource, result: FetchResult, record: PollRecord, now: datetime
    ) -> PollRecord:
        """After a 429/503, or any poll of a host that is holding us off: apply schedule.host_slowdown.

        Runs inside the poll's transaction, after its own state is written, so whichever of a
        host's polls commits last, the host's sources end up waiting together.
        """
        host = (urlsplit(source.fetch.url).hostname or "").lower()
        if result.status not in THROTTLED_STATUSES and self._host_holds.get(host, now) <= now:
            return record
        moves = host_slowdown([HostSource(*row) for row in tx.sources_on_host(host)], now)
        if not moves:
            return record
        tx.postpone({source_id: (decision.at, decision.reason) for source_id, decision in moves.items()})
        self._host_holds[host] = max(decision.at for decision in moves.values())
        if result.status in THROTTLED_STATUSES:
            log.warning("host %s is throttling us: %d more of its sources wait", host, len(moves))
        mine: NextPoll | None = moves.get(source.fetch.id)
        return replace(record, next_poll_at=mine.at, next_poll_reason=mine.reason) if mine else record

    def _log(
        self, source: ClaimedSource, result: FetchResult, outcome: str, record: PollRecord, parse_error: str | None
    ) -> None:
        name, url = source.fetch.name, source.fetch.url
        context = {"source": name, "url": url, "outcome": outcome, "status": result.status}
        if result.permanent_url and result.ok:
            log.warning(
                "source %r moved permanently: %s -> %s (stored URL updated)", name, url, result.permanent_url,
                extra=context,
            )  # fmt: skip
        if outcome == "retired":
            log.error("source %r (%s) retired: %s", name, url, record.retired_reason, extra=context)
        elif outcome == "error":
            log.warning(
                "source %r (%s): %s; next try %s (%s)",
                name, url, parse_error or result.error, f"{record.next_poll_at:%Y-%m-%d %H:%M:%S}Z",
                record.next_poll_reason, extra=context,
            )  # fmt: skip
        else:
            log.info(
                "source %r: %s, %d new, %d updated; next poll %s (%s)%s",
                name, outcome, record.items_new, record.items_updated,
                f"{record.next_poll_at:%H:%M:%S}Z", record.next_poll_reason,
                f"; read leniently: {record.warning}" if record.warning else "", extra=context,
            )  # fmt: skip


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


def _with_error(result: FetchResult, message: str) -> FetchResult:
    return replace(result, error=message)


def _authority(public_url: str) -> str:
    from urllib.parse import urlsplit

    return (urlsplit(public_url).hostname or "localhost").lower()


async def poll_once(
    pipeline: Pipeline, *, all_sources: bool = False, publisher: Publisher | None = None
) -> PollSummary:
    """``aggregator poll --once``: poll what is due (or everything), then publish (with
    ``publisher``, by default one of the pipeline's config, store and clock)."""
    publisher = publisher or Publisher(pipeline.config, pipeline.store, clock=pipeline.clock)
    start = pipeline.clock()
    await asyncio.to_thread(reclaim_dead_leases, pipeline.store)
    if all_sources:
        await asyncio.to_thread(pipeline.store.make_all_due, start)
    async with Fetcher(fetch_options(pipeline.config), clock=pipeline.clock) as fetcher:
        summary = await pipeline.poll_due(fetcher, until=start)
    try:
        # Re-render only what changed: a poll that got nothing but 304s renders nothing.
        changed = await asyncio.to_thread(publisher.publish, publisher.outputs_to_publish(summary.changed_sources))
    except PublishError:
        raise
    except AggregatorError as exc:
        raise PublishError(str(exc)) from exc
    await publisher.notify_hub(changed)
    return summary
