"""A million stored items on PostgreSQL: ingest throughput vs an empty database, World rebuild time.

Targets (issue 6): ingest into the full database at >= 0.8x the rate into an empty one, and
``Publisher.publish`` of the World output (every source) in <= 100 ms.

One database ``bench_<hex>`` with the real schema (``ensure_schema``: the migrations) and
``--old-sources`` sources holding the stored items, plus two fresh batches of
``--batch-feeds`` feeds x ``--batch-items`` items each (diverse generated text; one item in
ten links to a URL already stored, so the story lookups find something once the database is
full). Each phase runs in a fresh child process, so both phases pay the same start-up costs:

  empty   no items stored: ingest both batches, then rebuild World
  full    the item tables emptied and refilled by SQL (INSERT ... SELECT generate_series) with
          ``--items`` items, ~20% of them second copies of a story, 90 days of dates, the
          story-matching keys of the last 14 days (what retention keeps); VACUUM ANALYZE;
          then the very same ingest and rebuild

Ingest is measured twice per phase:

  end-to-end   ``Pipeline.poll_due`` with the real ``Fetcher`` and parse pool over batch A,
               served from a local server (its own process) on 127.0.0.1
  store only   batch B parsed before the clock starts, then only the database part:
               ``Pipeline.commit`` per source (what ``poll_due`` does per result, unbatched)

The rebuild is ``Publisher.publish([world])`` (curation query, select, rendering Atom, RSS,
JSON Feed and HTML, saving them), timed ``--publish-runs`` times after one untimed run;
a cProfile of one more run names where the time goes. World is every source, 100 entries (as
in the shipped feeds.yaml); an output of 5 of the old sources is timed too, without a target.

    .venv/bin/python bench/scale.py                         # 1,000,000 items (~4-5 minutes)
    .venv/bin/python bench/scale.py --items 100000          # a quick look
    .venv/bin/python bench/scale.py --items 5000000 --old-sources 10000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from benchsupport import admin_dsn, autoanalyze, database, load, serve_until_stdin_closes, words

if TYPE_CHECKING:
    from aggregator.config import Output
    from aggregator.pipeline import Pipeline, PollSummary
    from aggregator.publisher import Publisher
    from aggregator.store.repository import Store

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
OLD_HOST = "https://old.bench.example"
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


# --- the batches of fresh feeds ---------------------------------------------------------------
def batch_feed(batch: str, feed: int, items: int, old_items: int, now: datetime) -> bytes:
    """RSS 2.0 with ``items`` fresh items; every tenth links to an already stored story's URL."""
    rng = random.Random(f"{batch}-{feed}")
    entries = []
    for i in range(items):
        if old_items and i % 10 == 5:
            link = f"{OLD_HOST}/a/{rng.randint(max(1, old_items - 20_000), old_items)}"
        else:
            link = f"https://{batch}{feed % 40}.bench.example/f{feed}/story-{i}?utm_source=rss"
        title = words(rng, rng.randint(6, 10)).capitalize()
        body = "".join(f"<p>{words(rng, rng.randint(12, 20)).capitalize()}.</p>" for _ in range(rng.randint(2, 4)))
        date = now - timedelta(minutes=7 * i + feed % 60)
        entries.append(
            f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
            f"<guid isPermaLink='false'>urn:{batch}:{feed}:{i}</guid><pubDate>{format_datetime(date)}</pubDate>"
            f"<description>{escape(body)}</description></item>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>Batch {batch} feed {feed}</title><link>https://{batch}.bench.example/f{feed}</link>"
        f"<description>Bench</description>{''.join(entries)}</channel></rss>"
    ).encode()


