"""The daemon as users run it: a real process, real signals, a config edited under it."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import httpx
import pytest

from aggregator.config import load_config
from aggregator.daemon import Daemon
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.feeds import any_dialect
from tests.server import FeedServer, Route

ITEMS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def items_stored(db: Path) -> int | None:
    """Items in a SQLite database a running process writes to (None: not readable yet)."""
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("select count(*) from items").fetchone()[0])
    except sqlite3.Error:
        return None


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def entries(url: str) -> int:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return -1
    return len(feedparser.parse(response.content).entries) if response.status_code == 200 else -1


def aggregator(*args: str, cwd: Path) -> subprocess.Popen[str]:
    # Logs go to a file: a pipe nobody reads fills up and blocks the daemon.
    with (cwd / "daemon.log").open("a") as log:
        return subprocess.Popen([sys.executable, "-m", "aggregator", *args], cwd=cwd, stdout=log, stderr=log, text=True)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _mapped_packages(pid: int) -> set[str]:
    """The installed packages whose compiled libraries process ``pid`` has loaded."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {path.split("site-packages/", 1)[1].split("/", 1)[0] for path in maps.split() if "site-packages/" in path}


def test_the_installed_command_s_daemon_and_parse_worker_each_load_only_what_they_use(
    server: FeedServer, tmp_path: Path
) -> None:
    # The console script (what the systemd unit starts) is the main module a parse worker
    # imports at its start: it must not bring the database, HTTP and config libraries along.
    command = Path(sys.executable).with_name("aggregator")
    assert command.exists(), f"the aggregator command is not installed beside {sys.executable}"
    server.add("/f0", Route(body=any_dialect(0, ITEMS)))
    config = write_config(tmp_path, [{"name": "feed 0", "url": server.url("/f0")}], settings="parse_workers: 1")
    db = tmp_path / "data" / "aggregator.db"
    with (tmp_path / "daemon.log").open("a") as log:
        args = [str(command), "--config", str(config), "worker"]
        process = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=log)

    try:
        wait_for(lambda: items_stored(db) == ITEMS, timeout=60)
        loaded = {pid: _mapped_packages(pid) for pid in _descendants(process.pid)}
        daemon = _mapped_packages(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    # The worker that parsed and embedded the items loaded the tokenizer; nothing else here does.
    workers = [packages for packages in loaded.values() if "tokenizers" in packages]
    assert len(workers) == 1, loaded
    assert "numpy" in workers[0]
    assert not workers[0] & {"sqlalchemy", "pydantic_core", "yaml", "markupsafe"}, workers[0]
    assert {"sqlalchemy", "pydantic_core"} <= daemon  # the check does see them where they are loaded
    # And the other way round: the daemon hands every document to its worker, so it does not
    # load the parsing stages (nh3 is the compiled one of them; feedparser and ftfy come with it).
    assert "nh3" in workers[0]
    assert "nh3" not in daemon, daemon


def test_run_polls_serves_reloads_and_stops_cleanly_on_sigterm(server: FeedServer, tmp_path: Path) -> None:
    for n in range(4):
        server.add(f"/f{n}", Route(body=any_dialect(n, ITEMS), etag=f'"{n}"'))
    sources = [{"name": f"feed {n}", "url": server.url(f"/f{n}"), "tags": ["world"]} for n in range(3)]
    port = free_port()
    # The feeds' items of one index report one made-up event in the same words ("talks resume
    # in Geneva ... on Tuesday"), which story matching rightly joins; this test counts items.
    settings = f"listen: 127.0.0.1:{port}\nparse_workers: 2\ntick_seconds: 0.2\nstory_matching: off"
    config = write_config(tmp_path, sources, settings=settings)
    process = aggregator("--config", str(config), "run", cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/feeds/world.atom"
        wait_for(lambda: entries(url) == 3 * ITEMS)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["scheduler"] == "ok"

        # A live edit adds a source: it is polled promptly, without a restart.
        sources.append({"name": "feed 3", "url": server.url("/f3"), "tags": ["world"]})
        write_config(tmp_path, sources, settings=settings)
        wait_for(lambda: entries(url) == 4 * ITEMS)

        # A broken edit is rejected with file:line; the running config stays.
        config.write_text(config.read_text().replace("  - name: feed 3", "  - nme: feed 3"))
        time.sleep(3)
        assert process.poll() is None
        assert entries(url) == 4 * ITEMS

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = (tmp_path / "daemon.log").read_text()
    assert process.returncode == 0, stderr
    assert f"config not reloaded: {config}:" in stderr and "sources[3].nme: unknown key" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_poll_once_stopped_by_a_signal_hands_its_leases_back_keeps_what_it_stored_and_says_so(
    server: FeedServer, tmp_path: Path, signum: signal.Signals
) -> None:
    # A timer's poll stopped by systemd (SIGTERM) or by another process's SIGINT, while one feed
    # still keeps it waiting: it stops at once, not when that feed answers.
    server.add("/fast", Route(body=any_dialect(0, ITEMS)))
    server.add("/slow", Route(body=any_dialect(1, ITEMS), delay=30))
    sources = [{"name": "fast", "url": server.url("/fast")}, {"name": "slow", "url": server.url("/slow")}]
    config = write_config(tmp_path, sources, settings="read_timeout: 60\ntotal_timeout: 90")
    db = tmp_path / "data" / "aggregator.db"
    process = aggregator("--config", str(config), "poll", "--once", cwd=tmp_path)

    try:
        wait_for(lambda: items_stored(db) == ITEMS, timeout=20)
        stopped_at = time.monotonic()
        process.send_signal(signum)
        assert process.wait(timeout=15) == 2
        assert time.monotonic() - stopped_at < 10  # the slow feed answers only after 30 s
    finally:
        process.kill()
    log = (tmp_path / "daemon.log").read_text()
    assert "aggregator: stopped; what was stored stays, and the rest is polled next time" in log
    assert "Traceback" not in log
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from sources where lease_owner is not null").fetchone()[0] == 0
        assert conn.execute("select count(*) from items").fetchone()[0] == ITEMS


def test_a_slow_feed_does_not_hold_back_the_others_items_from_the_outputs(server: FeedServer, tmp_path: Path) -> None:
    # A cycle ends when its slowest feed answers or times out; what the others brought is
    # published while it waits (PUBLISH_DURING_CYCLE_SECONDS), not only at the end.
    from aggregator.daemon import PUBLISH_DURING_CYCLE_SECONDS

    server.add("/fast", Route(body=any_dialect(0, ITEMS)))
    server.add("/slow", Route(body=any_dialect(1, ITEMS), delay=PUBLISH_DURING_CYCLE_SECONDS + 40))
    sources = [{"name": "fast", "url": server.url("/fast")}, {"name": "slow", "url": server.url("/slow")}]
    settings = "read_timeout: 90\ntotal_timeout: 120\ntick_seconds: 0.2"
    config = write_config(tmp_path, sources, settings=settings)
    atom = tmp_path / "data" / "feeds" / "world.atom"
    process = aggregator("--config", str(config), "worker", cwd=tmp_path)
    try:
        started = time.monotonic()
        wait_for(lambda: atom.exists() and len(feedparser.parse(atom.read_bytes()).entries) == ITEMS, timeout=40)
        assert time.monotonic() - started < PUBLISH_DURING_CYCLE_SECONDS + 30  # the slow feed has not answered
        assert server.hits("/slow") and "source 'slow'" not in (tmp_path / "daemon.log").read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_a_port_in_use_is_one_clear_error_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        config = write_config(tmp_path, [], settings=f"listen: 127.0.0.1:{port}\ntick_seconds: 0.2")
        process = aggregator("--config", str(config), "run", cwd=tmp_path)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = (tmp_path / "daemon.log").read_text()
    assert process.returncode == 2, stderr
    assert f"aggregator: cannot serve HTTP on 127.0.0.1:{port}" in stderr
    assert "address already in use" in stderr  # uvicorn's own line says why
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr


def test_kill_9_mid_poll_loses_nothing_and_duplicates_nothing(server: FeedServer, tmp_path: Path) -> None:
    feeds = 80
    for n in range(feeds):
        server.add(f"/f{n}", Route(body=any_dialect(n, ITEMS), delay=0.05))
    sources = [{"name": f"feed {n}", "url": server.url(f"/f{n}")} for n in range(feeds)]
    config = write_config(tmp_path, sources, settings="concurrency: 4")
    db = tmp_path / "data" / "aggregator.db"
    process = aggregator("--config", str(config), "poll", "--once", "--all", cwd=tmp_path)

    def some_committed() -> bool:
        try:
            with sqlite3.connect(db) as conn:
                return int(conn.execute("select count(*) from fetch_log").fetchone()[0]) >= 5
        except sqlite3.Error:
            return False

    wait_for(some_committed)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with sqlite3.connect(db) as conn:
        per_source = dict(conn.execute("select source_id, count(*) from items group by source_id").fetchall())
        logged = {row[0] for row in conn.execute("select source_id from fetch_log")}
    assert 0 < len(logged) < feeds, "the kill must land mid-run for this test to mean anything"
    # One transaction per fetch result: a source has all its items and its log row, or neither.
    assert set(per_source) == logged
    assert set(per_source.values()) == {ITEMS}

    finished = aggregator("--config", str(config), "poll", "--once", "--all", cwd=tmp_path)
    assert finished.wait(timeout=120) == 0, (tmp_path / "daemon.log").read_text()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*), count(distinct source_id || key) from items").fetchone() == (
            feeds * ITEMS,
            feeds * ITEMS,
        )


