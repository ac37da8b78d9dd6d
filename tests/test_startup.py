"""Start-up is idempotent: several workers started at once on a fresh database all stay up.

Real ``aggregator worker`` processes, started together (so they migrate the empty schema and
sync the sources from feeds.yaml at the same moment), on a real SQLite file and a fresh
PostgreSQL database each run; the feed server counts what each source was asked for.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.feeds import any_dialect
from tests.server import FeedServer, Route

SOURCES = 12
SETTLE_SECONDS = 1.5  # ticks after the last fetch in which a second fetch would show up


def start_workers(config: Path, count: int, cwd: Path) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes, spawned back to back: their start-ups overlap entirely
    (interpreter start-up takes far longer than the spawns between them)."""
    processes = []
    for n in range(count):
        log = (cwd / f"worker{n}.log").open("wb")
        command = [sys.executable, "-m", "aggregator", "--config", str(config), "worker"]
        processes.append(subprocess.Popen(command, cwd=cwd, stdout=log, stderr=log))
        log.close()
    return processes


def all_fetched(server: FeedServer) -> bool:
    return len({r.path for r in server.requests}) == SOURCES


def all_synced(logs: Path, workers: int) -> bool:
    """Every worker has migrated and synced the sources (it logs the sync's counts)."""
    return all("sources: " in (logs / f"worker{n}.log").read_text() for n in range(workers))


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_started_at_once_on_a_fresh_database_all_stay_up(
    server: FeedServer, tmp_path: Path, database_url: str, workers: int
) -> None:
    for n in range(SOURCES):
        server.add(f"/f{n}", Route(body=any_dialect(n, 3), etag=f'"{n}"'))
    sources = [{"name": f"feed {n}", "url": server.url(f"/f{n}")} for n in range(SOURCES)]
    settings = f"database: {database_url}\ntick_seconds: 0.2"
    config = write_config(tmp_path, sources, settings=settings)
    processes = start_workers(config, workers, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (all_fetched(server) and all_synced(tmp_path, workers)) and time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                break
            time.sleep(0.05)
        time.sleep(SETTLE_SECONDS)
        exited = {n: p.poll() for n, p in enumerate(processes) if p.poll() is not None}
        logs = {n: (tmp_path / f"worker{n}.log").read_text() for n in range(workers)}
        assert exited == {}, "workers exited: " + "\n".join(logs[n] for n in exited)
        hits = Counter(r.path for r in server.requests)
        assert hits == Counter({f"/f{n}": 1 for n in range(SOURCES)}), "every source fetched exactly once"
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=30) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for n in range(workers):
        text = (tmp_path / f"worker{n}.log").read_text()
        assert "Traceback" not in text and " ERROR " not in text, text


def test_a_connection_waits_while_another_process_writes_a_file_not_yet_in_wal_mode(tmp_path: Path) -> None:
    # Switching to WAL needs the file to itself, and while another connection holds a write
    # lock SQLite says "database is locked" at once instead of waiting its busy timeout: of two
    # workers started together on a fresh file, the second exited while the first migrated.
    import sqlite3
    import threading

    from aggregator.store.database import make_engine

    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE started (n INTEGER)")  # still in the default rollback-journal mode
    holder.execute("BEGIN IMMEDIATE")  # writing, as a worker migrating the schema is
    holder.execute("INSERT INTO started VALUES (1)")
    threading.Timer(0.5, holder.execute, ("COMMIT",)).start()
    engine = make_engine(f"sqlite:///{path}")
    started = time.monotonic()
    with engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        rows = connection.exec_driver_sql("SELECT n FROM started").scalars().all()
    assert (mode, rows) == ("wal", [1])
    assert time.monotonic() - started >= 0.4  # it waited for the writer, then switched
    engine.dispose()
    holder.close()
