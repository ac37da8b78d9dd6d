"""Chaos: the daemon killed, its database restarted or out of disk, many started at once.

Every scenario runs real ``aggregator worker`` processes against feeds served on 127.0.0.1
(tests/server.py's FeedServer, in this process), and checks the database afterwards with SQL.
Each feed has ITEMS items with fixed guids, so the complete result is known: every source
with exactly ITEMS items, nothing twice.

kill9   ``kill -9`` of the worker at random moments of a first ingest of ``--sources`` feeds
        (the moments are drawn as counts of committed polls, so every kill lands mid-ingest),
        ``--kills`` times, restarting it after each. After every kill: items lost (fewer
        items than were committed before the kill), partial sources (a source with some but
        not all its items: a torn transaction), duplicates. Recovery time: from the restart
        to READY=1 (on a notify socket of ours) and to its first committed poll. At the end:
        the schedule resumes (every source polled, none leased, all due in the future).
pg      PostgreSQL restarted (``pg_ctl restart -m fast``, then also stopped for ``--outage``
        seconds) under two running workers. Uses a PRIVATE cluster made with ``initdb`` on
        another port (as user postgres when run as root), never the shared server. Both
        workers must keep running and finish the ingest by themselves; nothing lost or twice.
disk    SQLite on a nearly full filesystem: a small tmpfs (mounted here; needs root), filled
        mid-ingest. The affected writes must fail with a clear error line, the database
        must pass ``PRAGMA integrity_check``, and the ingest must complete by itself once
        the space is back.
start   N in {2, 4} workers started at the same instant on a fresh PostgreSQL database,
        ``--start-repeats`` times each: all stay up, every source fetched exactly once.

Prints the figures, then ``RESULT ok`` (exit 0) or the failures (exit 1).

Run:  .venv/bin/python bench/chaos.py                    (all four, default sizes)
      .venv/bin/python bench/chaos.py --scenarios kill9,disk --sources 1000 --kills 20
      .venv/bin/python bench/chaos.py --short            (what tests/test_chaos.py runs)
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchsupport import database, load, own_tree_env, words  # noqa: E402
from sqlalchemy import text  # noqa: E402

from aggregator.store.database import make_engine  # noqa: E402
from tests.server import FeedServer, Route  # noqa: E402

ITEMS = 5
DEFAULT_ADMIN = os.environ.get("AGGREGATOR_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"


# --- the feeds and the workers ---------------------------------------------------------------


def feed(n: int, rng: random.Random) -> bytes:
    items = "".join(
        f"<item><title>{escape(words(rng, 8))}</title><guid isPermaLink='false'>src{n}-{i}</guid>"
        f"<link>https://outlet{n}.example/{i}</link><description>{escape(words(rng, 40))}</description>"
        f"<pubDate>Mon, 30 Nov 2026 {i:02d}:00:00 GMT</pubDate></item>"
        for i in range(ITEMS)
    )
    return (
        f"<rss version='2.0'><channel><title>Outlet {n}</title><link>https://outlet{n}.example/</link>"
        f"{items}</channel></rss>"
    ).encode()


class Rig:
    """A feed server, a config, the worker processes started on it, and SQL to check them."""

    def __init__(self, workdir: Path, sources: int, database_url: str, *, delay: float, settings: str = "") -> None:
        self.workdir = workdir
        self.sources = sources
        self.database_url = database_url
        rng = random.Random(sources)
        self.server = FeedServer().start()
        # A killed worker resets its connections: expected here, not worth a traceback each.
        self.server.httpd.handle_error = lambda *_: None  # type: ignore[method-assign]
        for n in range(sources):
            self.server.add(f"/f{n}", Route(body=feed(n, rng), delay=delay))
        lines = [
            "settings:",
            f"  data_dir: {workdir / 'data'}",
            f"  database: {database_url}",
            "  allow_private_networks: true",
            "  public_url: http://chaos.example",
            "  tick_seconds: 0.5",
            "  concurrency: 16",
            "  per_host_concurrency: 16",
            "  parse_workers: 1",
            "  connect_timeout: 5",
            "  read_timeout: 10",
            "  total_timeout: 20",
            *(f"  {line}" for line in settings.splitlines() if line),
            "sources:",
            *(f"  - name: outlet {n}\n    url: {self.server.url(f'/f{n}')}" for n in range(sources)),
            "outputs:\n  - slug: world\n    title: World",
        ]
        self.config = workdir / "feeds.yaml"
        self.config.write_text("\n".join(lines) + "\n")
        self.engine = make_engine(database_url)
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, notify: str | None = None) -> subprocess.Popen[bytes]:
        env = own_tree_env()
        env.pop("NOTIFY_SOCKET", None)
        if notify:
            env["NOTIFY_SOCKET"] = notify
        with (self.workdir / f"{name}.log").open("ab") as log:
            command = [sys.executable, "-m", "aggregator", "--config", str(self.config), "worker"]
            process = subprocess.Popen(command, cwd=self.workdir, stdout=log, stderr=log, env=env)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar()

    def committed(self) -> int:
        """Sources with a committed poll (each poll commits its items and its log row together)."""
        try:
            return int(self.scalar("select count(distinct source_id) from fetch_log") or 0)
        except Exception:  # the table does not exist yet, or the database is down right now
            return -1

    def items(self) -> int:
        return int(self.scalar("select count(*) from items") or 0)

    def problems(self) -> dict[str, int]:
        """Torn or doubled writes, as counts that must all be 0."""
        return {
            "duplicated items": int(
                self.scalar("select count(*) - count(distinct source_id || ':' || key) from items") or 0
            ),
            "partial sources": int(
                self.scalar(
                    "select count(*) from (select source_id from items group by source_id"
                    f" having count(*) <> {ITEMS}) t"
                )
                or 0
            ),
            "polled sources without items": int(
                self.scalar(
                    "select count(distinct source_id) from fetch_log"
                    " where source_id not in (select source_id from items)"
                )
                or 0
            ),
            "stories without items": int(
                self.scalar("select count(*) from stories where id not in (select story_id from items)") or 0
            ),
        }

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.engine.dispose()
        self.server.stop()


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


class NotifySocket:
    """An abstract unix datagram socket standing in for systemd's: when did READY=1 come?"""

    def __init__(self) -> None:
        self.name = f"aggregator-chaos-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.ready_at: list[float] = []
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _run(self) -> None:
        while True:
            try:
                message = self.sock.recv(256)
            except OSError:
                return
            if message == b"READY=1":
                self.ready_at.append(time.monotonic())


