"""Several workers, one PostgreSQL database: exactly-once polling and throughput vs one worker.

Serves ``--sources`` small generated feeds (``--items`` items each; 80% with an ETag, 10% with
Last-Modified only, 10% with neither; RSS 2.0 and Atom; item 0 of every ten consecutive
sources is the same wire story under the wire's link, item 1 the same wire text under each
outlet's own link, so workers race to create shared stories) from an asyncio
server in its own process on 127.0.0.1, which counts requests per path. Two kinds of cycle:

  cold  on a reset database every source is new: fetch, parse, insert items and stories;
        run with the largest worker count (``--cold 1,2,4`` compares all, about 3x longer)
  warm  every source made due again: conditional GETs (304), nothing to parse; run with
        each count of ``--workers`` in turn

Each worker is a separate OS process running the real ``Pipeline.poll_due`` with the real
``Fetcher`` and parse pool (what ``aggregator worker`` runs on each tick), against one
database; all of them are started, wait on a barrier, and are released together. After each
cycle the script checks, and fails loudly if not: every source was requested exactly once
(server-side counts), one fetch_log row per source, no lease left, no duplicate items
(source_id, key), no two stories for one canonical URL, and each shared story once, items
0 and 1 alike (SQL). Publishing is not timed.
All sources live on one host (127.0.0.1), so ``per_host_concurrency`` is raised to
``--concurrency``; with the default of 2 a worker would fetch two at a time.

    .venv/bin/python bench/workers.py                      # 5,000 sources: cold x4, warm x1/x2/x4
    .venv/bin/python bench/workers.py --sources 1000 --workers 1,2
    .venv/bin/python bench/workers.py --cold 1,2,4         # also compare the cold cycle (~10 min)
    .venv/bin/python bench/workers.py --trace-sql          # where each poll's database time goes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from benchsupport import autoanalyze, database, load, serve_until_stdin_closes, words

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
BASE_TIME = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WIRE_GROUP = 10  # item 0 of sources 0-9, 10-19, ... is one shared story; so is item 1


# --- feeds and the feed server (its own process) ---------------------------------------------


def feed_body(source: int, items: int) -> bytes:
    host = f"site{source % 50}.bench.example"
    entries = []
    for i in range(items):
        # Item 0: the wire's own link (one canonical URL); item 1: the wire's text at the
        # outlet's own address, which only its copied text ties to the others.
        wire, syndicated = i == 0, i == 1
        rng = random.Random(f"wire-{i}-{source // WIRE_GROUP}" if wire or syndicated else f"{source}-{i}")
        link = (
            f"https://wire.bench.example/story/{source // WIRE_GROUP}?utm_source=s{source}"
            if wire
            else f"https://{host}/s{source}/story-{i}?utm_medium=rss"
        )
        title = words(rng, rng.randint(6, 10)).capitalize()
        summary = "".join(f"<p>{words(rng, rng.randint(10, 16)).capitalize()}.</p>" for _ in range(rng.randint(2, 3)))
        date = BASE_TIME - timedelta(hours=i, minutes=source % 60)
        guid = f"urn:bench:s{source}:i{i}"
        if source % 2:
            entries.append(
                f"<entry><id>{guid}</id><title>{escape(title)}</title><link href='{escape(link)}'/>"
                f"<updated>{date.isoformat()}</updated><summary type='html'>{escape(summary)}</summary></entry>"
            )
        else:
            entries.append(
                f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
                f"<guid isPermaLink='false'>{guid}</guid><pubDate>{format_datetime(date)}</pubDate>"
                f"<description>{escape(summary)}</description></item>"
            )
    if source % 2:
        return (
            "<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
            f"<id>urn:bench:s{source}</id><title>Bench source {source}</title>"
            f"<updated>{BASE_TIME.isoformat()}</updated><link href='https://{host}/s{source}'/>"
            f"{''.join(entries)}</feed>"
        ).encode()
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>Bench source {source}</title><link>https://{host}/s{source}</link>"
        f"<description>Bench</description>{''.join(entries)}</channel></rss>"
    ).encode()


def run_feed_server(sources: int, items: int) -> None:
    """Serve /feed/<n> with real conditional GET; count requests; /_stats and /_reset for us."""
    last_modified = format_datetime(BASE_TIME, usegmt=True)
    routes: dict[str, tuple[bytes, str | None, str | None, bytes]] = {}
    for n in range(sources):
        body = feed_body(n, items)
        etag = f'"b{n}-{len(body)}"' if n % 10 < 8 else None
        lm = last_modified if n % 10 == 8 else None
        head = "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n".format(
            "application/atom+xml" if n % 2 else "application/rss+xml", len(body)
        )
        head += f"ETag: {etag}\r\n" if etag else ""
        head += f"Last-Modified: {lm}\r\n" if lm else ""
        routes[f"/feed/{n}"] = (body, etag, lm, head.encode() + b"\r\n" + body)
    hits: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    def answer(path: str, headers: dict[str, str]) -> bytes:
        if path == "/_stats":
            body = json.dumps({"hits": hits, "statuses": statuses}).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        if path == "/_reset":
            hits.clear()
            statuses.clear()
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        hits[path] += 1
        route = routes.get(path)
        if route is None:
            statuses[404] += 1
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        _, etag, lm, full = route
        inm, ims = headers.get("if-none-match"), headers.get("if-modified-since")
        if (etag and inm == etag) or (lm and not inm and ims == lm):
            statuses[304] += 1
            validators = f"ETag: {etag}\r\n" if etag else f"Last-Modified: {lm}\r\n"
            return f"HTTP/1.1 304 Not Modified\r\n{validators}\r\n".encode()
        statuses[200] += 1
        return full

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
                lines = head.split("\r\n")
                path = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.transport.write(answer(path, headers))

    serve_until_stdin_closes(Protocol)


def descendants_cpu(root: int | None = None) -> float:
    """CPU-seconds used so far by the live descendants of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in times:
        up = parents.get(pid)
        while up is not None and up != root and up > 1:
            up = parents.get(up)
        if up == root:
            total += times[pid]
    return total


