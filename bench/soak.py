"""Soak: the real daemon polling >= 1,000 misbehaving local sources for several cycles.

What runs
    The scheduler half of ``aggregator worker`` — ``daemon.Daemon(poll=True, http=False)``
    with its APScheduler tick, ``Pipeline``, ``Fetcher`` and a real SQLite file — in this
    process, against an HTTP server in a *separate* process on 127.0.0.1 (so the CPU
    figure is the daemon's alone). Nothing else is contacted.

    First a warm-up polls every source once (``poll --once --all``: full bodies, parsing,
    ingest) and is timed on its own; then the daemon starts on that database, as after a
    restart, and runs for ``--duration`` seconds until it is sent SIGTERM. The figures
    below are for the daemon's run, where polling — not first-time ingest — is the work.

Time: real, with short intervals (not an accelerated clock)
    Every source's interval is ``--interval`` seconds (default 45 s instead of 30 min,
    40 times denser), ``min_interval`` 10 s, ``max_backoff`` 120 s, ``tick_seconds`` 1.
    A real clock keeps the server's Retry-After dates, the slow sources' delays, timeouts
    and the database's ``next_poll_at`` on one time line, so "earlier than allowed" can be checked against
    the wall clock without translating anything. The cost is that a cycle is 45 s, so a
    run of a few minutes covers ~5 cycles.

The sources (``--sources``, default 1,200), by behaviour
    etag      ETag + Last-Modified, unchanged: 304 to every conditional request
    changing  a new item about every 1.5 intervals (new ETag); otherwise 304
    throttled every third request answered 429 or 503 with Retry-After 45 s, in the
              seconds form for even sources and the HTTP-date form for odd ones; these
              sources are reached as http://localhost:PORT (their own host)
    failing   500 every time (backoff doubles up to max_backoff, never disabled)
    flaky     500 on every other request (error, then recovery)
    slow      answers after 1.5 s
    moved     301 to a new path (the stored URL moves; later polls go there directly)
    cached    Cache-Control: max-age=90 (polled every 90 s, not every 45 s)

What it prints
    * polls (and HTTP requests) per source per cycle, per behaviour, while the daemon ran
      (cycles = run time / interval), and the longest time one source went unpolled;
    * the share of conditional requests (If-None-Match / If-Modified-Since) answered 304;
    * polls earlier than allowed. "Allowed" is checked two ways and both must be 0:
      (a) against the database: a request for a source arriving before the
      ``next_poll_at`` stored by that source's previous poll, or the later one a poll of
      another source on a throttling host moved it to (read from a ledger the store writes
      after each commit); (b) against the server: a request arriving before
      the moment its last 429/503 said (Retry-After seconds from when it was sent, or
      the HTTP date);
    * sources left unpolled past their due time: sampled every second from the database,
      the most sources ever overdue by more than ``--late`` seconds (default 5: one tick
      plus the slow sources' delay plus a few batches), and the lateness distribution of
      every poll (arrival minus the stored next_poll_at, or minus the later time a poll of
      another source on a throttling host moved it to), with the latest few placed in the run;
    * the daemon's CPU seconds (this process: every thread, including the in-process
      parsing, as ``parse_workers`` is 0) per 1,000 conditional polls over the whole run,
      and, separately, for a burst where every etag source is made due at once and
      answers 304 — the cost of a conditional poll on its own;
    * the daemon's resident memory, sampled every second: when it started, after its first
      cycle, at the end, and how much it still grew over the second half of the run (its
      caches are bounded but fill as items arrive; a leak would keep growing);
    * how it was run: arguments, cores, load, Python and library versions.

Run:  .venv/bin/python bench/soak.py            (a warm-up of 1-3 minutes, then 4 minutes)
      .venv/bin/python bench/soak.py --sources 1000 --duration 120
      .venv/bin/python bench/soak.py --duration 5400   (a long soak: from 20 minutes of daemon
                                                        time, its memory at each tenth of the run)
      .venv/bin/python bench/soak.py --duration 2700 --small-caches --trace-memory
                                                       (whether memory still grows once the caches
                                                        are full, and where: Python's allocations
                                                        or SQLite's heap)
      .venv/bin/python bench/soak.py --duration 3600 --small-caches --count-objects
                                                       (untraced, which types of objects grow)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ctypes
import ctypes.util
import functools
import gc
import heapq
import logging
import math
import multiprocessing
import os
import platform
import signal
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aggregator import malloc, names, semantic, stories, wordpieces  # noqa: E402
from aggregator.config import LoadedConfig, load_config  # noqa: E402
from aggregator.daemon import Daemon  # noqa: E402
from aggregator.fetch import Fetcher  # noqa: E402
from aggregator.pipeline import Pipeline, fetch_options  # noqa: E402
from aggregator.store.database import ensure_schema, make_engine  # noqa: E402
from aggregator.store.models import SourceRow  # noqa: E402
from aggregator.store.repository import IngestTransaction, Store  # noqa: E402

MIX = [  # (behaviour, share of sources)
    ("etag", 0.65),
    ("changing", 0.08),
    ("throttled", 0.06),
    ("failing", 0.04),
    ("flaky", 0.04),
    ("slow", 0.05),
    ("moved", 0.04),
    ("cached", 0.04),
]
RETRY_AFTER = 45
SLOW_SECONDS = 1.5
MAX_AGE = 90
# The throttling publisher is its own host, as it would be in the wild: 72 sources answering
# 429/503 on the host that also serves the other 1,128 would make that whole host a
# throttling one. "localhost" is 127.0.0.1 here (see /etc/hosts); nothing else is contacted.
HOSTS = {"throttled": "localhost"}
ITEMS = 5  # per feed: enough to parse and dedupe, few enough that the warm-up stays short


# --- the misbehaving server, in its own process ------------------------------------------------


def behaviours(count: int) -> list[str]:
    """Deterministic assignment, interleaved so no batch is all of one kind."""
    cumulative, out = [], []
    total = 0.0
    for name, share in MIX:
        total += share
        cumulative.append((total, name))
    for n in range(count):
        position = ((n * 0.6180339887) % 1.0) * total
        out.append(next(name for edge, name in cumulative if position < edge))
    return out


def rss(source: int, version: int) -> bytes:
    items = "".join(
        f"<item><title>Source {source} story {k}</title><link>https://soak.example/{source}/{k}</link>"
        f"<guid>https://soak.example/{source}/{k}</guid><description>Story {k} of source {source}, "
        f"with a paragraph of text that a real feed would carry.</description>"
        f"<pubDate>Fri, 20 Nov 2026 {k % 24:02d}:00:00 GMT</pubDate></item>"
        for k in range(version, version + ITEMS)
    )
    return (
        f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Soak {source}</title>"
        f"<link>https://soak.example/{source}</link><description>soak</description>{items}</channel></rss>"
    ).encode()


class SoakServer:
    """A keep-alive HTTP/1.1 server on asyncio streams; logs every request with its outcome."""

    def __init__(self, kinds: list[str], interval: float) -> None:
        self.kinds = kinds
        self.interval = interval
        self.started = time.time()
        self.counts: Counter[int] = Counter()
        # (source, arrival, status, conditional, not_before) — not_before: Retry-After deadline sent
        self.log: list[tuple[int, float, int, bool, float | None]] = []

    async def serve(self, conn: Any) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0, backlog=512)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        server.close()
        conn.send(self.log)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                path = line.split()[1].decode()
                status, out_headers, body = await self._answer(path, headers)
                head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
                head += [f"{k}: {v}" for k, v in out_headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (ConnectionError, IndexError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        arrival = time.time()
        _, prefix, number = path.split("/")
        source = int(number)
        kind = self.kinds[source]
        conditional = "if-none-match" in headers or "if-modified-since" in headers
        nth = self.counts[source]
        self.counts[source] += 1
        status, out, body, not_before = 200, {"Content-Type": "application/rss+xml"}, b"", None
        if kind == "moved" and prefix == "s":
            status, out = 301, {"Location": f"/moved/{source}"}
        elif kind == "failing" or (kind == "flaky" and nth % 2 == 0):
            status, body = 500, b"oops"
        elif kind == "throttled" and nth % 3 == 1:
            status = 429 if source % 4 < 2 else 503
            not_before = time.time() + RETRY_AFTER
            if source % 2 == 0:
                out = {"Retry-After": str(RETRY_AFTER)}
            else:
                not_before = float(int(not_before) + 1)  # HTTP dates have whole seconds
                out = {"Retry-After": format_datetime(datetime.fromtimestamp(not_before, UTC), usegmt=True)}
        else:
            if kind == "slow":
                await asyncio.sleep(SLOW_SECONDS)
            version = int((arrival - self.started) / (self.interval * 1.5)) if kind == "changing" else 0
            etag = f'"{source}-{version}"'
            out = {"ETag": etag, "Last-Modified": "Fri, 20 Nov 2026 12:00:00 GMT", **out}
            if kind == "cached":
                out["Cache-Control"] = f"max-age={MAX_AGE}"
            if headers.get("if-none-match") == etag:
                status = 304
            else:
                body = rss(source, version)
        self.log.append((source, arrival, status, conditional, not_before))
        return status, out, body


def run_server(conn: Any, kinds: list[str], interval: float) -> None:
    asyncio.run(SoakServer(kinds, interval).serve(conn))


# --- the ledger: what the daemon stored after each poll ----------------------------------------


@dataclass(frozen=True)
class Stored:
    source_id: int
    committed: float  # wall clock, after the commit
    next_poll_at: float | None


class _Packed:
    """Stored entries appended to a file as packed records (24 bytes each), read back once the
    daemon has stopped. Kept in the daemon's process they grew its memory with every poll (as
    objects, 185 bytes each: most of a 90-minute run's growth; packed in arrays, still about
    8 MB over a 2-hour run), which then had to be told apart from the daemon's own."""

    RECORD = struct.Struct("=qdd")  # source id, committed, next_poll_at (NaN: none)

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("ab", buffering=0)

    def add(self, committed: float, entries: list[tuple[int, float | None]]) -> None:
        if entries:
            pack = self.RECORD.pack
            self._file.write(b"".join(pack(s, committed, math.nan if at is None else at) for s, at in entries))

    def rows(self) -> list[Stored]:
        return [
            Stored(source, committed, None if math.isnan(at) else at)
            for source, committed, at in self.RECORD.iter_unpack(self._path.read_bytes())
        ]