def descendants(pid: int) -> list[int]:
    """The process's children, theirs, and so on (the parse pool: forkserver, workers, tracker)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # not a zombie


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms (n={len(values)})"


# --- scenarios -------------------------------------------------------------------------------


@dataclass
class Kills:
    """What a series of kill -9s during an ingest left behind, and how fast each restart recovered."""

    lost: int = 0
    torn: Counter[str] = field(default_factory=Counter)
    to_ready: list[float] = field(default_factory=list)
    to_commit: list[float] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)


@dataclass
class Finish:
    """The last start after the kills: did the ingest finish, and is the schedule carrying on?"""

    finished: bool
    total: float
    leased: int
    unscheduled: int
    running: bool
    items: int
    problems: dict[str, int]


def kill_repeatedly(rig: Rig, notify: NotifySocket, targets: list[int], kills: Kills, failures: list[str]) -> None:
    """Start a worker, let it commit up to the target, kill -9 it, count what the kill tore."""
    for number, target in enumerate(targets, 1):
        before = max(rig.committed(), 0)
        started = time.monotonic()
        process = rig.spawn(f"worker{number}", notify.address)
        if not wait_until(lambda: rig.committed() > before, 120):  # noqa: B023
            failures.append(f"kill9: restart {number} committed nothing in 120 s")
            break
        kills.to_commit.append(time.monotonic() - started)
        kills.to_ready += [t - started for t in notify.ready_at if t > started][:1]
        wait_until(lambda: rig.committed() >= target or process.poll() is not None, 300)  # noqa: B023
        items_before = rig.items()
        kids = descendants(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.lost += max(0, items_before - rig.items())
        kills.torn.update({k: v for k, v in rig.problems().items() if v})
        wait_until(lambda: not any(alive(kid) for kid in kids), 5, step=0.1)  # noqa: B023
        kills.orphans += [kid for kid in kids if alive(kid)]
        print(
            f"  kill {number:2d}: at {rig.committed():5d}/{rig.sources} sources committed (target {target})",
            flush=True,
        )


def finish_ingest(rig: Rig, notify: NotifySocket) -> Finish:
    """The last start: the ingest finishes and the schedule carries on."""
    started = time.monotonic()
    process = rig.spawn("final", notify.address)
    finished = wait_until(lambda: rig.committed() == rig.sources, 600, step=0.2)
    total = time.monotonic() - started
    time.sleep(2)  # a few idle ticks
    leased = int(rig.scalar("select count(*) from sources where lease_owner is not null") or 0)
    unscheduled = int(
        rig.scalar("select count(*) from sources where last_polled_at is null or next_poll_at <= current_timestamp")
        or 0
    )
    return Finish(finished, total, leased, unscheduled, process.poll() is None, rig.items(), rig.problems())


def kill9(opts: argparse.Namespace, failures: list[str]) -> None:
    print(f"\n## kill -9 during a first ingest: {opts.sources} sources, {opts.kills} kills (SQLite)", flush=True)
    rng = random.Random(opts.seed)
    kills = Kills()
    with tempfile.TemporaryDirectory(prefix="chaos-kill9-") as tmp:
        workdir = Path(tmp)
        rig = Rig(workdir, opts.sources, f"sqlite:///{workdir / 'data' / 'aggregator.db'}", delay=opts.delay)
        notify = NotifySocket()
        targets = sorted(rng.sample(range(1, opts.sources), opts.kills))
        try:
            kill_repeatedly(rig, notify, targets, kills, failures)
            final = finish_ingest(rig, notify)
        finally:
            rig.close()
            for kid in kills.orphans:  # parse workers of a killed daemon that outlived it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kid, signal.SIGKILL)
    missing = opts.sources * ITEMS - final.items
    print(f"  kills survived: {len(kills.to_commit)}/{opts.kills} (each restart resumed and committed)")
    print(f"  items lost at a kill: {kills.lost}; torn or doubled writes seen after kills: {dict(kills.torn) or 0}")
    print(
        f"  final: {final.items} items of {opts.sources * ITEMS} expected, missing {missing}, problems {final.problems}"
    )
    print(f"  recovery, restart to READY=1: {ms(kills.to_ready)}")
    print(f"  recovery, restart to first committed poll: {ms(kills.to_commit)}")
    print(
        f"  last run finished the ingest in {final.total:.1f} s; afterwards {final.leased} sources leased,"
        f" {final.unscheduled} not scheduled ahead"
    )
    print(f"  child processes (parse pool) still alive 5 s after their daemon was killed: {len(kills.orphans)}")
    if kills.orphans:
        failures.append("kill9: processes of a killed daemon outlived it")
    broken = missing or kills.lost or kills.torn or any(final.problems.values()) or final.leased or final.unscheduled
    if broken or not final.finished or not final.running:
        failures.append("kill9: items lost, duplicated or torn, or the schedule did not resume (see above)")


@contextlib.contextmanager
def private_cluster(port: int) -> Iterator[tuple[str, Callable[[list[str]], None]]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port``, removed afterwards."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        raise RuntimeError("initdb not found (apt-get install postgresql)")
    bindir = Path(initdb).parent
    home = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(home, "postgres")

    def pg_ctl(args: list[str]) -> None:
        if "start" in args or "restart" in args:
            args = ["-l", str(home / "server.log"), *args]
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(home / "data"), *args], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    subprocess.run([*as_postgres, initdb, "-D", str(home / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    # In the cluster's own config, so every start and restart keeps to this port (never 5432).
    with (home / "data" / "postgresql.conf").open("a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{home}'\nfsync = off\n")
    pg_ctl(["-w", "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", pg_ctl
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-m", "immediate", "-w", "stop"])
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_restart(opts: argparse.Namespace, failures: list[str]) -> None:
    print(f"\n## PostgreSQL restarted under two workers: {opts.pg_sources} sources, outage {opts.outage} s", flush=True)
    port = free_port()
    with (
        private_cluster(port) as (admin, pg_ctl),
        database(admin, keep=False) as url,
        tempfile.TemporaryDirectory(prefix="chaos-pg-work-") as tmp,
    ):
        rig = Rig(Path(tmp), opts.pg_sources, url, delay=opts.delay)
        try:
            a, b = rig.spawn("worker-a"), rig.spawn("worker-b")
            wait_until(lambda: rig.committed() >= opts.pg_sources // 4, 300)
            at_restart = rig.committed()
            pg_ctl(["-m", "fast", "-w", "restart"])
            back = time.monotonic()
            resumed = wait_until(lambda: rig.committed() > at_restart, 120)
            restart_recovery = time.monotonic() - back
            # A longer outage: stopped, then started again.
            at_stop = rig.committed()
            pg_ctl(["-m", "fast", "-w", "stop"])
            time.sleep(opts.outage)
            pg_ctl(["-w", "start"])
            back = time.monotonic()
            resumed_again = wait_until(lambda: rig.committed() > at_stop, 180)
            outage_recovery = time.monotonic() - back
            finished = wait_until(lambda: rig.committed() == opts.pg_sources, 600, step=0.2)
            up = [p.poll() is None for p in (a, b)]
            items = rig.items()
            problems = rig.problems()
            errors = [line for line in rig.logs().splitlines() if " ERROR " in line]
            tracebacks = rig.logs().count("Traceback")
        finally:
            rig.close()
    missing = opts.pg_sources * ITEMS - items
    print(f"  committed sources at the restart: {at_restart}, at the stop: {at_stop}")
    print(f"  workers still running afterwards: {sum(up)}/2 (never restarted)")
    print(f"  restart -m fast: first commit {restart_recovery:.1f} s after the server was back")
    print(f"  {opts.outage} s outage: first commit {outage_recovery:.1f} s after the server was back")
    print(f"  final: {items} items of {opts.pg_sources * ITEMS}, missing {missing}, problems {problems}")
    print(f"  error lines logged meanwhile: {len(errors)}; tracebacks: {tracebacks}")
    if errors:
        print(f"    e.g. {errors[0][24:200]}")
    if not (resumed and resumed_again and finished and all(up)) or missing or any(problems.values()) or tracebacks:
        failures.append("pg: a worker did not recover by itself, or items were lost or duplicated (see above)")


@dataclass
class DiskRun:
    """A worker's ingest through a full disk and after space came back."""

    at_full: int
    full_seen: bool
    during: int
    integrity_full: str
    up_while_full: bool
    resumed: bool
    recovery: float
    finished: bool
    items: int
    problems: dict[str, int]
    integrity_after: str
    log: str
    up: bool