# --- one worker process ------------------------------------------------------------------------
def trace_sql(engine: Any) -> Counter[str]:
    """Wall milliseconds per kind of statement (its first words), summed over the worker's run."""
    from sqlalchemy import event

    spent: Counter[str] = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, _cursor: Any, _statement: str, *_args: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        kind = " ".join(statement.split()[:6])[:70]
        spent[kind] += (time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())) * 1000

    return spent


def run_worker(config_path: str, owner: str, until: str, trace: bool, commit_slots: int) -> None:
    """What one ``aggregator worker`` tick does, minus publishing, after a start barrier."""
    from aggregator.config import load_config
    from aggregator.fetch import Fetcher
    from aggregator.parseworker import make_parse_pool
    from aggregator.pipeline import Pipeline, fetch_options
    from aggregator.store.database import make_engine
    from aggregator.store.repository import Store

    config = load_config(config_path).config
    engine = make_engine(config.settings.database_url)
    spent = trace_sql(engine) if trace else Counter()
    pool = make_parse_pool(config.settings.parse_workers)
    if pool is not None:  # start the parse processes before the clock starts
        list(pool.map(abs, range(config.settings.parse_workers or os.cpu_count() or 1)))
    # --commit-slots: this many commits (and group-commit batches) of one worker at once.
    pipeline = Pipeline(config, Store(engine), parse_pool=pool, owner=owner, commit_slots=commit_slots or None)
    print("ready", flush=True)
    sys.stdin.readline()  # the barrier: the parent releases every worker at once

    async def poll() -> Any:
        async with Fetcher(fetch_options(config)) as fetcher:
            return await pipeline.poll_due(fetcher, until=datetime.fromisoformat(until))

    from aggregator import metrics

    def turns_waited() -> float:
        return sum(s.value for m in metrics.STORY_TURN_SECONDS.collect() for s in m.samples if s.name.endswith("_sum"))

    started, cpu, parse_cpu, waited = time.monotonic(), time.process_time(), descendants_cpu(), turns_waited()
    summary = asyncio.run(poll())
    waited = turns_waited() - waited
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    parse_cpu = descendants_cpu() - parse_cpu  # the parse workers, read while they live
    if pool is not None:
        pool.shutdown()
    engine.dispose()
    print(
        json.dumps(
            {
                "owner": owner,
                "polled": summary.polled,
                "new": summary.new_items,
                "not_modified": summary.not_modified,
                "unchanged": summary.unchanged,
                "errors": summary.errors,
                "seconds": elapsed,
                "cpu": cpu,
                "parse_cpu": parse_cpu,
                "turn_wait": waited,
                "sql_ms": dict(spent.most_common(12)),
            }
        ),
        flush=True,
    )


