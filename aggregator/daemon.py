"""The long-running process: APScheduler as the clock, uvicorn for HTTP, signals, reloads.

APScheduler holds no jobs of its own state (DESIGN.md, decision 1): a short interval
job claims whatever the database says is due, another watches ``feeds.yaml``. So a
restart resumes every source's schedule exactly where the database left it, and a
second ``aggregator worker`` needs no coordination beyond the database.

The tick only starts a poll cycle (when none is running) and pings systemd's watchdog;
the cycle runs as a task of its own. A tick that polled itself was "skipped: maximum
number of running instances reached" (a warning every tick) all through a long first
poll, and a watchdog pinged from it would have killed the daemon during one.

Signals: SIGTERM/SIGINT stop cleanly — in-flight polls are cancelled, their leases
handed back, nothing half-written (each poll commits in one transaction). SIGHUP, or
an edit of the config file, reloads the config: every setting takes effect at once,
except those named in a log line as needing a restart (``restart_needed``); a broken
edit is logged with file:line and the running config stays.

Under systemd (``Type=notify``) the daemon reports READY=1 once the schema is migrated,
the sources are synced and it serves, WATCHDOG=1 from every tick while ``assess`` finds
it healthy (the same judgement ``/healthz`` reports), and STOPPING=1 when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from aggregator import metrics, sdnotify
from aggregator.config import LoadedConfig, Settings, load_config
from aggregator.errors import AggregatorError, ConfigError, PublishError
from aggregator.fetch import Fetcher, FetchOptions
from aggregator.leases import reclaim_dead_leases
from aggregator.parseworker import make_parse_pool
from aggregator.pipeline import (
    LEASE_MARGIN,
    Pipeline,
    PollSummary,
    fetch_options,
)
from aggregator.publisher import Publisher, prune
from aggregator.serve import create_app
from aggregator.store.repository import Store, SyncReport

log = logging.getLogger("aggregator")
CONFIG_WATCH_SECONDS = 2.0
ARCHIVE_CHECK_SECONDS = 3600  # a finished week waits at most this long for its archive
HOUSEKEEPING_DELAY = timedelta(minutes=10)  # let the first poll cycle finish before pruning
PUBLISH_DURING_CYCLE_SECONDS = 10.0
"""How long a poll cycle runs before what it stored so far is published, and how long after
each such publish the next: a cycle ends only when its slowest feed answers or times out
(``total_timeout``), and every other source's new items waited for it. At least four times the
last publish's own duration, so that a first poll of thousands of sources spends at most a
fifth of its time rendering big outputs again."""
TICK_GRACE_SECONDS = 60.0  # a tick this late means the scheduler (or the event loop) is stuck


def assess(now: float, last_tick: float | None, polling_since: float | None, settings: Settings) -> dict[str, object]:
    """Is this process doing its job? The one judgement behind /healthz and the watchdog.

    ``last_tick``: when the scheduler last ticked (None: not yet). ``polling_since``: None
    when no poll cycle runs, else when it started or last finished a poll. Unhealthy when
    the scheduler stopped ticking, or a cycle made no progress for longer than a lease (no
    single poll may take that long: its fetch is bounded by total_timeout). A database that
    is down is not this judgement's business: restarting the process would not help, and
    /healthz reports it beside this.
    """
    tick_age = None if last_tick is None else now - last_tick
    stalled = tick_age is None or tick_age > max(TICK_GRACE_SECONDS, settings.tick_seconds * 3)
    lease = settings.total_timeout * 2 + LEASE_MARGIN.total_seconds()
    stuck = polling_since is not None and now - polling_since > lease
    return {
        "status": "failing" if stalled or stuck else "ok",
        "scheduler": ("starting" if tick_age is None else "stalled") if stalled else "ok",
        "last_tick_seconds_ago": None if tick_age is None else round(tick_age, 1),
        "polling": "stuck" if stuck else "idle" if polling_since is None else "running",
    }


# Settings read once at start: a change is logged as needing a restart. Every other setting
# is applied by a reload (see Daemon.reload); tests/test_reload.py checks the split covers
# every field, so a new setting has to be placed on one side.
RESTART_SETTINGS = {
    "database": "the database (data_dir, database or $AGGREGATOR_DATABASE_URL)",
    "listen": "the HTTP listener",
    "status_page": "the HTTP routes",
    "parse_workers": "the parse pool",
}


def restart_needed(old: Settings, new: Settings, *, poll: bool = True, http: bool = True) -> list[str]:
    """The settings that changed but take effect only after a restart, for this process's role."""
    changed = []
    if old.database_url != new.database_url:
        changed.append("database")
    if http and old.listen != new.listen:
        changed.append("listen")
    if http and old.status_page != new.status_page:
        changed.append("status_page")
    if poll and old.parse_workers != new.parse_workers:
        changed.append("parse_workers")
    return changed