def fill_and_recover(rig: Rig, mount: Path, db: Path) -> DiskRun:
    """Ingest a fifth, fill the filesystem, watch the worker while full, then free the space."""
    process = rig.spawn("worker")
    if not wait_until(lambda: rig.committed() >= rig.sources // 5, 300):
        raise RuntimeError(f"no ingest before the disk was filled:\n{rig.logs()[-2000:]}")
    filler = mount / "filler"
    # Unbuffered, and the suppress outside the file: closing a buffered file on a full
    # disk flushes, and that ENOSPC escaped the inner suppress now and then.
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 65536)
    at_full = rig.committed()
    full_seen = wait_until(lambda: "disk is full" in rig.logs() or "No space" in rig.logs(), 60)
    time.sleep(3)  # some more failing ticks
    during = rig.committed()
    integrity_full = integrity(db)
    up_while_full = process.poll() is None
    filler.unlink()
    back = time.monotonic()
    resumed = wait_until(lambda: rig.committed() > during, 120)
    recovery = time.monotonic() - back
    finished = wait_until(lambda: rig.committed() == rig.sources, 600, step=0.2)
    return DiskRun(
        at_full, full_seen, during, integrity_full, up_while_full, resumed, recovery, finished,
        rig.items(), rig.problems(), integrity(db), rig.logs(), process.poll() is None,
    )  # fmt: skip