def run_feed_server(directory: str) -> None:
    """Serve every file of ``directory`` at /<name>, with an ETag; stop when stdin closes."""
    routes = {}
    for path in Path(directory).iterdir():
        body = path.read_bytes()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: {len(body)}\r\n"
            f'ETag: "{hashlib.md5(body).hexdigest()}"\r\n\r\n'
        )
        routes[f"/{path.name}"] = head.encode() + body

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                line, self.buffer = self.buffer[: self.buffer.find(b"\r\n")], self.buffer[end + 4 :]
                parts = line.split(b" ")
                path = parts[1].decode() if len(parts) > 2 else "/"
                self.transport.write(routes.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

    serve_until_stdin_closes(Protocol)


# --- filling the database ---------------------------------------------------------------------
FILL_SQL = """
insert into stories (id, uid, key, canonical_url, first_seen_at, updated_at)
select g, 'tag:feeds.bench.example,2026-01-01:story/' || md5(g::text), 'url:{host}/a/' || g, '{host}/a/' || g,
       %(now)s - (%(n)s - g) * %(step)s, %(now)s - (%(n)s - g) * %(step)s
from generate_series(1, %(n)s) g where g %% 5 <> 0;

insert into items (source_id, story_id, key, guid, link, canonical_url, title, summary_html, content_html, text,
                   author, categories, enclosures, language, published_at, updated_at, sort_at, first_seen_at,
                   changed_at, fingerprint, update_count, match_signature)
select %(first_source)s + g %% %(sources)s,
       case when g %% 5 = 0 then g - 1 else g end,
       'urn:old:' || g, 'urn:old:' || g, '{host}/a/' || g || '?utm_source=rss', '{host}/a/' || g,
       'Stored story ' || g || ' ' || left(md5(g::text), 20),
       '<p>' || repeat(md5(g::text) || ' ', 6) || '</p>', '',
       repeat(md5(g::text) || ' ', 6), 'Reporter ' || g %% 97, '["World"]', '[]', 'en',
       %(now)s - (%(n)s - g) * %(step)s, null, %(now)s - (%(n)s - g) * %(step)s, %(now)s - (%(n)s - g) * %(step)s,
       %(now)s - (%(n)s - g) * %(step)s, md5(g::text), 0, 'c1' || repeat(md5('s' || g), 7)
from generate_series(1, %(n)s) g;

insert into item_match_keys (key, item_id, sort_epoch, story_id)
select ('x' || left(md5(i.id || '-' || k), 8))::bit(32)::bigint + case when k = 0 then 4294967296 else 0 end,
       i.id, extract(epoch from i.sort_at)::bigint, i.story_id
from items i cross join generate_series(0, 10) k
where i.sort_at >= %(now)s - interval '14 days';
"""


def fill(url: str, items: int, old_sources: list[int], now: datetime) -> dict[str, float]:
    """Truncate the item tables and insert ``items`` items with raw SQL; secondary indexes are
    dropped first and rebuilt after (faster than maintaining them row by row)."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    timings = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        truncate_items(conn)
        conn.execute("set synchronous_commit = off")
        conn.execute("set maintenance_work_mem = '256MB'")
        indexes = conn.execute(
            "select i.indexname, i.indexdef from pg_indexes i where i.schemaname = current_schema()"
            " and i.tablename in ('items', 'stories', 'item_match_keys')"
            " and not exists (select 1 from pg_constraint c where c.conname = i.indexname)"
        ).fetchall()
        started = time.monotonic()
        for name, _ in indexes:
            conn.execute(f'drop index "{name}"')
        # Contiguous ids are assumed (sync_sources inserted them in one go, in order).
        params = {
            "n": items,
            "now": now.replace(tzinfo=None),
            "step": timedelta(days=90) / max(items, 1),
            "sources": len(old_sources),
            "first_source": min(old_sources),
        }
        assert max(old_sources) - min(old_sources) + 1 == len(old_sources), "old sources must have contiguous ids"
        with conn.transaction():
            for statement in FILL_SQL.format(host=OLD_HOST).split(";\n"):
                if statement.strip():
                    conn.execute(statement, params)
            conn.execute("select setval(pg_get_serial_sequence('items', 'id'), (select max(id) from items))")
            # Written past the store: the sources' item counts are set as migration 0018 sets them.
            conn.execute(
                "update sources set item_count = counted.items from (select source_id, count(*) as items"
                " from items group by source_id) as counted where counted.source_id = sources.id"
            )
            conn.execute("select setval(pg_get_serial_sequence('stories', 'id'), (select max(id) from stories))")
        timings["insert_s"] = time.monotonic() - started
        started = time.monotonic()
        for _, definition in indexes:
            conn.execute(definition)
        timings["index_s"] = time.monotonic() - started
        started = time.monotonic()
        conn.execute("vacuum analyze")
        timings["vacuum_s"] = time.monotonic() - started
        row = conn.execute(
            "select (select count(*) from items), (select count(*) from stories),"
            " (select count(*) from item_match_keys), pg_database_size(current_database())"
        ).fetchone()
        assert row is not None
        timings.update(items=row[0], stories=row[1], match_keys=row[2], db_mb=row[3] / 2**20)
    return timings


def truncate_items(conn: Any) -> None:
    tables = [
        r[0]
        for r in conn.execute(
            "select quote_ident(tablename) from pg_tables where schemaname = current_schema()"
            " and tablename not in ('sources', 'alembic_version')"
        ).fetchall()
    ]
    conn.execute(f"truncate {', '.join(tables)} restart identity cascade")
    conn.execute("update sources set item_count = 0")  # the sources stay; their items are gone


def reset_batches(url: str) -> None:
    """Every source idle far in the future, batch sources with no validators, as if new."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update sources set next_poll_at = %s, lease_owner = null, lease_until = null, error_count = 0,"
            " etag = null, last_modified = null, body_hash = null, last_polled_at = null, items_per_day = null",
            (FAR_FUTURE.replace(tzinfo=None),),
        )