class _QuietServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: the daemon owns SIGTERM for both halves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def serve_or_fail(self, listen: str) -> None:
        """``serve``, with a failed start as an ``AggregatorError``: uvicorn logs why (the port is
        in use, the address is not this host's) and then calls ``sys.exit``, which would escape
        the event loop with a traceback instead of reaching the command's one-line error."""
        try:
            await self.serve()
        except SystemExit:
            raise AggregatorError(f"cannot serve HTTP on {listen} (the reason is logged above)") from None


class Daemon:
    def __init__(self, loaded: LoadedConfig, store: Store, *, poll: bool = True, http: bool = True) -> None:
        self.loaded = loaded
        self.store = store
        self.poll = poll
        self.http = http
        self.pipeline: Pipeline | None = None
        self.publisher: Publisher | None = None
        self._stop = asyncio.Event()
        self._server: _QuietServer | None = None
        self._config_mtime = _mtime(loaded.path)
        # What the restart-only settings (RESTART_SETTINGS) really are in this process: a
        # reload compares against these, so a pending change is named until the restart.
        self._started_with = loaded.config.settings
        self._scheduler: AsyncIOScheduler | None = None
        self._last_tick: float | None = None
        self._cycle: asyncio.Task[None] | None = None
        self._polling_since: float | None = None  # a cycle's start or its latest finished poll
        self._release_own_leases = False
        self._ready = False  # READY=1 sent: watchdog pings before it would confuse systemd's order
        self._fetcher: Fetcher | None = None
        self._cycle_fetcher: Fetcher | None = None  # the one the running cycle fetches with
        self._fetch_options: FetchOptions | None = None
        self._publishing = asyncio.Lock()  # one publish of this cycle's changes at a time
        self._next_publish = 0.0  # monotonic time from which the running cycle publishes what it stored
        self._publish_during_cycle: asyncio.Task[None] | None = None
        self._reload_failing = False  # the last reload could not reach the database (logged once)
        self._failed_cycles: tuple[int, str] = (0, "")  # cycles failed in a row, and the last one's error
        self._publish_failure = ""  # the last publish's error, while publishing fails
        self._background: set[asyncio.Task[None]] = set()

    # --- health ----------------------------------------------------------------------
    def health(self) -> dict[str, object]:
        """``assess``, which the watchdog acts on, and what it leaves out because a restart
        would not mend it: poll cycles that keep failing (an unreachable database, a schema an
        older process does not know) and outputs that cannot be published. A monitor reading
        /healthz should alert on those; systemd should not restart for them."""
        report = assess(time.monotonic(), self._last_tick, self._polling_since, self.loaded.config.settings)
        if not self.poll:
            report["polling"] = "not in this process"
        failed, error = self._failed_cycles
        report["cycles"] = f"the last {failed} failed: {error}" if failed else "ok"
        report["publishing"] = f"failing: {self._publish_failure}" if self._publish_failure else "ok"
        return report

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        settings = self.loaded.config.settings
        pool = make_parse_pool(settings.parse_workers) if self.poll else None
        # misfire_grace_time=None: a tick delayed by a busy event loop runs late (coalesced)
        # instead of being dropped with a warning.
        scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True})
        self._scheduler = scheduler
        server_task: asyncio.Task[None] | None = None
        try:
            if self.poll:
                await self._start_polling(scheduler, pool)
            # Also without polling (serve): the tick is what pings the watchdog, and the front
            # page and /opml list the outputs of the config as it is now.
            scheduler.add_job(
                self._tick, "interval", seconds=settings.tick_seconds, max_instances=1,
                next_run_time=datetime.now(UTC), id="poll",
            )  # fmt: skip
            scheduler.add_job(
                self._until_stopped(self._watch_config), "interval", seconds=CONFIG_WATCH_SECONDS, id="config"
            )
            scheduler.start()
            if self.http:
                server_task = await self._start_serving(settings)
            if server_task is None or not server_task.done():
                sdnotify.ready()
                self._ready = True
            await self._wait_for_stop(server_task, settings)
        finally:
            await self._shut_down(scheduler, server_task, pool)

    async def _start_polling(self, scheduler: AsyncIOScheduler, pool: Executor | None) -> None:
        """Sync the sources, publish what is stored, and schedule the housekeeping jobs."""
        report = await asyncio.to_thread(self.store.sync_sources, self.loaded.config.source_specs(), datetime.now(UTC))
        log.info(
            "sources: %d added, %d changed, %d removed, %d renamed",
            len(report.added),
            len(report.changed),
            len(report.removed),
            len(report.renamed),
        )
        await asyncio.to_thread(reclaim_dead_leases, self.store)
        self.pipeline = Pipeline(self.loaded.config, self.store, parse_pool=pool, on_progress=self._progressed)
        self.publisher = Publisher(self.loaded.config, self.store)
        self._fetch_options = fetch_options(self.loaded.config)
        self._fetcher = Fetcher(self._fetch_options)
        try:
            await asyncio.to_thread(self.publisher.publish, None)
        except PublishError as exc:  # the outputs that failed stay stale: each poll cycle tries again
            self._publish_failure = str(exc)
            log.error("publishing at start failed: %s", exc)
        scheduler.add_job(self._until_stopped(self._archive), "interval", seconds=ARCHIVE_CHECK_SECONDS, id="archive")
        scheduler.add_job(
            self._until_stopped(self._housekeeping), "interval", hours=24, id="retention",
            next_run_time=datetime.now(UTC) + HOUSEKEEPING_DELAY,
        )  # fmt: skip

    async def _start_serving(self, settings: Settings) -> asyncio.Task[None]:
        """Start uvicorn and wait until it listens (or fails to: the task is then done)."""
        app = create_app(
            self.store, health=self.health, status_page=settings.status_page, config=lambda: self.loaded.config
        )
        # httptools, not h11: the C parser answers a conditional GET (most of the traffic) several
        # times cheaper; bench/serve.py measures both against nginx.
        config = uvicorn.Config(
            app, host=settings.listen_host, port=settings.listen_port, log_level="warning",
            access_log=False, lifespan="off", http="httptools",
        )  # fmt: skip
        self._server = _QuietServer(config)
        server_task = asyncio.get_running_loop().create_task(self._server.serve_or_fail(settings.listen))
        while not self._server.started and not server_task.done():
            await asyncio.sleep(0.02)
        if self._server.started:
            log.info("serving on http://%s/feeds/", settings.listen)
        return server_task

    async def _wait_for_stop(self, server_task: asyncio.Task[None] | None, settings: Settings) -> None:
        """Until a signal asks to stop, or the HTTP server dies (e.g. port in use): surface that."""
        stopper = asyncio.get_running_loop().create_task(self._stop.wait())
        waiting: set[asyncio.Future[object]] = {stopper}  # type: ignore[arg-type]
        if server_task is not None:
            waiting.add(server_task)  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if server_task in done and server_task is not None and not self._stop.is_set():
            server_task.result()  # the server died (e.g. port in use): surface it
            raise AggregatorError(f"HTTP server on {settings.listen} stopped unexpectedly")
        stopper.cancel()

    async def _shut_down(
        self, scheduler: AsyncIOScheduler, server_task: asyncio.Task[None] | None, pool: Executor | None
    ) -> None:
        sdnotify.stopping()
        if scheduler.running:
            # The asyncio scheduler shuts down at the loop's next turn, cancelling the jobs its
            # timer submitted before then unstarted, and logs each as an error with a traceback
            # (a tick falling due just as the signal came did that). Paused first, it submits
            # nothing more; a job submitted already starts before the shutdown (a tick then
            # returns at once), and one still running ends quietly (``_until_stopped``).
            scheduler.pause()
            scheduler.shutdown(wait=False)
        if self._cycle is not None and not self._cycle.done():
            self._cycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cycle
        if self._server is not None:
            self._server.should_exit = True
        if server_task is not None:
            # A server that failed to start has said why already (``_wait_for_stop`` raised it).
            with contextlib.suppress(asyncio.CancelledError, AggregatorError):
                await server_task
        if self._fetcher is not None:
            await self._fetcher.aclose()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    def _until_stopped(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        """``job`` as a scheduler job that a stop ends quietly: the scheduler's shutdown cancels
        a job still running (a retention pass, a publish), which is how a stop ends it, not an
        error; APScheduler would log it as one, with a traceback."""

        @functools.wraps(job)
        async def run() -> None:
            try:
                await job()
            except asyncio.CancelledError:
                if not self._stop.is_set():
                    raise

        return run

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("received %s, stopping", sig.name)
        self._stop.set()

    async def _tick(self) -> None:
        """Start a poll cycle unless one is running, and tell the watchdog we are alive.

        Returns at once: a cycle can take many ticks (a first poll of thousands of sources),
        and the tick must still run meanwhile, or the watchdog would fire.
        """
        if self._stop.is_set():
            return
        self._last_tick = time.monotonic()
        metrics.TICKS.inc()
        if self.pipeline is not None and (self._cycle is None or self._cycle.done()):
            self._cycle = asyncio.get_running_loop().create_task(self._poll_cycle())
        if self._ready and self.health()["status"] == "ok":
            sdnotify.watchdog()

    def _progressed(self, summary: PollSummary) -> None:
        self._polling_since = time.monotonic()
        pending = self._publish_during_cycle is not None and not self._publish_during_cycle.done()
        if (summary.new_items or summary.updated_items) and not pending:
            task = asyncio.get_running_loop().create_task(self._publish_so_far(summary))
            self._publish_during_cycle = task

    async def _publish_so_far(self, summary: PollSummary) -> None:
        """Once the cycle has run long enough (``PUBLISH_DURING_CYCLE_SECONDS``), publish what it
        stored by then: ``summary`` is the cycle's, counted on as it goes."""
        await asyncio.sleep(max(0.0, self._next_publish - time.monotonic()))
        try:
            await self._publish_changes(dict(summary.changed_sources))
        except AggregatorError as exc:  # the cycle's own publish, at its end, tries again
            log.error("publishing during the poll cycle failed: %s", exc)

    async def _settle_publish_during_cycle(self) -> None:
        """At a cycle's end: drop a publish of what it stored that is still waiting for its
        time (the cycle's own publish follows), and let one that has begun finish, so that two
        never render at once."""
        task, self._publish_during_cycle = self._publish_during_cycle, None
        if task is None:
            return
        if not self._publishing.locked() and not task.done():  # still waiting for its time
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _publish_changes(self, changed_sources: dict[str, tuple[str, ...]]) -> None:
        """Publish the outputs these sources feed (and ping the hub for those that changed);
        during a cycle, what it stored so far (``PUBLISH_DURING_CYCLE_SECONDS``)."""
        publisher = self.publisher
        assert publisher is not None
        async with self._publishing:
            started = time.monotonic()
            try:
                # And the outputs an earlier publish left behind (a failed or interrupted one),
                # so a failed output is tried again at every publish, and this says how it went.
                changed = await asyncio.to_thread(publisher.publish, publisher.outputs_to_publish(changed_sources))
                self._publish_failure = ""
            except PublishError as exc:
                self._publish_failure = str(exc)
                raise
            finally:
                took = time.monotonic() - started
                self._next_publish = time.monotonic() + max(PUBLISH_DURING_CYCLE_SECONDS, 4 * took)
        if changed and self.loaded.config.settings.websub_hub:
            # Beside the poll loop, never in its way: a slow hub only delays its own pings.
            task = asyncio.get_running_loop().create_task(publisher.notify_hub(changed))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _poll_cycle(self) -> None:
        assert self.pipeline is not None and self.publisher is not None and self._fetcher is not None
        fetcher = self._cycle_fetcher = self._fetcher  # a reload may replace it; this cycle keeps its own
        self._polling_since = time.monotonic()
        self._next_publish = self._polling_since + PUBLISH_DURING_CYCLE_SECONDS
        try:
            if self._release_own_leases:
                # The last cycle failed (the database went away mid-cycle) and could not
                # hand its leases back; no cycle of ours runs now, so they are all stale.
                await asyncio.to_thread(self.store.release_owner, self.pipeline.owner)
                self._release_own_leases = False
            summary = await self.pipeline.poll_due(fetcher)
            await self._settle_publish_during_cycle()
            # Also with nothing new: what an earlier publish left out (it failed, or the process
            # was killed), and files behind the stored feeds (``Publisher.restore_files``).
            try:
                await self._publish_changes(summary.changed_sources)
            except PublishError as exc:  # what it polled is stored: a cycle that did its part
                log.error("publishing failed: %s", exc)
            self._failed_cycles = (0, "")
        except AggregatorError as exc:
            self._release_own_leases = True
            self._failed_cycles = (self._failed_cycles[0] + 1, str(exc))
            log.error("poll cycle failed: %s", exc)
        except Exception as exc:  # a bug: one cycle lost, the next tick starts another
            self._release_own_leases = True
            self._failed_cycles = (self._failed_cycles[0] + 1, f"unexpected {type(exc).__name__}: {exc}")
            log.exception("poll cycle failed unexpectedly")
        finally:
            await self._settle_publish_during_cycle()
            self._polling_since = self._cycle_fetcher = None
            if fetcher is not self._fetcher:
                await fetcher.aclose()

    async def _archive(self) -> None:
        """Archive weeks that ended, also for outputs that had no new item since."""
        if self.publisher is None:
            return
        publisher = self.publisher
        try:
            due = await asyncio.to_thread(publisher.archives_due, publisher.clock())
            if due:
                await asyncio.to_thread(publisher.publish, due)
        except AggregatorError as exc:
            log.error("archiving failed: %s", exc)

    async def _housekeeping(self) -> None:
        if self.publisher is None:
            return
        try:
            await asyncio.to_thread(prune, self.publisher, self._stop.is_set)
        except AggregatorError as exc:
            log.error("retention failed: %s", exc)

    async def _watch_config(self) -> None:
        mtime = _mtime(self.loaded.path)
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            await self.reload("config file changed")

    async def reload(self, why: str) -> bool:
        """Apply the config file as it is now; False when it is not applied. A broken edit is
        logged and the running configuration stays until the file changes again. A database
        that cannot take the sources is logged once, and the reload is tried again at each
        watch (``CONFIG_WATCH_SECONDS``) until it can: an edit made while it was away is not lost."""
        loaded = await self._edited_config()
        if loaded is None:
            return False
        try:
            # Only a polling process owns the sources table: a server beside the workers may
            # be given a config without sources (it reads only what they publish).
            report = SyncReport()
            if self.poll:
                report = await asyncio.to_thread(
                    self.store.sync_sources, loaded.config.source_specs(), datetime.now(UTC)
                )
        except AggregatorError as exc:
            self._config_mtime = None  # the watch tries again
            if not self._reload_failing:
                log.error("config not reloaded yet (%s): %s; tried again until the database takes it", why, exc)
            self._reload_failing = True
            return False
        self._reload_failing = False
        old, new = self.loaded.config.settings, loaded.config.settings
        self.loaded = loaded
        for name in restart_needed(self._started_with, new, poll=self.poll, http=self.http):
            log.warning("%s changed: takes effect after restart (%s)", name, RESTART_SETTINGS[name])
        if self._scheduler is not None and self._scheduler.running and new.tick_seconds != old.tick_seconds:
            self._scheduler.reschedule_job("poll", trigger="interval", seconds=new.tick_seconds)
        await self._refetch_with(loaded)
        if self.publisher is not None:
            self.publisher.reconfigure(loaded.config)
            try:
                await asyncio.to_thread(self.publisher.publish, None)
            except AggregatorError as exc:  # applied; the next poll cycle publishes again
                log.error("config reloaded, but publishing failed: %s", exc)
        log.info(
            "config reloaded (%s): %d sources added, %d changed, %d removed, %d renamed%s",
            why, len(report.added), len(report.changed), len(report.removed), len(report.renamed),
            "".join(f"; {was!r} is now {now!r}" for was, now in report.renamed),
        )  # fmt: skip
        return True

    async def _edited_config(self) -> LoadedConfig | None:
        """The config file as it is now, or None (logged) when it cannot be taken: broken, or
        listing no sources where the running configuration has some. An editor rewriting the
        file in place, or a copy cut short, is seen between its truncation and its end, and
        taken at its word it stopped every source of the service."""
        try:
            loaded = await asyncio.to_thread(load_config, self.loaded.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config not reloaded: %s", problem)
            return None
        if self.loaded.config.sources and not loaded.config.sources:
            log.error(
                "config not reloaded: %s lists no sources (being rewritten?); the running configuration stays. "
                "Restart the service to run it with none",
                loaded.path,
            )
            return None
        return loaded

    async def _refetch_with(self, loaded: LoadedConfig) -> None:
        """Hand the pipeline the new config, and the next cycle a new Fetcher if the fetch
        settings changed (user agent, timeouts, limits, body cap, private-network guard); a
        running cycle finishes with the old one and closes it (``_poll_cycle``), else it is
        closed here."""
        if self.pipeline is None:
            return
        self.pipeline.reconfigure(loaded.config)
        options = fetch_options(loaded.config)
        if options != self._fetch_options and self._fetcher is not None:
            previous, self._fetcher, self._fetch_options = self._fetcher, Fetcher(options), options
            if previous is not self._cycle_fetcher:
                await previous.aclose()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