def full_disk(opts: argparse.Namespace, failures: list[str]) -> None:
    print(
        f"\n## SQLite on a nearly full filesystem: {opts.disk_sources} sources, tmpfs of {opts.disk_mb} MB", flush=True
    )
    if os.geteuid() != 0:
        print("  NOT RUN: mounting a tmpfs needs root")
        failures.append("disk: not run (needs root)")
        return
    mount = Path(tempfile.mkdtemp(prefix="chaos-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={opts.disk_mb}m", "tmpfs", str(mount)], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="chaos-disk-work-") as tmp:
            db = mount / "aggregator.db"
            settings = f"output_dir: {mount / 'feeds'}"
            rig = Rig(Path(tmp), opts.disk_sources, f"sqlite:///{db}", delay=opts.delay, settings=settings)
            try:
                run = fill_and_recover(rig, mount, db)
            finally:
                rig.close()
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # still open somewhere: detach
        with contextlib.suppress(OSError):
            mount.rmdir()
    errors = [line for line in run.log.splitlines() if " ERROR " in line or " WARNING " in line]
    full_lines = [line for line in errors if "full" in line or "No space" in line]
    missing = opts.disk_sources * ITEMS - run.items
    print(
        f"  filled at {run.at_full} committed sources; {run.during} while full;"
        f" worker up while full: {run.up_while_full}"
    )
    print(
        f"  error lines about the full disk: {len(full_lines)} (of {len(errors)} error/warning lines);"
        f" tracebacks: {run.log.count('Traceback')}"
    )
    for line in sorted({line[24:].split(" (")[0][:160] for line in full_lines})[:4]:
        print(f"    {line}")
    print(f"  integrity_check while full: {run.integrity_full}; after: {run.integrity_after}")
    print(f"  space back: first commit after {run.recovery:.1f} s; worker never restarted: {run.up}")
    print(f"  final: {run.items} items of {opts.disk_sources * ITEMS}, missing {missing}, problems {run.problems}")
    recovered = run.full_seen and run.resumed and run.finished and run.up and run.up_while_full
    if not recovered or missing or any(run.problems.values()):
        failures.append("disk: no clear error, or no recovery once space returned (see above)")
    if run.integrity_full != "ok" or run.integrity_after != "ok" or "Traceback" in run.log:
        failures.append("disk: database corrupt or a traceback in the log")