# --- one phase, in a child process -------------------------------------------------------------
def run_phase(config_path: str, feeds_dir: str, publish_runs: int) -> None:
    from aggregator.config import load_config
    from aggregator.parseworker import make_parse_pool
    from aggregator.pipeline import Pipeline
    from aggregator.store.database import make_engine
    from aggregator.store.repository import Store

    config = load_config(config_path).config
    engine = make_engine(config.settings.database_url)
    store = Store(engine)
    pool = make_parse_pool(config.settings.parse_workers)
    if pool is not None:  # start the parse processes before any clock starts
        list(pool.map(abs, range(os.cpu_count() or 1)))
    pipeline = Pipeline(config, store, parse_pool=pool, owner="bench-scale")
    out: dict[str, Any] = {"e2e": ingest_end_to_end(pipeline), "store": ingest_store_only(pipeline, feeds_dir)}
    out.update(time_publish(pipeline, publish_runs))
    if pool is not None:
        pool.shutdown()
    engine.dispose()
    print(json.dumps(out), flush=True)


def make_due(store: Store, prefix: str) -> datetime:
    """The sources of one batch (their names start with ``prefix``) due now."""
    from sqlalchemy import update

    from aggregator.store.models import SourceRow

    now = datetime.now(UTC)
    with store.session() as s:
        s.execute(update(SourceRow).where(SourceRow.name.startswith(prefix)).values(next_poll_at=now))
    return now


def ingest_end_to_end(pipeline: Pipeline) -> dict[str, Any]:
    """Batch A through fetch, parse and commit: ``Pipeline.poll_due``."""
    from aggregator.fetch import Fetcher
    from aggregator.pipeline import fetch_options

    until = make_due(pipeline.store, "a-")

    async def poll() -> PollSummary:
        async with Fetcher(fetch_options(pipeline.config)) as fetcher:
            return await pipeline.poll_due(fetcher, until=until)

    started = time.monotonic()
    summary = asyncio.run(poll())
    return {"seconds": time.monotonic() - started, "items": summary.new_items, "errors": summary.errors}


def ingest_store_only(pipeline: Pipeline, feeds_dir: str) -> dict[str, Any]:
    """Batch B parsed before the clock starts; then the commits alone (``Pipeline.commit``)."""
    from aggregator.parseworker import document_to_feed
    from aggregator.poll import Polled
    from aggregator.records import FetchResult

    now = make_due(pipeline.store, "b-")
    prepared = []
    for source in pipeline.store.claim_due("bench-scale", now, 100_000, timedelta(minutes=30)):
        body = (Path(feeds_dir) / source.fetch.url.rsplit("/", 1)[1]).read_bytes()
        result = FetchResult(source.fetch.id, source.fetch.url, now, 200, body, "application/rss+xml")
        parsed = document_to_feed(body, source.fetch.url, result.content_type, now)
        prepared.append(Polled(source, result, parsed, body_hash=hashlib.sha256(body).hexdigest()))
    started = time.monotonic()
    new = sum(pipeline.commit(polled).record.items_new for polled in prepared)
    return {"seconds": time.monotonic() - started, "items": new, "sources": len(prepared)}