class LedgerStore(Store):
    """The real store, noting each committed poll's next_poll_at (the schedule we must honour),
    and each move of a throttling host's other sources. It lives in the daemon's process, whose
    memory the soak measures, and gains an entry a poll, so the entries go to files in
    ``directory`` (``_Packed``)."""

    def __init__(self, *args: Any, directory: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._polls, self._moves = _Packed(directory / "polls.ledger"), _Packed(directory / "moves.ledger")
        self._lock = threading.Lock()

    def ledger(self) -> list[Stored]:
        """The committed polls, in commit order."""
        with self._lock:
            return self._polls.rows()

    def postponed(self) -> list[Stored]:
        """The other sources of a throttling host that a poll moved later, in commit order: each
        one's time to honour from then on (``IngestTransaction.postpone``, never earlier)."""
        with self._lock:
            return self._moves.rows()

    @contextmanager
    def ingest(self) -> Iterator[IngestTransaction]:
        recorded: list[tuple[int, float | None]] = []
        moved: list[tuple[int, float | None]] = []
        with super().ingest() as tx:
            original, original_postpone = tx.record_poll, tx.postpone

            def record_poll(source_id: int, result: Any, record: Any) -> None:
                original(source_id, result, record)
                at = record.next_poll_at.timestamp() if record.next_poll_at is not None else None
                recorded.append((source_id, at))

            def postpone(moves: dict[int, tuple[datetime, str]]) -> None:
                original_postpone(moves)
                moved.extend((source_id, at.timestamp()) for source_id, (at, _reason) in moves.items())

            tx.record_poll = record_poll  # type: ignore[method-assign]
            tx.postpone = postpone  # type: ignore[method-assign]
            yield tx
        committed = time.time()
        with self._lock:
            self._polls.add(committed, recorded)
            self._moves.add(committed, moved)


# --- the run ---------------------------------------------------------------------------------


def write_config(directory: Path, port: int, kinds: list[str], opts: argparse.Namespace) -> Path:
    lines = [
        "settings:",
        f"  data_dir: {directory}",
        "  public_url: http://soak.invalid",
        "  allow_private_networks: true",
        "  parse_workers: 0",
        f"  default_interval: {opts.interval}s",
        "  min_interval: 10s",
        "  max_interval: 300s",
        "  max_backoff: 120s",
        f"  concurrency: {opts.concurrency}",
        f"  per_host_concurrency: {opts.concurrency}",  # 1,128 of the sources share one host
        "  tick_seconds: 1",
        "  connect_timeout: 5",
        "  read_timeout: 10",
        "  total_timeout: 20",
        "sources:",
    ]
    for n, kind in enumerate(kinds):
        lines += [
            f"  - name: {kind}-{n:05d}",
            f"    url: http://{HOSTS.get(kind, '127.0.0.1')}:{port}/s/{n}",
            f"    interval: {opts.interval}s",
        ]
    lines += ["outputs:", "  - slug: all", "    title: Everything"]
    path = directory / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def sample_overdue(db: Path, late: float, stop: threading.Event, samples: list[tuple[float, int, int]]) -> None:
    """Every second: how many active, unleased sources are past due by more than ``late`` seconds,
    and this process's resident memory (the daemon runs here) in bytes."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    while not stop.wait(1.0):
        cutoff = datetime.fromtimestamp(time.time() - late, UTC).replace(tzinfo=None).isoformat(sep=" ")
        (count,) = conn.execute(
            "SELECT count(*) FROM sources WHERE retired_at IS NULL AND enabled AND in_config "
            "AND next_poll_at < ? AND lease_until IS NULL",
            (cutoff,),
        ).fetchone()
        samples.append((time.time(), int(count), resident_bytes()))
    conn.close()


def resident_bytes() -> int:
    """This process's resident set size now (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@functools.cache
def _sqlite_library() -> ctypes.CDLL | None:
    """The shared SQLite library Python's ``sqlite3`` runs, looked up once; None where none of
    its version is found (a build with its own copy of SQLite would count nothing)."""
    try:
        library = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        return None
    library.sqlite3_libversion.restype = ctypes.c_char_p
    if library.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return library


def sqlite_bytes() -> int | None:
    """What SQLite holds on its own heap in this process now (``sqlite3_memory_used``, over every
    connection: mostly their page caches, each up to ``database.SQLITE_CACHE_KIB``), which
    Python's allocation counts never see; None where it cannot be asked (``_sqlite_library``)."""
    library = _sqlite_library()
    return None if library is None else int(library.sqlite3_memory_used())


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd")] + [
        (name, ctypes.c_size_t) for name in ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


@functools.cache
def _mallinfo2() -> Any:
    """glibc's ``mallinfo2`` (2.33 on), looked up once; None elsewhere."""
    function = malloc.c_function("mallinfo2")
    if function is None:
        return None
    function.restype = _MallInfo2
    return function


def malloc_bytes() -> tuple[int, int] | None:
    """What C's allocator holds in this process now, over every arena: (in use, free but kept).
    Growth of the first that Python's own counts do not show is a C library's (SQLite, the
    model's arrays); growth of the second alone is fragmentation, memory the process keeps
    but could reuse. None without glibc."""
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return int(info.uordblks + info.hblkhd), int(info.fordblks)


def heaps() -> dict[str, tuple[int, int]]:
    """The heaps below the caches, as (size, 0) entries printed beside them (no bound of their
    own): SQLite's and C's allocator's in KiB, and the count of Python's small objects, which
    live in Python's own arenas outside malloc's figures. Each one absent where it cannot be read."""
    found = {"Python's blocks": (sys.getallocatedblocks(), 0)}
    heap = sqlite_bytes()
    if heap is not None:
        found["SQLite heap, KiB"] = (heap // 1024, 0)
    held = malloc_bytes()
    if held is not None:
        found["malloc in use, KiB"] = (held[0] // 1024, 0)
        found["malloc free, KiB"] = (held[1] // 1024, 0)
    return found


async def poll_everything_once(config_path: Path, store: Store) -> int:
    """The warm-up: every source's first poll (full bodies, parsing, ingest), as `poll --once --all`."""
    config = load_config(config_path).config
    pipeline = Pipeline(config, store, parse_pool=None)
    async with Fetcher(fetch_options(config)) as fetcher:
        return (await pipeline.poll_due(fetcher)).polled


async def conditional_burst(config_path: Path, store: Store, names: list[str]) -> tuple[int, float, float]:
    """Make every etag source due now and poll them once: each answers 304. Returns (polls, cpu, wall)."""
    config = load_config(config_path).config
    now = datetime.now(UTC)
    with store.session() as s:
        s.execute(update(SourceRow).where(SourceRow.name.in_(names)).values(next_poll_at=now))
    pipeline = Pipeline(config, store, parse_pool=None)
    async with Fetcher(fetch_options(config)) as fetcher:
        cpu, wall = time.process_time(), time.perf_counter()
        summary = await pipeline.poll_due(fetcher, until=now)
        return summary.not_modified, time.process_time() - cpu, time.perf_counter() - wall


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figures:
    """Everything measured; ``report`` only formats it."""

    opts: argparse.Namespace
    kinds: list[str]
    log: list[tuple[int, float, int, bool, float | None]]
    ledger: list[Stored]
    postponed: list[Stored]
    index_of: dict[int, int]
    samples: list[tuple[float, int, int]]  # when, sources overdue, resident bytes
    kept: list[tuple[float, dict[str, tuple[int, int]]]]  # when, the story matcher's caches (entries, most kept)
    warm_up: float
    daemon_start: float
    daemon_end: float
    cpu_run: float
    retired: int
    burst: tuple[int, float, float]
    growth: list[str]  # --trace-memory: where Python's allocations grew over the second half
    census: list[str]  # --count-objects: the types of tracked objects that grew the most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1200)
    parser.add_argument("--interval", type=int, default=45, help="seconds between polls of one source")
    parser.add_argument("--duration", type=float, default=240, help="seconds the daemon runs after the warm-up")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--late", type=float, default=5.0, help="seconds past due that count as 'left unpolled'")
    parser.add_argument(
        "--small-caches",
        action="store_true",
        help="shrink the story matcher's and the parser's caches so they fill inside a short run",
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="trace Python's allocations (from the warm-up on) and print where they grew over the daemon's second half "
        "(the run's RSS then includes the tracing and its snapshots: read the memory off an untraced run)",
    )
    parser.add_argument(
        "--count-objects",
        action="store_true",
        help="count the objects Python's collector tracks, by type, at the second tenth and at the end, and print "
        "the types that grew the most",
    )
    opts = parser.parse_args()
    if opts.sources < 1000:
        parser.error("the soak wants >= 1000 sources")
    # As aggregator's commands start (cli.main), before any thread: the memory read is the daemon's.
    opts.arenas_limited = malloc.limit_arenas()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("aggregator").setLevel(logging.ERROR)  # 429/500 sources warn on every poll
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "tick skipped: still running" is expected

    if opts.small_caches:
        shrink_caches()
    kinds = behaviours(opts.sources)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=run_server, args=(child, kinds, opts.interval), daemon=True)
    server.start()
    port = parent.recv()
    try:
        figures = soak(opts, kinds, port)
    finally:
        parent.send("stop")
        log: list[tuple[int, float, int, bool, float | None]] = parent.recv()
        server.join(timeout=10)
    figures.log = log
    report(figures)
    return 0


SMALL_CACHES = {
    "DECODED_MEMBERS": 3_000,
    "SETTLED_STORIES": 500,
    "names.WORDS_REMEMBERED": 1_000,
    "RARE_WORDS_REMEMBERED": 1_000,
    "wordpieces.WORDS_REMEMBERED": 2_000,
}
"""The largest caches' bounds under ``--small-caches``: at their shipped sizes they fill after
hours of this stream, so a run of half an hour cannot tell their filling from a leak. With these
they are full within minutes, and any growth after that is not theirs."""


def shrink_caches() -> None:
    """Set ``SMALL_CACHES`` (module constants read at each use, so they hold from here on)."""
    from aggregator import storymatch

    storymatch.DECODED_MEMBERS = SMALL_CACHES["DECODED_MEMBERS"]
    storymatch.SETTLED_STORIES = SMALL_CACHES["SETTLED_STORIES"]
    names.WORDS_REMEMBERED = SMALL_CACHES["names.WORDS_REMEMBERED"]
    stories.RARE_WORDS_REMEMBERED = SMALL_CACHES["RARE_WORDS_REMEMBERED"]
    wordpieces.WORDS_REMEMBERED = SMALL_CACHES["wordpieces.WORDS_REMEMBERED"]


TRACED_FRAMES = 1
"""Frames kept per traced allocation (``--trace-memory``): the one that allocated. More would
reach the project's own code from inside a library, but slow the daemon until it falls behind
its schedule (with five it did on this bench), and a daemon behind its work grows for that
reason alone."""
GROWTH_SHOWN = 15


def memory_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    """Where Python's traced allocations grew between two snapshots, largest first: each
    place's growth in bytes and blocks, at the innermost frame of this project's code and the
    innermost frame overall (the one that allocated)."""
    lines = []
    ignored = (tracemalloc.Filter(False, tracemalloc.__file__),)
    diff = after.filter_traces(ignored).compare_to(before.filter_traces(ignored), "traceback")
    for stat in sorted(diff, key=lambda d: d.size_diff, reverse=True)[:GROWTH_SHOWN]:
        frames = list(stat.traceback)  # most recent call first
        own = next((fr for fr in frames if str(REPO) in fr.filename and "/.venv/" not in fr.filename), None)
        where = f"{Path(own.filename).relative_to(REPO)}:{own.lineno}" if own else "(no project frame)"
        innermost = f"{Path(frames[0].filename).name}:{frames[0].lineno}" if frames else "?"
        lines.append(
            f"{stat.size_diff / 1024:+9.0f} KiB {stat.count_diff:+8,} blocks  {where}  (allocated at {innermost})"
        )
    return lines


class MemoryTrace:
    """``--trace-memory``: Python's allocations traced from the warm-up on, the traced total
    at each tenth of the run, and a snapshot halfway to compare the end with (``memory_growth``).
    Off, each step does nothing."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.halfway: tracemalloc.Snapshot | None = None
        self.traced: list[int] = []

    def start(self) -> None:
        if self.on:
            tracemalloc.start(TRACED_FRAMES)

    def tenth(self, tenth: int) -> None:
        if self.on:
            self.traced.append(tracemalloc.get_traced_memory()[0])
            if tenth == 5:
                self.halfway = tracemalloc.take_snapshot()

    def stop(self) -> list[str]:
        """What ``Figures.growth`` holds: the traced totals, then where it grew (nothing if the
        run ended before the snapshot halfway)."""
        if not self.on:
            return []
        now, overhead = tracemalloc.get_traced_memory()[0], tracemalloc.get_tracemalloc_memory()
        growth = memory_growth(self.halfway, tracemalloc.take_snapshot()) if self.halfway else []
        tracemalloc.stop()
        path = ", ".join(f"{size / (1 << 20):.1f}" for size in (*self.traced, now))
        # Tracing keeps a record per live block outside what it traces: the RSS of a traced run
        # grows by that much more, which an untraced run's figures do not have.
        head = f"traced at each tenth and at the end: {path} MB; tracing itself held {overhead / (1 << 20):.0f} MB"
        return [head, *growth] if growth else []


class ObjectCensus:
    """``--count-objects``: the objects Python's collector tracks (containers and instances, not
    strings or numbers), counted by type at the second tenth of the run, once the caches are
    full, and at the end; ``stop`` gives the types whose numbers grew the most. It names what
    an untraced run's growth in Python's blocks is made of, at a cost of one pass over the
    objects (about a second) at each of the two counts."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.early: Counter[str] = Counter()

    @staticmethod
    def count() -> Counter[str]:
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())

    def tenth(self, tenth: int) -> None:
        if self.on and tenth == 2:
            self.early = self.count()

    def stop(self) -> list[str]:
        if not self.on or not self.early:
            return []
        late = self.count()
        late.subtract(self.early)
        grown = [(kind, change) for kind, change in late.most_common(GROWTH_SHOWN) if change > 0]
        total = sum(late.values())
        head = f"objects the collector tracks, from the second tenth to the end: {total:+,}"
        return [head, *(f"{change:+9,}  {kind}" for kind, change in grown)]


def soak(opts: argparse.Namespace, kinds: list[str], port: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="aggregator-soak-") as tmp:
        directory = Path(tmp)
        config_path = write_config(directory, port, kinds, opts)
        loaded = load_config(config_path)
        engine = make_engine(loaded.config.settings.database_url)
        ensure_schema(engine)
        store = LedgerStore(engine, directory=directory)
        store.sync_sources(loaded.config.source_specs(), datetime.now(UTC))

        # Traced from before the warm-up: the caches the daemon then turns over hold warm-up
        # entries, and replacing untraced ones with traced ones would read as growth.
        trace = MemoryTrace(opts.trace_memory)
        census = ObjectCensus(opts.count_objects)
        trace.start()
        started = time.perf_counter()
        asyncio.run(poll_everything_once(config_path, store))
        warm_up = time.perf_counter() - started

        # Then the daemon starts on that database, as after a restart: it resumes the stored schedule.
        daemon = Daemon(LoadedConfig(loaded.config, config_path), store, poll=True, http=False)
        stop_sampling = threading.Event()
        samples: list[tuple[float, int, int]] = []
        kept: list[tuple[float, dict[str, tuple[int, int]]]] = []
        db = directory / "aggregator.db"

        def caches() -> None:
            """The story matcher's and the parser's caches at each tenth of the run (and at
            its end): whether the memory's growth is theirs filling, which stops at their
            bounds."""
            for tenth in range(1, 11):
                if stop_sampling.wait(opts.duration / 10 if tenth < 10 else opts.duration / 10 - 2):
                    break
                if daemon.pipeline is not None:
                    # parse_workers is 0: the parser's word caches live in this process too.
                    cached = {
                        **daemon.pipeline.stories.kept(),
                        "names' words": names.words_remembered(),
                        "term hashes": names.term_keys_kept(),
                        "rare words": stories.rare_words_remembered(),
                        "word pieces": semantic.words_remembered(),
                    }
                    kept.append((time.time(), {**cached, **heaps()}))
                trace.tenth(tenth)
                census.tenth(tenth)

        async def run() -> None:
            # Stop the way an operator does: SIGTERM, after --duration seconds.
            asyncio.get_running_loop().call_later(opts.duration, os.kill, os.getpid(), signal.SIGTERM)
            await daemon.run()

        sampler = threading.Thread(target=sample_overdue, args=(db, opts.late, stop_sampling, samples), daemon=True)
        watcher = threading.Thread(target=caches, daemon=True)
        cpu0, daemon_start = time.process_time(), time.time()
        sampler.start()
        watcher.start()
        asyncio.run(run())
        cpu_run, daemon_end = time.process_time() - cpu0, time.time()
        growth = trace.stop()
        census_lines = census.stop()
        stop_sampling.set()
        sampler.join()
        watcher.join()

        with sqlite3.connect(db) as conn:
            source_names = dict(conn.execute("SELECT id, name FROM sources").fetchall())
            retired = conn.execute("SELECT count(*) FROM sources WHERE retired_at IS NOT NULL").fetchone()[0]
        ledger, postponed = store.ledger(), store.postponed()
        etag_names = [name for name in source_names.values() if name.startswith("etag-")]
        burst = asyncio.run(conditional_burst(config_path, store, etag_names))
        engine.dispose()
    return Figures(
        opts=opts,
        kinds=kinds,
        log=[],
        ledger=ledger,
        postponed=postponed,
        index_of={source_id: int(name.rsplit("-", 1)[1]) for source_id, name in source_names.items()},
        samples=samples,
        kept=kept,
        warm_up=warm_up,
        daemon_start=daemon_start,
        daemon_end=daemon_end,
        cpu_run=cpu_run,
        retired=retired,
        burst=burst,
        growth=growth,
        census=census_lines,
    )


Request = tuple[float, int, bool, float | None]  # arrival, status, conditional, Retry-After promise


LATEST_SHOWN = 5
"""How many of the latest polls the report places in the run."""


@dataclass(frozen=True, order=True)
class Late:
    """One poll that came late, placed in the run: enough to tell a source the daemon left
    overdue from one whose stored time was set long before (by the warm-up, or by a poll that
    failed to commit)."""

    lateness: float
    kind: str
    source: int
    arrival: float  # seconds after the daemon started (negative: during the warm-up)
    set_at: float  # when the time it came after was stored (its poll's commit or a move), same clock
    poll: int  # how many of the source's commits came before (1: the one after its first)


@dataclass
class Earliness:
    """Polls against the stored schedule: which came early, how late the rest came."""

    early: int
    examples: list[tuple[str, int, float]]
    lateness: list[float]
    polls_by_kind: Counter[str]
    latest: list[Late]
    """The latest polls (``LATEST_SHOWN``), latest first: where a long tail comes from."""
    longest_wait: dict[str, float]
    """Per behaviour, the longest time one source went unpolled while the daemon ran (from its
    start, between polls, and to its end): a throttling host's sources wait out its
    Retry-After together, and none should starve."""


def against_schedule(f: Figures, by_source: dict[int, list[Request]]) -> Earliness:
    """The commit governing a request is the source's last commit before it arrived; requests
    sharing one governing commit are one poll (a 301 and the hop after it), since a source is not
    claimed again before its poll commits."""
    commits: defaultdict[int, list[Stored]] = defaultdict(list)
    for stored in f.ledger:
        commits[f.index_of[stored.source_id]].append(stored)
    moves: defaultdict[int, list[Stored]] = defaultdict(list)
    for stored in f.postponed:
        moves[f.index_of[stored.source_id]].append(stored)
    found = Earliness(0, [], [], Counter(), [], {})
    latest: list[Late] = []
    for source, requests in by_source.items():
        history = sorted(commits[source], key=lambda c: c.committed)
        times = [c.committed for c in history]
        seen_governing: set[int] = set()
        previous = f.daemon_start  # the waits count from the start of the run to its end
        for arrival, _status, _conditional, _promised in sorted(requests):
            governing = bisect.bisect_left(times, arrival) - 1  # -1: before any commit (the first poll)
            if governing in seen_governing:
                continue
            seen_governing.add(governing)
            if arrival >= f.daemon_start:
                found.polls_by_kind[f.kinds[source]] += 1
                _waited(found, f.kinds[source], arrival - previous)
                previous = arrival
            allowed, set_at = honoured(history[governing], moves[source], arrival) if governing >= 0 else (None, 0.0)
            if allowed is not None:
                found.lateness.append(arrival - allowed)
                late = Late(
                    arrival - allowed, f.kinds[source], source, arrival - f.daemon_start,
                    set_at - f.daemon_start, governing + 1,
                )  # fmt: skip
                if len(latest) < LATEST_SHOWN:
                    heapq.heappush(latest, late)
                else:
                    heapq.heappushpop(latest, late)
                if arrival < allowed:
                    found.early += 1
                    found.examples.append((f.kinds[source], source, round(arrival - allowed, 3)))
        _waited(found, f.kinds[source], f.daemon_end - previous)
    found.latest = sorted(latest, reverse=True)
    return found


def _waited(found: Earliness, kind: str, wait: float) -> None:
    found.longest_wait[kind] = max(found.longest_wait.get(kind, 0.0), wait)


def honoured(polled: Stored, moves: list[Stored], arrival: float) -> tuple[float | None, float]:
    """The time a request arriving at ``arrival`` had to wait for, and when it was stored: the
    one its source's last poll stored, or a later one that a poll of another source on a
    throttling host moved it to since (``IngestTransaction.postpone``: never earlier)."""
    allowed, set_at = polled.next_poll_at, polled.committed
    if allowed is None:
        return None, set_at
    for move in moves:
        to = move.next_poll_at
        if to is not None and to > allowed and polled.committed < move.committed < arrival:
            allowed, set_at = to, move.committed
    return allowed, set_at


def early_against_retry_after(by_source: dict[int, list[Request]]) -> int:
    """Requests that came before the server's own Retry-After promise allowed."""
    early = 0
    for requests in by_source.values():
        not_before = None
        for arrival, _status, _conditional, promised in sorted(requests):
            if not_before is not None and arrival < not_before:
                early += 1
            if promised is not None:
                not_before = promised
    return early


def report(f: Figures) -> None:
    opts, kinds = f.opts, f.kinds
    # The burst at the end moved next_poll_at by hand: its requests are not part of the schedule.
    scheduled = [entry for entry in f.log if entry[1] <= f.daemon_end]
    run_time = f.daemon_end - f.daemon_start
    cycles = run_time / opts.interval

    by_source: defaultdict[int, list[Request]] = defaultdict(list)
    for source, arrival, status, conditional, not_before in scheduled:
        by_source[source].append((arrival, status, conditional, not_before))
    schedule = against_schedule(f, by_source)
    early_retry = early_against_retry_after(by_source)

    in_run = [entry for entry in scheduled if entry[1] >= f.daemon_start]
    conditional_requests = [entry for entry in in_run if entry[3]]
    answered_304 = sum(1 for entry in conditional_requests if entry[2] == 304)
    cond_by_kind: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for source, _arrival, status, is_conditional, _nb in in_run:
        if is_conditional:
            cond_by_kind[kinds[source]][0] += 1
            cond_by_kind[kinds[source]][1] += status == 304
    requests_by_kind = Counter(kinds[entry[0]] for entry in in_run)
    per_kind = Counter(kinds)

    print_setting(f, run_time, cycles, len(in_run))
    print(
        "polls per source per cycle while the daemon ran (a 301 and its hop count as one poll), "
        "and the longest one source went unpolled:"
    )
    for kind, _share in MIX:
        print(
            f"  {kind:<10} {per_kind[kind]:>5} sources  {schedule.polls_by_kind[kind] / per_kind[kind] / cycles:5.2f}"
            f"   ({requests_by_kind[kind] / per_kind[kind] / cycles:4.2f} HTTP requests)"
            f"   longest wait {schedule.longest_wait.get(kind, math.nan):6.0f}s"
        )
    total = sum(schedule.polls_by_kind.values())
    print(f"  {'all':<10} {len(kinds):>5} sources  {total / len(kinds) / cycles:5.2f}")
    print()
    share = answered_304 / len(conditional_requests) if conditional_requests else float("nan")
    print(f"conditional requests answered 304: {answered_304}/{len(conditional_requests)} = {share:.1%}")
    for kind, (count, hits) in sorted(cond_by_kind.items()):
        print(f"  {kind:<10} {hits:>5}/{count:<5} = {hits / count:6.1%}")
    print()
    print(f"polls earlier than allowed: {schedule.early + early_retry}")
    examples = f"  e.g. {schedule.examples[:5]}" if schedule.examples else ""
    print(f"  before the stored next_poll_at: {schedule.early}" + examples)
    print(f"  before the server's Retry-After: {early_retry}")
    print()
    print_lateness(f, schedule)
    print()
    print_cpu(f, run_time, len(conditional_requests))
    print()
    print_memory(f)


def print_setting(f: Figures, run_time: float, cycles: float, requests: int) -> None:
    import httpx
    import sqlalchemy

    opts = f.opts
    print("== aggregator soak ==")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"arguments: sources={opts.sources} interval={opts.interval}s duration={opts.duration:g}s "
        f"concurrency={opts.concurrency} (also per host) late={opts.late:g}s; min_interval=10s max_backoff=120s "
        f"tick=1s parse_workers=0; server: Retry-After={RETRY_AFTER}s slow={SLOW_SECONDS}s max-age={MAX_AGE}s"
    )
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end (shared machine), "
        f"{platform.platform()}; Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"httpx {httpx.__version__}, SQLAlchemy {sqlalchemy.__version__}"
    )
    print(
        f"warm-up (every source's first poll, full body + ingest): {f.warm_up:.0f}s; then the daemon ran "
        f"{run_time:.0f}s = {cycles:.1f} cycles of {opts.interval}s: {requests} requests, {f.retired} retired"
    )
    print()