def test_a_stop_as_jobs_are_due_or_running_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM is how an operator stops the service, so it must not log an error with a
    traceback. Two moments did: a tick falling due as the scheduler was shut down (APScheduler's
    asyncio scheduler shuts down at the loop's next turn, and a job submitted before then was
    cancelled unstarted: one of four workers started together logged it in CI), and a job still
    running (here the retention pass, held in its thread). The daemon runs in this process on a
    real SQLite file; only the two moments are arranged."""
    config_path = write_config(tmp_path, [], settings="tick_seconds: 3600")
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'aggregator.db'}")
    ensure_schema(engine)
    daemon = Daemon(load_config(config_path), Store(engine), poll=True, http=False)
    pruning = threading.Event()

    stop_seen: list[bool] = []

    def slow_prune(_publisher: object, stopping: Callable[[], bool]) -> None:
        pruning.set()  # a retention pass in its thread; the stop comes meanwhile
        deadline = time.monotonic() + 5.0
        while not stopping() and time.monotonic() < deadline:
            time.sleep(0.01)
        stop_seen.append(stopping())  # told, between two of its transactions, to stop

    monkeypatch.setattr("aggregator.daemon.prune", slow_prune)

    async def scenario() -> None:
        running = asyncio.create_task(daemon.run())
        while not daemon._ready:
            await asyncio.sleep(0.01)
        scheduler = daemon._scheduler
        assert scheduler is not None
        shut_down = scheduler.shutdown

        def shutdown_as_the_tick_falls_due(wait: bool = True) -> None:
            shut_down(wait)  # done at the loop's next turn
            scheduler.modify_job("poll", next_run_time=datetime.now(UTC))
            scheduler._process_jobs()  # the scheduler's timer, firing first in that turn

        monkeypatch.setattr(scheduler, "shutdown", shutdown_as_the_tick_falls_due)
        scheduler.modify_job("retention", next_run_time=datetime.now(UTC))
        while not pruning.is_set():
            await asyncio.sleep(0.01)
        daemon._request_stop(signal.SIGTERM)
        await running

    caplog.set_level(logging.INFO)
    asyncio.run(scenario())
    engine.dispose()
    assert "stopped" in caplog.messages
    assert stop_seen == [True]
    errors = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == []


def test_an_output_that_cannot_be_published_at_start_does_not_stop_the_daemon(
    server: FeedServer, tmp_path: Path
) -> None:
    # Found by the upgrade audit: the publish at start was unguarded, so one output that could
    # not be rendered stopped the daemon within a second, in a loop under Restart=on-failure.
    server.add("/f0", Route(body=any_dialect(0, ITEMS)))
    outputs = """
    outputs:
      - slug: blocked
        title: Blocked
      - slug: world
        title: World
    """
    port = free_port()
    settings = f"tick_seconds: 0.2\nlisten: 127.0.0.1:{port}"
    config = write_config(tmp_path, [{"name": "feed 0", "url": server.url("/f0")}], settings=settings, outputs=outputs)
    feeds = tmp_path / "data" / "feeds"
    (feeds / "blocked.atom").mkdir(parents=True)  # nothing can be renamed onto it
    process = aggregator("--config", str(config), "run", cwd=tmp_path)
    try:
        atom = feeds / "world.atom"
        wait_for(lambda: atom.exists() and len(feedparser.parse(atom.read_bytes()).entries) == ITEMS, timeout=40)
        assert process.poll() is None
        # Not the watchdog's business (a restart would not mend it), but a monitor's:
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["cycles"] == "ok"
        assert health.json()["publishing"].startswith("failing: 1 output(s) not published: cannot write")
        (feeds / "blocked.atom").rmdir()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["publishing"] == "ok")
        assert len(feedparser.parse((feeds / "blocked.atom").read_bytes()).entries) == ITEMS
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    log = (tmp_path / "daemon.log").read_text()
    assert "publishing at start failed: 1 output(s) not published: cannot write" in log and "blocked.atom" in log
    assert "Traceback" not in log