def time_publish(pipeline: Pipeline, publish_runs: int) -> dict[str, Any]:
    """The World rebuild, timed and profiled, and the rebuild of an output of five sources."""
    from aggregator.publisher import Publisher

    publisher = Publisher(pipeline.config, pipeline.store)
    world = [o for o in pipeline.config.outputs if o.slug == "world"]
    publisher.publish(world)  # first: renders, stores and writes every format
    world_ms = publish_times(publisher, world, publish_runs)
    profile = cProfile.Profile()
    profile.enable()
    publisher.publish(world)
    profile.disable()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("cumulative").print_stats(r"aggregator/|sqlalchemy/orm/session.py.*execute|feedgen/feed.py", 14)
    narrow = [o for o in pipeline.config.outputs if o.slug == "narrow"]
    publisher.publish(narrow)
    narrow_ms = publish_times(publisher, narrow, max(publish_runs // 4, 1))
    return {"publish_ms": world_ms, "narrow_ms": narrow_ms, "profile": text.getvalue()}


def publish_times(publisher: Publisher, outputs: list[Output], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        publisher.publish(outputs)
        times.append((time.perf_counter() - started) * 1000)
    return times


# --- the driver --------------------------------------------------------------------------------
def environment(url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "select name, setting || coalesce(unit, '') from pg_settings where name in"
                " ('server_version', 'shared_buffers', 'autovacuum', 'synchronous_commit', 'work_mem')"
            ).fetchall()
        )
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "aggregator"], capture_output=True, text=True
    )
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "postgresql": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "aggregator": commit.stdout.strip() + (" + uncommitted changes in aggregator/" if dirty.stdout.strip() else ""),
    }