def integrity(db: Path) -> str:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return str(conn.execute("pragma integrity_check").fetchone()[0])
    except sqlite3.Error as exc:
        return f"error: {exc}"


def concurrent_start(opts: argparse.Namespace, failures: list[str]) -> None:
    print(
        f"\n## workers started at the same instant on a fresh PostgreSQL database, {opts.start_repeats} times each",
        flush=True,
    )
    sources = 12
    for workers in (2, 4):
        stayed_up = fetched_once = 0
        for _ in range(opts.start_repeats):
            with (
                database(opts.database_url, keep=False) as url,
                tempfile.TemporaryDirectory(prefix="chaos-start-") as tmp,
            ):
                rig = Rig(Path(tmp), sources, url, delay=0.0)
                try:
                    processes = [rig.spawn(f"worker{n}") for n in range(workers)]

                    def settled() -> bool:
                        synced = rig.logs().count("sources: ") >= workers  # noqa: B023
                        return synced and len({r.path for r in rig.server.requests}) == sources  # noqa: B023

                    wait_until(lambda: settled() or any(p.poll() is not None for p in processes), 60)  # noqa: B023
                    time.sleep(1.5)
                    up = all(p.poll() is None for p in processes)
                    hits = Counter(r.path for r in rig.server.requests)
                finally:
                    rig.close()
            stayed_up += up
            fetched_once += up and len(hits) == sources and set(hits.values()) == {1}
            if not up:
                print(
                    "    a worker exited: "
                    + " | ".join(line for line in rig.logs().splitlines() if "aggregator:" in line)
                )
        print(
            f"  N={workers}: all stayed up in {stayed_up}/{opts.start_repeats} runs;"
            f" every source fetched once in {fetched_once}/{opts.start_repeats}"
        )
        if stayed_up != opts.start_repeats or fetched_once != opts.start_repeats:
            failures.append(f"start: N={workers} failed in some runs")


SCENARIOS = {"kill9": kill9, "pg": pg_restart, "disk": full_disk, "start": concurrent_start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="kill9,pg,disk,start", help="comma-separated: kill9, pg, disk, start")
    parser.add_argument("--sources", type=int, default=1000, help="sources of the kill -9 ingest")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--pg-sources", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=5.0, help="seconds PostgreSQL stays down (pg)")
    parser.add_argument("--disk-sources", type=int, default=400)
    # Above SQLite's WAL checkpoint threshold (64 MB, store/database.py): on a smaller disk the
    # write-ahead log alone fills it before any checkpoint, and the filler would not be needed.
    parser.add_argument("--disk-mb", type=int, default=128, help="size of the tmpfs (disk)")
    parser.add_argument("--start-repeats", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each feed takes to answer")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--database-url", default=DEFAULT_ADMIN, help="admin URL of the server for 'start'")
    parser.add_argument("--short", action="store_true", help="small sizes, for CI")
    opts = parser.parse_args(argv)
    if opts.short:
        opts.sources, opts.kills, opts.pg_sources, opts.outage = 120, 3, 120, 2.0
        opts.disk_sources, opts.start_repeats = 120, 1
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"cores {os.cpu_count()}, load {load()}, Python {platform.python_version()}")
    failures: list[str] = []
    for name in opts.scenarios.split(","):
        started = time.monotonic()
        SCENARIOS[name.strip()](opts, failures)
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    if failures:
        for failure in failures:
            print(f"FAIL: {failure}")
        return 1
    print("RESULT ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