# --- the driver --------------------------------------------------------------------------------
def environment(admin_url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        pg = conn.execute("show server_version").fetchone()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "aggregator"], capture_output=True, text=True
    )
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "postgresql": str(pg[0] if pg else "?"),
        "aggregator": commit.stdout.strip() + (" + uncommitted changes in aggregator/" if dirty.stdout.strip() else ""),
    }


def write_config(directory: Path, url: str, base: str, opts: argparse.Namespace) -> Path:
    parse = "" if opts.parse_workers is None else f"  parse_workers: {opts.parse_workers}\n"
    lines = [
        "settings:",
        f"  database: {url}",
        f"  data_dir: {directory / 'data'}",
        "  public_url: http://feeds.bench.example",
        "  allow_private_networks: true",
        f"  concurrency: {opts.concurrency}",
        f"  per_host_concurrency: {min(opts.concurrency, 64)}",
        parse.rstrip("\n"),
        "sources:",
    ]
    for n in range(opts.sources):
        lines.append(f"  - {{name: src{n}, url: '{base}/feed/{n}', tags: [t{n % 7}]}}")
    lines += ["outputs:", "  - {slug: world, title: World}"]
    path = directory / "feeds.yaml"
    path.write_text("\n".join(line for line in lines if line) + "\n")
    return path