def print_lateness(f: Figures, schedule: Earliness) -> None:
    lateness = schedule.lateness
    samples = [count for _at, count, _rss in f.samples]
    print(
        f"sources left unpolled more than {f.opts.late:g}s past due (sampled every second): "
        f"max {max(samples, default=0)}, mean {sum(samples) / max(len(samples), 1):.1f}, "
        f"{samples[-1] if samples else 0} at the end"
    )
    print(
        f"  lateness of every poll (arrival - stored next_poll_at): p50 {percentile(lateness, 0.5):.2f}s, "
        f"p90 {percentile(lateness, 0.9):.2f}s, p99 {percentile(lateness, 0.99):.2f}s, "
        f"max {max(lateness, default=float('nan')):.2f}s, min {min(lateness, default=float('nan')):.3f}s "
        f"over {len(lateness)} polls"
    )
    for late in schedule.latest:
        print(
            f"    {late.lateness:8.1f}s late: {late.kind} source {late.source}, its poll after commit {late.poll}, "
            f"at {late.arrival:+.0f}s of the run; its time was stored at {late.set_at:+.0f}s"
        )


def print_cpu(f: Figures, run_time: float, conditional: int) -> None:
    polls_run = sum(1 for stored in f.ledger if f.daemon_start <= stored.committed <= f.daemon_end)
    print(
        f"daemon CPU while it ran: {f.cpu_run:.1f}s over {run_time:.0f}s ({f.cpu_run / run_time:.0%} of one core) = "
        f"{f.cpu_run / max(conditional, 1) * 1000:.2f}s per 1,000 conditional polls "
        f"({f.cpu_run / max(polls_run, 1) * 1000:.2f}s per 1,000 polls of any kind; includes parsing and "
        "ingesting the changed feeds, and publishing)"
    )
    polls, cpu, wall = f.burst
    print(
        f"  conditional polls alone: {polls} etag sources made due at once, each answered 304: "
        f"{cpu:.2f}s CPU in {wall:.1f}s wall = {cpu / max(polls, 1) * 1000:.2f}s per 1,000"
    )


