"""Wiring: one poll of one source through every stage, then ``publisher`` for the outputs.

``Pipeline.poll_due`` claims due sources, fetches them concurrently, parses changed
bodies in a process pool (feedparser is where the CPU goes), and commits the results
waiting for the writer together (``groupcommit``), each whole or not at all.
Each result is committed in three steps: look up what the store holds for it (and let
``StoryMatcher`` join its new items to stored stories), decide with the pure
``poll.decide_poll``, apply the ``PollPlan``. ``Publisher.publish`` renders the outputs
whose sources changed. The I/O stages never call each other.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, TypeVar

from aggregator import cluster, metrics, parseworker
from aggregator.config import Config, Settings
from aggregator.errors import AggregatorError, ParseError, PublishError, StorageError
from aggregator.fetch import Fetcher, FetchOptions
from aggregator.groupcommit import GroupCommit
from aggregator.leases import reclaim_dead_leases, worker_id
from aggregator.poll import (
    RATE_WINDOW,
    Polled,
    PollLookups,
    PollPlan,
    decide_poll,
    deleted_item_keys,
    fault_class,
    fault_reason,
    fresh_urls,
    ingest_plan,
    kept_items,
    lookup_keys,
    source_fault,
    stored_by_item_key,
)
from aggregator.publisher import Publisher
from aggregator.records import FetchResult, InsertedItem, ParsedFeed, SourceToFetch
from aggregator.schedule import HostSource, ScheduleSettings, host_needs_check, host_of
from aggregator.store.items import story_authority
from aggregator.store.repository import ClaimedSource, IngestTransaction, PollRecord, Store
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
        commit_slots: int | None = None,
    ) -> None:
        """``commit_slots``: how many transactions of this worker may commit at once; by
        default one on SQLite (it has one writer anyway) and ``COMMIT_SLOTS`` on PostgreSQL."""
        self.config = config
        self.store = store
        self.parse_pool = parse_pool
        self.owner = owner or worker_id()
        self.clock = clock
        self.on_progress = on_progress
        # Claims and commits run in turn on threads of their own, off the event loop (a
        # commit there would stall every fetch). PostgreSQL takes a few commits at once (they
        # are short, and a lost race is retried), so one slow fsync does not stall the rest.
        # A queue in front of always the same threads rather than asyncio.to_thread behind a
        # semaphore: handing each commit to a fresh pool slot cost the main process more CPU.
        slots = commit_slots or (1 if store.engine.dialect.name == "sqlite" else COMMIT_SLOTS)
        self._writer = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="aggregator-writer")
        weakref.finalize(self, self._writer.shutdown, wait=False)
        # Fetch results waiting for those threads go together, one transaction per batch.
        self._group: GroupCommit[Polled, PollPlan] = GroupCommit(self._write_batch, slots=slots)
        self.authority = story_authority(config.settings.public_url)
        self._schedule = schedule_settings(config.settings)
        # Hosts that are throttling us, and until when: their other sources wait too. Only
        # a shortcut for this process; the postponed times themselves are in the database.
        self._host_holds: dict[str, datetime] = {}
        self.stories = StoryMatcher()
        # Per source, the items its last committed parse found, as stored now: the next parse
        # of a changed body signs and featurizes only the others (``parseworker.marks_of``).
        # Eight bytes an item, a feed's worth per source; lost with the process, which then
        # computes each source's items once again.
        self._stored_marks: dict[int, parseworker.Marks] = {}

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config. Everything else is read from ``self.config`` where it is
        used; the story-id authority and the poll decision's schedule settings are derived
        once, so they are derived again here."""
        self.config = config
        self.authority = story_authority(config.settings.public_url)
        self._schedule = schedule_settings(config.settings)

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
        running: dict[asyncio.Task[None], SourceToFetch] = {}  # poll -> its source
        exhausted = False
        try:
            while True:
                if not exhausted and len(running) <= batch_size // 2:
                    # On the writer (SQLite: queued behind commits, not waiting in its busy handler).
                    wanted = batch_size - len(running)
                    claimed = await self._write(self.store.claim_due, self.owner, cutoff, wanted, lease)
                    exhausted = not claimed
                    for source in claimed:
                        running[asyncio.create_task(self._poll_one(fetcher, source, summary))] = source.fetch
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
            unfinished = list(running.values())
            try:
                await asyncio.shield(asyncio.to_thread(self.store.release, [s.id for s in unfinished], self.owner))
            except AggregatorError as error:
                # Not fatal: the leases expire on their own. Said, so that a source that sits
                # unpolled until then is explained (the stop's own cause is raised below).
                log.warning(
                    "could not hand back the leases of %d unfinished poll(s) (%s); they expire within %s: %s",
                    len(unfinished), ", ".join(sorted(repr(s.name) for s in unfinished)), lease, error,
                )  # fmt: skip
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
        error_class: str | None = None
        try:
            result = await fetcher.fetch(source.fetch)
            body_hash = hashlib.sha256(result.body).hexdigest() if result.body is not None else None
            polled = Polled(source, result, body_hash=body_hash)
            if result.ok and result.body is not None and body_hash != source.body_hash:
                try:
                    known = self._stored_marks.get(source.fetch.id, b"")
                    parsed, signatures, features = await self._parse(result, known)
                    polled = replace(polled, parsed=parsed, signatures=signatures, features=features)
                except ParseError as exc:
                    polled, error_class = replace(polled, parse_error=str(exc)), "parse"
            plan = await self._group.submit(polled)
        except Exception as exc:
            if not source_fault(exc):
                raise
            error_class = fault_class(exc)
            log.debug(
                "source %r (%s): traceback of %s", source.fetch.name, source.fetch.url, error_class, exc_info=True
            )
            result = result or FetchResult(source.fetch.id, source.fetch.url, self.clock())
            recorded = await self._record_fault(Polled(source, result, parse_error=fault_reason(exc)))
            if recorded is None:
                metrics.SOURCE_ERRORS.labels(error_class).inc()
                summary.polled += 1
                summary.errors += 1
                return
            plan = recorded
        self._count(plan, source, summary, error_class)
        for line in plan.log:
            log.log(line.level, line.message, *line.args, extra=line.extra)

    def _count(self, plan: PollPlan, source: ClaimedSource, summary: PollSummary, error_class: str | None) -> None:
        outcome, record, result = plan.outcome, plan.record, plan.result
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

    async def _record_fault(self, polled: Polled) -> PollPlan | None:
        """Record an unexpected failure on its source, as a failed poll, in a fresh transaction.

        The transaction it happened in was rolled back, items and all. No body hash is kept, so
        the same bytes are handled again at the next poll (after a fix). None when even this
        fails (short of the database itself): that is logged, and the lease expiring retries.
        """
        try:
            return await self._write(self.commit, polled)
        except Exception as exc:
            if not source_fault(exc):
                raise
            source = polled.source
            log.error(
                "source %r (%s): %s, and recording it failed too: %s",
                source.fetch.name, source.fetch.url, polled.parse_error, fault_reason(exc),
            )  # fmt: skip
            return None

    async def _write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the writer threads (FIFO); a cancelled caller's call that has not
        started yet is dropped."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    async def _parse(
        self, result: FetchResult, known: parseworker.Marks
    ) -> tuple[ParsedFeed, dict[str, cluster.Signed], dict[str, parseworker.Featurized]]:
        assert result.body is not None
        loop = asyncio.get_running_loop()
        semantic = self.config.settings.story_matching == "semantic"
        args = (result.body, result.url, result.content_type, result.fetched_at, semantic, known)
        if self.parse_pool is None:
            return await asyncio.to_thread(parseworker.parse_and_prepare, *args)
        try:
            return await loop.run_in_executor(self.parse_pool, parseworker.parse_and_prepare, *args)
        except BrokenProcessPool:
            raise ParseError("a parse worker died (out of memory or a crash); retried at the next poll") from None
        # Any other exception is a parser bug: _poll_one's boundary records it on the source.

    # --- committing: look up, decide, apply ----------------------------------------------
    async def _write_batch(self, batch: list[Polled]) -> list[PollPlan | Exception]:
        return await self._write(self._commit_batch, batch)

    def _commit_batch(self, batch: list[Polled]) -> list[PollPlan | Exception]:
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
                    committed = [self._commit(tx, polled) for polled in batch]
            except Exception as exc:
                metrics.COMMIT_BATCH_RETRIES.inc()
                log.info("a batch of %d results failed (%s); committing them one by one", len(batch), fault_reason(exc))
            else:
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
                metrics.COMMIT_BATCH_SIZE.observe(len(batch))
                for polled, (plan, inserted) in zip(batch, committed, strict=True):
                    self._committed(polled, plan, inserted)
                return [plan for plan, _ in committed]
        return [self._commit_alone(polled) for polled in batch]

    def _commit_alone(self, polled: Polled) -> PollPlan | Exception:
        started = time.perf_counter()
        try:
            done = self.commit(polled)
        except Exception as exc:
            return exc
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_SIZE.observe(1)
        return done

    def commit(self, polled: Polled) -> PollPlan:
        """Commit one fetch result now, in a transaction of its own, and return what it changed.

        What ``poll_due`` does for each source after fetching and parsing it, minus the
        batching with other results: for callers that already hold the results (benchmarks,
        tools filling a database). A transaction that lost a race with another worker
        (deadlock, lock timeout) is retried; any other failure is raised.
        """
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                with self.store.ingest() as tx:
                    plan, inserted = self._commit(tx, polled)
                self._committed(polled, plan, inserted)
                return plan
            except StorageError as exc:
                if not exc.transient or attempt == COMMIT_ATTEMPTS - 1:
                    raise
                log.info("retrying a commit after a transient database error: %s", exc)
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _committed(self, polled: Polled, plan: PollPlan, inserted: dict[str, InsertedItem]) -> None:
        """What a committed poll leaves for later ones: its new items' features for the story
        matcher, and the marks of the items it parsed, now stored as they are."""
        self.stories.stored(plan.inserts, inserted)
        if polled.parsed is not None and not polled.failed:
            self._stored_marks[polled.source.fetch.id] = parseworker.marks_of(polled.parsed.items)

    def _commit(self, tx: IngestTransaction, polled: Polled) -> tuple[PollPlan, dict[str, InsertedItem]]:
        """Look up, decide, apply: one poll in ``tx``, which commits it whole or not at all.
        Also where its new items were stored, for the story matcher once ``tx`` committed."""
        now = polled.result.fetched_at
        plan = decide_poll(polled, self._look_up(tx, polled, now), self._schedule, now)
        return plan, self._apply(tx, polled, plan)

    def _apply(self, tx: IngestTransaction, polled: Polled, plan: PollPlan) -> dict[str, InsertedItem]:
        source_id, now = polled.source.fetch.id, polled.result.fetched_at
        inserted = (
            tx.insert_items(source_id, plan.inserts, now, self.authority, ages_unknown=plan.ages_unknown)
            if plan.inserts
            else {}
        )
        if plan.updates:
            tx.update_items(plan.updates, now, source_id)
        if plan.merges:
            tx.merge_stories(plan.merges)
        if plan.rekeys:
            tx.rekey_items(plan.rekeys)
        tx.record_poll(source_id, plan.result, plan.record)
        if plan.postpone:
            tx.postpone({other: (decision.at, decision.reason) for other, decision in plan.postpone.items()})
        if plan.host_held_until is not None:
            self._host_holds[host_of(polled.source.fetch.url)] = plan.host_held_until
        return inserted

    def _look_up(self, tx: IngestTransaction, polled: Polled, now: datetime) -> PollLookups:
        """Read what ``decide_poll`` needs: the host's sources only when it may be throttling
        us, the stored items and story matches only when a document was parsed."""
        source, parsed = polled.source, polled.parsed
        host = host_of(source.fetch.url)
        host_sources = None
        if host_needs_check(polled.result.status, self._host_holds.get(host), now):
            host_sources = tuple(HostSource(*row) for row in tx.sources_on_host(host))
        if parsed is None or polled.failed:
            return PollLookups(host_sources=host_sources)
        gone = deleted_item_keys(parsed.items, tx.deleted_keys(source.fetch.id, lookup_keys(parsed.items)))
        items = kept_items(parsed, gone)
        stored = stored_by_item_key(items, tx.stored_items(source.fetch.id, lookup_keys(items)))
        lookups = PollLookups(
            deleted_keys=gone,
            stored=stored,
            stories_by_url=tx.stories_by_url(fresh_urls(items, stored)),
            recent_items=tx.items_since(source.fetch.id, now - RATE_WINDOW),
            host_sources=host_sources,
        )
        mode = self.config.settings.story_matching
        matched = self.stories.match(
            tx, ingest_plan(parsed, lookups), now, mode, polled.signatures, polled.features, source.fetch.id
        )
        return replace(lookups, matched=matched)


def schedule_settings(settings: Settings) -> ScheduleSettings:
    return ScheduleSettings(
        default_interval=settings.default_interval,
        min_interval=settings.min_interval,
        max_interval=settings.max_interval,
        max_backoff=settings.max_backoff,
        retire_after=settings.retire_after,
    )


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
