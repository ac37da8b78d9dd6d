"""systemd supervision: READY/WATCHDOG/STOPPING on a real notify socket, and a quiet log.

The daemon is a real process; NOTIFY_SOCKET is a real unix datagram socket this test
binds (abstract, as systemd's own is on some systems, and a path), read on a thread.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from aggregator import sdnotify
from aggregator.config import Settings
from aggregator.daemon import assess
from aggregator.store.database import MIGRATION_PING_SECONDS
from tests.conftest import write_config
from tests.feeds import any_dialect
from tests.server import FeedServer, Route
from tests.test_daemon import aggregator, free_port, wait_for

SLOW = 4.0  # seconds the slow source takes to answer: a first poll spanning many ticks
TICK = "tick_seconds: 0.2\nread_timeout: 10\ntotal_timeout: 20"


@dataclass
class Received:
    message: str
    slow_committed: bool  # had the slow source's poll been committed when this arrived?


@dataclass
class NotifyListener:
    address: str  # as NOTIFY_SOCKET spells it
    sock: socket.socket
    db: Path | None = None
    received: list[Received] = field(default_factory=list)

    def messages(self) -> list[str]:
        return [r.message for r in self.received]

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.received.append(Received(data.decode(), self.db is not None and slow_committed(self.db)))


def slow_committed(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "select count(*) from fetch_log join sources on sources.id = fetch_log.source_id"
                " where sources.name = 'slow'"
            ).fetchone()
    except sqlite3.Error:
        return False
    return bool(row[0])


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"aggregator-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    found = NotifyListener("@" + name, sock)
    thread = threading.Thread(target=found._run, daemon=True)
    thread.start()
    yield found
    sock.close()


def slow_first_poll(server: FeedServer, tmp_path: Path, settings: str) -> Path:
    server.add("/slow", Route(body=any_dialect(0, 3), delay=SLOW))
    for n in range(1, 4):
        server.add(f"/f{n}", Route(body=any_dialect(n, 3)))
    sources = [{"name": "slow", "url": server.url("/slow")}]
    sources += [{"name": f"feed {n}", "url": server.url(f"/f{n}")} for n in range(1, 4)]
    return write_config(tmp_path, sources, settings=settings)


def test_notify_protocol_reaches_path_and_abstract_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # unix socket paths are short
        path = os.path.join(short, "notify")
        abstract = f"aggregator-test-{uuid.uuid4().hex}"
        for address, bind in ((path, path), ("@" + abstract, "\0" + abstract)):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(bind)
                sock.settimeout(5)
                monkeypatch.setenv("NOTIFY_SOCKET", address)
                assert sdnotify.ready() and sdnotify.watchdog() and sdnotify.stopping()
                assert [sock.recv(100) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # gone now: reported, never raised
    assert sdnotify.ready() is False
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.ready() is False


def test_daemon_reports_ready_pings_the_watchdog_through_a_long_poll_and_says_stopping(
    server: FeedServer, tmp_path: Path, listener: NotifyListener
) -> None:
    port = free_port()
    config = slow_first_poll(server, tmp_path, f"listen: 127.0.0.1:{port}\n{TICK}")
    listener.db = tmp_path / "data" / "aggregator.db"
    os.environ["NOTIFY_SOCKET"] = listener.address
    try:
        process = aggregator("--config", str(config), "run", cwd=tmp_path)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        wait_for(lambda: "READY=1" in listener.messages())
        # Ready means migrated, synced and serving.
        with sqlite3.connect(listener.db) as conn:
            assert conn.execute("select count(*) from sources").fetchone()[0] == 4
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
        assert health["status"] == "ok", health
        wait_for(lambda: listener.received[-1].slow_committed, timeout=SLOW * 5)
        during = [r for r in listener.received if r.message == "WATCHDOG=1" and not r.slow_committed]
        assert len(during) >= 5, "the watchdog must be pinged while a long poll runs"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Before it is ready, only requests for more time to start (while it migrates its database).
    extend = f"EXTEND_TIMEOUT_USEC={int(3 * MIGRATION_PING_SECONDS * 1_000_000)}"
    messages = listener.messages()
    ready = messages.index("READY=1")
    assert set(messages[:ready]) <= {extend}
    wait_for(lambda: listener.messages()[-1] == "STOPPING=1", timeout=5)
    assert set(listener.messages()) <= {"READY=1", "WATCHDOG=1", "STOPPING=1", extend}
    assert set(listener.messages()[ready:]) == {"READY=1", "WATCHDOG=1", "STOPPING=1"}


def test_a_long_first_poll_logs_no_warning(server: FeedServer, tmp_path: Path) -> None:
    config = slow_first_poll(server, tmp_path, TICK)
    db = tmp_path / "data" / "aggregator.db"
    process = aggregator("--config", str(config), "worker", cwd=tmp_path)
    try:
        wait_for(lambda: slow_committed(db), timeout=SLOW * 5)
        time.sleep(1)  # a few idle ticks after the cycle, too
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (tmp_path / "daemon.log").read_text()
    assert "sources: 4 added" in log
    assert " WARNING " not in log and " ERROR " not in log, log


SETTINGS = Settings(tick_seconds=5, total_timeout=60)  # a lease is 60 * 2 + 120 = 240 s


def test_healthy_while_ticking_and_polling_with_progress() -> None:
    assert assess(1000.0, 995.0, None, SETTINGS)["status"] == "ok"
    # A long first poll: many ticks, polls finishing all along.
    report = assess(1000.0, 999.0, 990.0, SETTINGS)
    assert report["status"] == "ok" and report["polling"] == "running"


def test_failing_when_the_scheduler_stops_ticking() -> None:
    report = assess(1000.0, 900.0, None, SETTINGS)
    assert report["status"] == "failing" and report["scheduler"] == "stalled"
    assert assess(1000.0, None, None, SETTINGS)["scheduler"] == "starting"
    # Slow ticks are allowed three of their intervals.
    assert assess(1000.0, 900.0, None, Settings(tick_seconds=40))["status"] == "ok"


def test_failing_when_a_poll_cycle_makes_no_progress_for_longer_than_a_lease() -> None:
    assert assess(1000.0, 999.0, 1000.0 - 239, SETTINGS)["status"] == "ok"
    report = assess(1000.0, 999.0, 1000.0 - 241, SETTINGS)
    assert report["status"] == "failing" and report["polling"] == "stuck"


def test_a_migration_apart_asks_systemd_for_more_time_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Found by the upgrade audit: a migration of a large SQLite file outlasted TimeoutStartSec,
    # so systemd killed the start and began it again, forever.
    from aggregator.store.database import make_engine, migrate_apart

    url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    make_engine(url).dispose()
    with tempfile.TemporaryDirectory(dir="/tmp") as short, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = os.path.join(short, "notify")
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        before, head = migrate_apart(url)
        assert before is None and head
        assert sock.recv(100) == f"EXTEND_TIMEOUT_USEC={int(3 * MIGRATION_PING_SECONDS * 1_000_000)}".encode()