TRAJECTORY_FROM = 1200.0
"""Seconds of daemon run from which the memory is also printed at each tenth of the run."""


def own_record_bytes(f: Figures, since: float) -> int:
    """About how much the soak itself added to the daemon's process since ``since``: its
    samples of the overdue count and memory, one a second (its ledger of polls goes to a file,
    ``_Packed``). It lives in that process and grows with the run, so it is part of the growth
    printed and no part of the daemon's."""
    one = f.samples[-1]
    sample = sys.getsizeof(one) + sum(sys.getsizeof(value) for value in one) + 8  # and its list slot
    return sum(at >= since for at, _, _ in f.samples) * sample


def print_memory(f: Figures) -> None:
    """The daemon's resident memory over its run: what it settles at, and whether it still grows.
    Its caches (decoded story members, stream statistics, words' facts) are bounded but
    fill as items arrive, so some growth over a short run is expected; a leak would keep going."""
    rss = [(at, size) for at, _count, size in f.samples if size]
    if len(rss) < 4:
        print("daemon memory: too few samples")
        return
    first_cycle = next((size for at, size in rss if at >= f.daemon_start + f.opts.interval), rss[-1][1])
    half = [(at, size) for at, size in rss if at >= (f.daemon_start + f.daemon_end) / 2]
    growth = half[-1][1] - half[0][1]
    cycles = (half[-1][0] - half[0][0]) / f.opts.interval
    mb = 1 << 20
    print(
        f"daemon memory (this process's RSS, sampled every second): {rss[0][1] / mb:.0f} MB when it started, "
        f"{first_cycle / mb:.0f} MB after its first cycle, {rss[-1][1] / mb:.0f} MB at the end, "
        f"peak {max(size for _, size in rss) / mb:.0f} MB; over the second half of the run "
        f"{growth / mb:+.1f} MB in {cycles:.1f} cycles ({growth / mb / max(cycles, 1e-9):+.2f} MB a cycle), "
        f"of which about {own_record_bytes(f, half[0][0]) / mb:.1f} MB is this bench's own record of the run"
    )
    limit = f"at most {malloc.ARENAS}, as aggregator's commands set it" if f.opts.arenas_limited else "not limited here"
    print(f"   malloc arenas: {limit} ({malloc.ARENA_ENV}={os.environ.get(malloc.ARENA_ENV, 'unset')})")
    span = f.daemon_end - f.daemon_start
    if span >= TRAJECTORY_FROM:
        # On a long run, whether the growth levels off shows in the path, not in its two ends.
        steps = [
            next(size for at, size in rss if at >= f.daemon_start + span * k / 10 or at == rss[-1][0])
            for k in range(11)
        ]
        print(
            f"   by tenths of the run ({span / 600:.1f} min each): "
            + ", ".join(f"{size / mb:.0f}" for size in steps)
            + " MB"
        )
    if f.kept:
        # Entries now/most kept of each cache at each tenth: growth that follows them is theirs.
        print(
            "   the story matcher's and the parser's caches, and the heaps below them, by tenths of the run "
            "(entries, of the most kept):"
        )
        for name, (_, most) in f.kept[-1][1].items():
            bound = f"  (of {most:,})" if most else ""
            print(f"      {name:22} " + ", ".join(f"{sizes[name][0]:,}" for _, sizes in f.kept) + bound)
    if f.opts.small_caches:
        print(f"   caches shrunk (--small-caches): {', '.join(f'{k} {v:,}' for k, v in SMALL_CACHES.items())}")
    if f.growth:
        print(f"   Python's traced allocations over the second half ({f.growth[0]}), where they grew most:")
        for line in f.growth[1:]:
            print(f"      {line}")
    if f.census:
        print(f"   {f.census[0]}; the types that grew most:")
        for line in f.census[1:]:
            print(f"      {line}")


if __name__ == "__main__":
    raise SystemExit(main())
