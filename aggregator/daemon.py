"""The long-running process: APScheduler as the clock, uvicorn for HTTP, signals, reloads.

APScheduler holds no jobs of its own state (DESIGN.md, decision 1): a short interval
job claims whatever the database says is due, another watches ``feeds.yaml``. So a
restart resumes every source's schedule exactly where the database left it, and a
second ``aggregator worker`` needs no coordination beyond the database.

Signals: SIGTERM/SIGINT stop cleanly — in-flight polls are cancelled, their leases
handed back, nothing half-written (each poll commits in one transaction). SIGHUP, or
an edit of the config file, reloads the config; a broken edit is logged with file:line
and the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from aggregator import metrics
from aggregator.config import LoadedConfig, load_config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.fetch import Fetcher
from aggregator.pipeline import Pipeline, fetch_options, make_parse_pool, prune, reclaim_dead_leases
from aggregator.serve import create_app
from aggregator.store.repository import Store

log = logging.getLogger("aggregator")
CONFIG_WATCH_SECONDS = 2.0
ARCHIVE_CHECK_SECONDS = 3600  # a finished week waits at most this long for its archive
HOUSEKEEPING_DELAY = timedelta(minutes=10)  # let the first poll cycle finish before pruning


class _QuietServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: the daemon owns SIGTERM for both halves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Daemon:
    def __init__(self, loaded: LoadedConfig, store: Store, *, poll: bool = True, http: bool = True) -> None:
        self.loaded = loaded
        self.store = store
        self.poll = poll
        self.http = http
        self.pipeline: Pipeline | None = None
        self._stop = asyncio.Event()
        self._server: _QuietServer | None = None
        self._config_mtime = _mtime(loaded.path)
        self._last_tick: float | None = None
        self._tick_running = False
        self._tick_task: asyncio.Task[object] | None = None
        self._fetcher: Fetcher | None = None
        self._background: set[asyncio.Task[None]] = set()

    # --- health ----------------------------------------------------------------------
    def health(self) -> dict[str, object]:
        if not self.poll:
            return {"scheduler": "not running in this process"}
        settings = self.loaded.config.settings
        allowed = max(60.0, settings.tick_seconds * 3 + settings.total_timeout * 2)
        age = None if self._last_tick is None else time.monotonic() - self._last_tick
        stalled = age is None or (age > allowed and not self._tick_running)
        return {
            "status": "failing" if stalled else "ok",
            "scheduler": "stalled" if stalled else "ok",
            "last_tick_seconds_ago": None if age is None else round(age, 1),
        }

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        settings = self.loaded.config.settings
        pool = make_parse_pool(settings.parse_workers) if self.poll else None
        scheduler = AsyncIOScheduler(timezone=UTC)
        server_task: asyncio.Task[None] | None = None
        try:
            if self.poll:
                report = await asyncio.to_thread(self.store.sync_sources, self.loaded.config, datetime.now(UTC))
                log.info(
                    "sources: %d added, %d changed, %d removed",
                    len(report.added),
                    len(report.changed),
                    len(report.removed),
                )
                await asyncio.to_thread(reclaim_dead_leases, self.store)
                self.pipeline = Pipeline(self.loaded.config, self.store, parse_pool=pool)
                self._fetcher = Fetcher(fetch_options(self.loaded.config))
                await asyncio.to_thread(self.pipeline.publish, None)
                scheduler.add_job(
                    self._tick, "interval", seconds=settings.tick_seconds, max_instances=1, coalesce=True,
                    next_run_time=datetime.now(UTC), id="poll",
                )  # fmt: skip
                scheduler.add_job(self._watch_config, "interval", seconds=CONFIG_WATCH_SECONDS, id="config")
                scheduler.add_job(self._archive, "interval", seconds=ARCHIVE_CHECK_SECONDS, id="archive")
                scheduler.add_job(
                    self._housekeeping, "interval", hours=24, id="retention",
                    next_run_time=datetime.now(UTC) + HOUSEKEEPING_DELAY,
                )  # fmt: skip
                scheduler.start()
            if self.http:
                app = create_app(
                    self.store, health=self.health, status_page=settings.status_page, config=lambda: self.loaded.config
                )
                config = uvicorn.Config(
                    app, host=settings.listen_host, port=settings.listen_port, log_level="warning",
                    access_log=False, lifespan="off",
                )  # fmt: skip
                self._server = _QuietServer(config)
                server_task = loop.create_task(self._server.serve())
                log.info("serving on http://%s/feeds/", settings.listen)
            stopper = loop.create_task(self._stop.wait())
            waiting: set[asyncio.Future[object]] = {stopper}  # type: ignore[arg-type]
            if server_task is not None:
                waiting.add(server_task)  # type: ignore[arg-type]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if server_task in done and server_task is not None and not self._stop.is_set():
                server_task.result()  # the server died (e.g. port in use): surface it
                raise AggregatorError(f"HTTP server on {settings.listen} stopped unexpectedly")
            stopper.cancel()
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=False)
            if self._tick_task is not None and not self._tick_task.done():
                self._tick_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, AggregatorError):
                    await self._tick_task
            if self._server is not None:
                self._server.should_exit = True
            if server_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await server_task
            if self._fetcher is not None:
                await self._fetcher.aclose()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("received %s, stopping", sig.name)
        self._stop.set()

    async def _tick(self) -> None:
        if self.pipeline is None or self._fetcher is None or self._stop.is_set():
            return
        self._last_tick = time.monotonic()
        self._tick_running = True
        metrics.TICKS.inc()
        try:
            self._tick_task = asyncio.current_task()
            summary = await self.pipeline.poll_due(self._fetcher)
            if summary.new_items or summary.updated_items:
                changed = await asyncio.to_thread(self.pipeline.publish, self.pipeline.affected_outputs(summary))
                if changed and self.loaded.config.settings.websub_hub:
                    # Beside the poll loop, never in its way: a slow hub only delays its own pings.
                    task = asyncio.get_running_loop().create_task(self.pipeline.notify_hub(changed))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
        except AggregatorError as exc:
            log.error("poll cycle failed: %s", exc)
        except asyncio.CancelledError:
            # SIGTERM mid-cycle: poll_due has handed its leases back. Ending quietly keeps
            # APScheduler from logging a clean shutdown as a job that "raised an exception".
            if not self._stop.is_set():
                raise
        finally:
            self._tick_running = False
            self._last_tick = time.monotonic()

    async def _archive(self) -> None:
        """Archive weeks that ended, also for outputs that had no new item since."""
        if self.pipeline is None:
            return
        pipeline = self.pipeline
        try:
            due = await asyncio.to_thread(pipeline.archives_due, pipeline.clock())
            if due:
                await asyncio.to_thread(pipeline.publish, due)
        except AggregatorError as exc:
            log.error("archiving failed: %s", exc)

    async def _housekeeping(self) -> None:
        if self.pipeline is None:
            return
        try:
            await asyncio.to_thread(prune, self.pipeline)
        except AggregatorError as exc:
            log.error("retention failed: %s", exc)

    async def _watch_config(self) -> None:
        mtime = _mtime(self.loaded.path)
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            await self.reload("config file changed")

    async def reload(self, why: str) -> bool:
        try:
            loaded = await asyncio.to_thread(load_config, self.loaded.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config not reloaded: %s", problem)
            return False
        report = await asyncio.to_thread(self.store.sync_sources, loaded.config, datetime.now(UTC))
        self.loaded = loaded
        if self.pipeline is not None:
            self.pipeline.config = loaded.config
            await asyncio.to_thread(self.pipeline.publish, None)
        log.info(
            "config reloaded (%s): %d sources added, %d changed, %d removed",
            why, len(report.added), len(report.changed), len(report.removed),
        )  # fmt: skip
        return True


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