def write_config(directory: Path, url: str, base: str, opts: argparse.Namespace) -> Path:
    lines = [
        "settings:",
        f"  database: {url}",
        f"  data_dir: {directory / 'data'}",
        "  public_url: http://feeds.bench.example",
        "  allow_private_networks: true",
        "  concurrency: 32",
        "  per_host_concurrency: 32",
        "sources:",
    ]
    lines += [f"  - {{name: old-{n:06d}, url: '{OLD_HOST}/feed/{n}'}}" for n in range(opts.old_sources)]
    for batch in ("a", "b"):
        lines += [f"  - {{name: {batch}-{n:05d}, url: '{base}/{batch}{n}.xml'}}" for n in range(opts.batch_feeds)]
    narrow = ", ".join(f"old-{n:06d}" for n in range(0, opts.old_sources, max(opts.old_sources // 5, 1)))
    lines += [
        "outputs:",
        f"  - {{slug: world, title: World, max_entries: {opts.max_entries}}}",
        f"  - {{slug: narrow, title: Narrow, max_entries: 50, sources: [{narrow}]}}",
    ]
    path = directory / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child(opts: argparse.Namespace, config_path: Path, feeds_dir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--role", "phase", "--config", str(config_path), "--feeds", str(feeds_dir)]
    command += ["--publish-runs", str(opts.publish_runs)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=opts.timeout, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"phase failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="stored items in the full phase (default 1e6)")
    parser.add_argument("--old-sources", type=int, default=2000, help="sources those items belong to (default 2000)")
    parser.add_argument("--batch-feeds", type=int, default=150, help="feeds per fresh batch (default 150)")
    parser.add_argument("--batch-items", type=int, default=20, help="items per fresh feed (default 20)")
    parser.add_argument("--publish-runs", type=int, default=20, help="timed World rebuilds per phase (default 20)")
    parser.add_argument(
        "--max-entries", type=int, default=100, help="World's max_entries (default 100, as in the shipped feeds.yaml)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AGGREGATOR_TEST_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL allowed to CREATE DATABASE (default $AGGREGATOR_TEST_DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--analyze-every", type=float, default=10, help="if autovacuum is off: ANALYZE this often (s); 0: never"
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up on a phase after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--role", choices=["driver", "server", "phase"], default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--feeds", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.role == "server":
        run_feed_server(opts.feeds)
        return 0
    if opts.role == "phase":
        run_phase(opts.config, opts.feeds, opts.publish_runs)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return drive(opts)


def drive(opts: argparse.Namespace) -> int:
    import psycopg
    from sqlalchemy import create_engine, select

    from aggregator.config import load_config
    from aggregator.store.database import ensure_schema
    from aggregator.store.models import SourceRow
    from aggregator.store.repository import Store

    started = time.monotonic()
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    env = environment(opts.database_url)
    load_before = load()
    now = datetime.now(UTC)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        feeds_dir = Path(tmp) / "feeds"
        feeds_dir.mkdir()
        for batch in ("a", "b"):
            for n in range(opts.batch_feeds):
                body = batch_feed(batch, n, opts.batch_items, opts.items, now)
                (feeds_dir / f"{batch}{n}.xml").write_bytes(body)
        command = [sys.executable, __file__, "--role", "server", "--feeds", str(feeds_dir)]
        server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert server.stdout is not None
            base = f"http://127.0.0.1:{int(server.stdout.readline())}"
            with database(opts.database_url, opts.keep) as url:
                config_path = write_config(Path(tmp), url, base, opts)
                engine = create_engine(url)
                ensure_schema(engine)
                Store(engine).sync_sources(load_config(config_path).config.source_specs(), now)
                with engine.connect() as conn:
                    old = list(conn.scalars(select(SourceRow.id).where(SourceRow.name.startswith("old-"))))
                engine.dispose()
                with psycopg.connect(admin_dsn(url)) as conn:
                    row = conn.execute("show autovacuum").fetchone()
                analyze_every = 0 if row and row[0] == "on" else opts.analyze_every
                if analyze_every:
                    env["autovacuum"] = f"off on this server: the script runs ANALYZE every {analyze_every:g}s instead"

                reset_batches(url)
                with autoanalyze(url, analyze_every):
                    results["empty"] = child(opts, config_path, feeds_dir)
                print_phase("empty (0 stored items)", results["empty"], opts)

                reset_batches(url)
                fill_stats = fill(url, opts.items, old, datetime.now(UTC))
                print(
                    f"filled: {fill_stats['items']:,} items, {fill_stats['stories']:,} stories, "
                    f"{fill_stats['match_keys']:,} match keys, database {fill_stats['db_mb']:.0f} MB; "
                    f"insert {fill_stats['insert_s']:.1f}s, indexes {fill_stats['index_s']:.1f}s, "
                    f"vacuum analyze {fill_stats['vacuum_s']:.1f}s",
                    flush=True,
                )
                with autoanalyze(url, analyze_every):
                    results["full"] = child(opts, config_path, feeds_dir)
                print_phase(f"full ({fill_stats['items']:,} stored items)", results["full"], opts)
        finally:
            server.kill()
            server.wait()
    return report(opts, env, load_before, results, time.monotonic() - started)


def print_phase(title: str, result: dict[str, Any], opts: argparse.Namespace) -> None:
    e2e, store, ms = result["e2e"], result["store"], result["publish_ms"]
    print(f"{title}:  [load {load()}]")
    print(
        f"  ingest end-to-end: {e2e['items']} items in {e2e['seconds']:.2f}s = {e2e['items'] / e2e['seconds']:,.0f}"
        f" items/s ({opts.batch_feeds} feeds, {e2e['errors']} errors)"
    )
    print(
        f"  ingest store only: {store['items']} items in {store['seconds']:.2f}s = "
        f"{store['items'] / store['seconds']:,.0f} items/s ({store['seconds'] / max(store['sources'], 1) * 1000:.1f}"
        " ms per feed)"
    )
    print(
        f"  World rebuild (publish, max_entries {opts.max_entries}): median {statistics.median(ms):.1f} ms,"
        f" min {min(ms):.1f}, max {max(ms):.1f} over {len(ms)} runs",
        flush=True,
    )
    narrow = result["narrow_ms"]
    print(f"  an output of 5 sources (no target): median {statistics.median(narrow):.1f} ms", flush=True)


def report(
    opts: argparse.Namespace, env: dict[str, str], load_before: str, results: dict[str, dict[str, Any]], total: float
) -> int:
    empty, full = results["empty"], results["full"]
    print()
    print(
        f"run: --items {opts.items} --old-sources {opts.old_sources} --batch-feeds {opts.batch_feeds} "
        f"--batch-items {opts.batch_items} --publish-runs {opts.publish_runs} --max-entries {opts.max_entries}"
    )
    for key, value in env.items():
        print(f"{key}: {value}")
    print(f"load average before: {load_before}; after: {load()}; total {total:.0f}s")
    ok = True
    for kind, label in (("e2e", "end-to-end"), ("store", "store only")):
        rate = [r[kind]["items"] / r[kind]["seconds"] for r in (empty, full)]
        ratio = rate[1] / rate[0]
        ok &= ratio >= 0.8
        verdict = "meets" if ratio >= 0.8 else "MISSES"
        print(f"ingest {label}: full/empty = {rate[1]:,.0f}/{rate[0]:,.0f} items/s = {ratio:.2f}x ({verdict} >= 0.8x)")
    median = statistics.median(full["publish_ms"])
    ok &= median <= 100
    verdict = "meets" if median <= 100 else "MISSES"
    print(
        f"World rebuild with {opts.items:,} items: median {median:.1f} ms ({verdict} <= 100 ms); "
        f"empty database: {statistics.median(empty['publish_ms']):.1f} ms"
    )
    print("\nwhere one World rebuild spends its time (full database, cProfile, cumulative):")
    print("\n".join("  " + line for line in full["profile"].strip().splitlines()[-22:]))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