def server_call(base: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else {}


class CpuMeter:
    """Machine-wide busy CPU, and PostgreSQL's (postmaster + reaped backends + live ones)."""

    def __init__(self, postmaster: int | None, server_pid: int) -> None:
        self.postmaster, self.server_pid = postmaster, server_pid

    @staticmethod
    def _machine() -> tuple[float, float]:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    @staticmethod
    def _proc(pid: int, children: bool) -> float:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = float(stat[11]) + float(stat[12]) + (float(stat[13]) + float(stat[14]) if children else 0.0)
        return ticks / os.sysconf("SC_CLK_TCK")

    def _postgres(self) -> float:
        if self.postmaster is None:
            return 0.0
        total = self._proc(self.postmaster, True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.postmaster:
                    total += self._proc(int(entry.name), False)
        return total

    def sample(self) -> tuple[float, float, float, float]:
        busy, total = self._machine()
        return busy, total, self._postgres(), self._proc(self.server_pid, False)

    @staticmethod
    def delta(a: tuple[float, ...], b: tuple[float, ...]) -> dict[str, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "machine_busy_pct": 100 * (b[0] - a[0]) / max(b[1] - a[1], 1),
            "postgres_cpu": b[2] - a[2],
            "feed_server_cpu": b[3] - a[3],
            "_machine_cpu": (b[0] - a[0]) / ticks,
        }


def postmaster_pid(url: str) -> int | None:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        try:  # while the backend lives: its parent is the postmaster
            stat = Path(f"/proc/{row[0] if row else 0}/stat").read_text()
            return int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None  # PostgreSQL is not on this machine's /proc


def autovacuum_on(url: str) -> bool:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("show autovacuum").fetchone()
    return bool(row and row[0] == "on")


def reset(engine: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        # Every table but the sources (the schema grows: take whatever the migrations made).
        tables = conn.scalars(
            text(
                "select quote_ident(tablename) from pg_tables where schemaname = current_schema()"
                " and tablename not in ('sources', 'alembic_version')"
            )
        ).all()
        conn.execute(text(f"truncate {', '.join(tables)} restart identity cascade"))
        conn.execute(
            text(
                "update sources set etag = null, last_modified = null, body_hash = null, next_poll_at = :now,"
                " lease_owner = null, lease_until = null, error_count = 0, last_error = null,"
                " last_polled_at = null, last_success_at = null, items_per_day = null"
            ),
            {"now": datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Not the truncated tables: statistics saying "empty" would mislead the planner while they
        # grow, where a fresh database (statistics unknown) makes it estimate from their size.
        conn.execute(text("vacuum analyze sources"))


def run_cycle(opts: argparse.Namespace, config_path: Path, base: str, workers: int, meter: CpuMeter) -> dict[str, Any]:
    until = datetime.now(UTC)
    server_call(base, "/_reset")
    procs = []
    logs = contextlib.ExitStack()
    for k in range(workers):
        command = [sys.executable, __file__, "--role", "worker", "--config", str(config_path)]
        command += ["--owner", f"bench-{k}", "--until", until.isoformat(), "--commit-slots", str(opts.commit_slots)]
        command += ["--trace-sql"] if opts.trace_sql else []
        stderr = logs.enter_context(open(config_path.parent / f"w{k}.log", "ab"))  # noqa: SIM115
        procs.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT)
        )
    logs.close()  # the children hold their own descriptors
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a worker failed to start; see {config_path.parent}/w*.log")
    before = meter.sample()
    started = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        assert proc.stdout is not None
        try:
            out, _ = proc.communicate(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise SystemExit(f"workers did not finish within {opts.timeout}s") from None
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed (exit {proc.returncode}); see {config_path.parent}/w*.log")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - started
    after = meter.sample()
    cpu = meter.delta(before, after)
    # Reported by each worker for the polling alone (its parse processes included), not its start-up.
    cpu["workers_cpu"] = sum(r["cpu"] + r["parse_cpu"] for r in results)
    stats = server_call(base, "/_stats")
    return {"until": until, "wall": wall, "results": results, "server": stats, "cpu": cpu}


def check(engine: Any, opts: argparse.Namespace, cycle: dict[str, Any], cold: bool) -> list[str]:
    """Everything that must hold after one cycle; returns the problems (empty: all good)."""
    problems = fetch_problems(opts, cycle)
    problems += storage_problems(opts, stored_counts(engine, cycle["until"].replace(tzinfo=None)))
    if cold:
        new = sum(r["new"] for r in cycle["results"])
        if new != opts.sources * opts.items:
            problems.append(f"workers report {new} new items, want {opts.sources * opts.items}")
    return problems


def fetch_problems(opts: argparse.Namespace, cycle: dict[str, Any]) -> list[str]:
    """Every due source fetched exactly once, and polled once by the workers' own count."""
    problems = []
    hits: dict[str, int] = cycle["server"]["hits"]
    expected = {f"/feed/{n}" for n in range(opts.sources)}
    missing = expected - hits.keys()
    extra = hits.keys() - expected
    twice = {p: c for p, c in hits.items() if c > 1}
    if missing:
        problems.append(f"{len(missing)} due sources never fetched, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"unexpected paths requested: {sorted(extra)[:3]}")
    if twice:
        problems.append(f"{len(twice)} sources fetched more than once, e.g. {sorted(twice.items())[:3]}")
    polled = sum(r["polled"] for r in cycle["results"])
    if polled != opts.sources:
        problems.append(f"workers report {polled} polls for {opts.sources} sources")
    errors = sum(r["errors"] for r in cycle["results"])
    if errors:
        problems.append(f"{errors} polls failed")
    return problems


def stored_counts(engine: Any, since: datetime) -> dict[str, int]:
    """What the database holds after a cycle: this cycle's fetch-log rows, leases, duplicates."""
    from sqlalchemy import text

    with engine.connect() as conn:
        logs, logged = conn.execute(
            text("select count(*), count(distinct source_id) from fetch_log where fetched_at >= :t"), {"t": since}
        ).one()
        queries = {
            "leased": "select count(*) from sources where lease_owner is not null",
            "dup_items": "select count(*) from (select 1 from items group by source_id, key having count(*) > 1) d",
            "dup_stories": "select count(*) from (select 1 from stories where canonical_url is not null"
            " group by canonical_url having count(*) > 1) d",
            "items": "select count(*) from items",
            "stories": "select count(*) from stories",
            "split": "select count(*) from (select story_id from items group by story_id having count(*) > 1) d",
        }
        counts = {name: int(conn.scalar(text(sql)) or 0) for name, sql in queries.items()}
    return {"logs": int(logs), "logged": int(logged), **counts}


def storage_problems(opts: argparse.Namespace, counts: dict[str, int]) -> list[str]:
    """One fetch-log row per source, no lease left, no duplicate, the expected items and stories."""
    problems = []
    if counts["logs"] != opts.sources or counts["logged"] != opts.sources:
        problems.append(
            f"fetch_log has {counts['logs']} rows for {counts['logged']} sources this cycle (want {opts.sources} each)"
        )
    if counts["leased"]:
        problems.append(f"{counts['leased']} leases left behind")
    if counts["dup_items"]:
        problems.append(f"{counts['dup_items']} duplicated (source_id, key) items")
    if counts["dup_stories"]:
        problems.append(f"{counts['dup_stories']} canonical URLs with two stories")
    want_items = opts.sources * opts.items
    shared = min(opts.items, 2)  # items 0 and 1 of a group of sources are one story each
    wire = -(-opts.sources // WIRE_GROUP) * shared
    want_stories = opts.sources * (opts.items - shared) + wire
    if counts["items"] != want_items:
        problems.append(f"{counts['items']} items stored, want {want_items}")
    if counts["stories"] != want_stories:
        problems.append(f"{counts['stories']} stories, want {want_stories}")
    if opts.sources >= 2 * WIRE_GROUP and opts.items and counts["split"] != wire:
        problems.append(f"{counts['split']} shared stories, want {wire}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=5000, help="local feeds (default 5000)")
    parser.add_argument("--items", type=int, default=5, help="items per feed (default 5)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts for the warm cycles (default 1,2,4)")
    parser.add_argument(
        "--cold",
        help="worker counts for the cold cycle, each on a reset database (default: the largest of --workers;"
        " 1,2,4 for the full comparison, about 3x longer)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="settings.concurrency per worker (default 32)")
    parser.add_argument(
        "--parse-workers", type=int, default=None, help="settings.parse_workers (default: unset = one per core)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AGGREGATOR_TEST_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL allowed to CREATE DATABASE (default $AGGREGATOR_TEST_DATABASE_URL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=240, help="give up on a cycle after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument(
        "--analyze-every", type=float, default=10, help="if autovacuum is off: ANALYZE this often (s); 0: never"
    )
    parser.add_argument(
        "--commit-slots",
        type=int,
        default=0,
        help="experiment: commits one worker may run at once (its writer threads; 0: as shipped, 4 on PostgreSQL)",
    )
    parser.add_argument("--trace-sql", action="store_true", help="time every statement the workers send; print the top")
    parser.add_argument("--role", choices=["driver", "server", "worker"], default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--owner", help=argparse.SUPPRESS)
    parser.add_argument("--until", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.role == "server":
        run_feed_server(opts.sources, opts.items)
        return 0
    if opts.role == "worker":
        run_worker(opts.config, opts.owner, opts.until, opts.trace_sql, opts.commit_slots)
        return 0
    # A SIGTERM (timeout, a colleague's Ctrl-C) still drops the database and stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return drive(opts)


def drive(opts: argparse.Namespace) -> int:
    from sqlalchemy import create_engine

    from aggregator.config import load_config
    from aggregator.store.database import ensure_schema
    from aggregator.store.repository import Store

    warm_counts = [int(w) for w in opts.workers.split(",") if w]
    opts.cold = opts.cold or str(max(warm_counts))
    cold_counts = [int(w) for w in opts.cold.split(",") if w]
    started = time.monotonic()
    env = environment(opts.database_url)
    load_before = load()
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    command = [sys.executable, __file__, "--role", "server", "--sources", str(opts.sources), "--items", str(opts.items)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        with database(opts.database_url, opts.keep) as url, tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            config_path = write_config(Path(tmp), url, base, opts)
            engine = create_engine(url)
            ensure_schema(engine)
            Store(engine).sync_sources(load_config(config_path).config.source_specs(), datetime.now(UTC))
            meter = CpuMeter(postmaster_pid(url), server.pid)
            autovacuum = autovacuum_on(url)
            env["autovacuum"] = "on" if autovacuum else f"off (the script runs ANALYZE every {opts.analyze_every:g}s)"
            plan = [(w, "cold") for w in cold_counts] + [(w, "warm") for w in warm_counts]
            for workers, phase in plan:
                if phase == "cold":
                    reset(engine)
                else:
                    Store(engine).make_all_due(datetime.now(UTC) - timedelta(seconds=1))
                with autoanalyze(url, 0 if autovacuum else opts.analyze_every):
                    cycle = run_cycle(opts, config_path, base, workers, meter)
                problems = check(engine, opts, cycle, phase == "cold")
                failures += [f"{workers} workers, {phase}: {p}" for p in problems]
                row = summarize(workers, phase, cycle, opts, problems)
                rows.append(row)
                print_row(row, header=len(rows) == 1)
                if opts.trace_sql:
                    print_sql(cycle["results"], opts.sources)
            engine.dispose()
    finally:
        server.kill()
        server.wait()
    report(opts, env, load_before, rows, time.monotonic() - started)
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def summarize(
    workers: int, phase: str, cycle: dict[str, Any], opts: argparse.Namespace, problems: list[str]
) -> dict[str, Any]:
    statuses = cycle["server"]["statuses"]
    cpu = cycle["cpu"]
    return {
        "workers": workers,
        "phase": phase,
        "wall": cycle["wall"],
        "rate": opts.sources / cycle["wall"],
        "items": sum(r["new"] for r in cycle["results"]),
        "http": f"{statuses.get('200', 0)}x200 {statuses.get('304', 0)}x304",
        "split": "/".join(str(r["polled"]) for r in sorted(cycle["results"], key=lambda r: r["owner"])),
        "worker_cpu": cpu["workers_cpu"],
        "turn_wait": sum(r["turn_wait"] for r in cycle["results"]),
        "postgres_cpu": cpu["postgres_cpu"],
        "server_cpu": cpu["feed_server_cpu"],
        "busy": cpu["machine_busy_pct"],
        "load": load(),
        "ok": "ok" if not problems else "FAIL",
    }


COLUMNS = (
    ("workers", "{:>7}"), ("phase", "{:>5}"), ("wall", "{:>7.2f}"), ("rate", "{:>9.0f}"), ("items", "{:>7}"),
    ("http", "{:>16}"), ("split", "{:>19}"), ("worker_cpu", "{:>10.1f}"), ("turn_wait", "{:>10.1f}"),
    ("postgres_cpu", "{:>12.1f}"),
    ("server_cpu", "{:>10.1f}"), ("busy", "{:>6.0f}"), ("load", "{:>16}"), ("ok", "{:>4}"),
)  # fmt: skip
HEADERS = {"wall": "wall s", "rate": "sources/s", "items": "new", "http": "server saw", "split": "polled per worker",
           "worker_cpu": "worker cpu", "turn_wait": "turn wait", "postgres_cpu": "postgres cpu",
           "server_cpu": "feeds cpu", "busy": "busy%",
           "load": "load 1/5/15 after", "ok": "ok"}  # fmt: skip


def print_sql(results: list[dict[str, Any]], sources: int) -> None:
    spent: Counter[str] = Counter()
    for result in results:
        spent.update(result["sql_ms"])
    print(f"    SQL wall ms per poll, all workers, top statements ({sum(spent.values()) / sources:.1f} ms in all):")
    for kind, ms in spent.most_common(10):
        print(f"    {ms / sources:8.2f}  {kind}")


def print_row(row: dict[str, Any], *, header: bool) -> None:
    if header:
        cells = []
        for name, fmt in COLUMNS:
            width = int("".join(c for c in fmt.split(".")[0] if c.isdigit()))
            cells.append(HEADERS.get(name, name).rjust(width))
        print("  ".join(cells))
    print("  ".join(fmt.format(row[name]) for name, fmt in COLUMNS), flush=True)


def report(
    opts: argparse.Namespace, env: dict[str, str], load_before: str, rows: list[dict[str, Any]], total: float
) -> None:
    print()
    print(
        f"run: {opts.sources} sources x {opts.items} items, cold with {opts.cold} workers, warm with {opts.workers};"
        f" concurrency {opts.concurrency}, commit slots {opts.commit_slots or 'as shipped'} "
        f"per worker, parse_workers {'one per core' if opts.parse_workers is None else opts.parse_workers}"
    )
    for key, value in env.items():
        print(f"{key}: {value}")
    print(f"load average before: {load_before}; after: {load()}; total {total:.0f}s")
    print("cpu columns are CPU-seconds during the cycle: workers incl. their parse processes; postgres = all clients")
    print(
        "turn wait: seconds the ingest transactions waited, in all, for their turn to decide stories "
        "(aggregator_story_turn_wait_seconds), summed over the workers and their commit slots"
    )
    for phase in ("cold", "warm"):
        base = next((r for r in rows if r["phase"] == phase and r["workers"] == 1), None)
        if base is None:
            continue
        speedups = ", ".join(
            f"{r['workers']} workers {r['rate'] / base['rate']:.2f}x" for r in rows if r["phase"] == phase
        )
        print(f"{phase}: throughput vs 1 worker: {speedups}")


if __name__ == "__main__":
    raise SystemExit(main())
