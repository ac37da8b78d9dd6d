"""Requests per second of ``aggregator serve`` for /feeds/world.atom, beside nginx serving the same file.

Builds a database with ``--sources`` sources x ``--items`` items (generated feeds, parsed and
stored by the real pipeline code), publishes with the real CLI (``aggregator publish``:
renders World into the ``published`` table and writes ``output_dir``), then starts

  aggregator   ``python -m aggregator --config X serve`` (uvicorn, one process), port A
  nginx        serving ``output_dir`` at /feeds/ (``--nginx-workers``, default 1), port B

and measures each with ``wrk`` on 127.0.0.1 (``-t --threads -c --connections -d --duration``,
after a ``--warmup``), plain GET and conditional GET (If-None-Match with the server's own
ETag; a probe first checks that the answer is really a 304, and the plain one a 200 with the
whole body). Reports requests/s, latency and aggregator/nginx ratios. Needs ``wrk`` and
``nginx`` (Debian: ``apt-get install -y wrk nginx``). Both servers share the machine with wrk:
on a 2-core machine wrk takes one core, so the figures are a ratio, not a capacity.

    .venv/bin/python bench/serve.py                          # PostgreSQL, 10 s per measurement
    .venv/bin/python bench/serve.py --backend sqlite
    .venv/bin/python bench/serve.py --duration 30 --connections 64 --nginx-workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from benchsupport import database as pg_database
from benchsupport import words

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def feed_body(feed: int, items: int, now: datetime) -> bytes:
    rng = random.Random(feed)
    entries = []
    for i in range(items):
        title = words(rng, rng.randint(6, 10)).capitalize()
        body = "".join(f"<p>{words(rng, rng.randint(12, 20)).capitalize()}.</p>" for _ in range(rng.randint(2, 4)))
        date = now - timedelta(minutes=13 * i + feed)
        entries.append(
            f"<item><title>{escape(title)}</title><link>https://site{feed}.bench.example/story-{i}</link>"
            f"<guid isPermaLink='false'>urn:serve:{feed}:{i}</guid><pubDate>{format_datetime(date)}</pubDate>"
            f"<category>World</category><description>{escape(body)}</description></item>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>Outlet {feed}</title><link>https://site{feed}.bench.example/</link>"
        f"<description>Bench</description>{''.join(entries)}</channel></rss>"
    ).encode()


# --- setting up ------------------------------------------------------------------------------
@contextlib.contextmanager
def database(opts: argparse.Namespace, tmp: Path) -> Iterator[str]:
    if opts.backend == "sqlite":
        yield f"sqlite:///{tmp / 'aggregator.db'}"
        return
    with pg_database(opts.database_url, opts.keep) as url:
        yield url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(tmp: Path, url: str, port: int, opts: argparse.Namespace) -> Path:
    lines = [
        "settings:",
        f"  database: {url}",
        f"  data_dir: {tmp / 'data'}",
        f"  output_dir: {tmp / 'feeds'}",
        f"  listen: 127.0.0.1:{port}",
        "  public_url: http://feeds.bench.example",
        "  parse_workers: 0",
        "sources:",
    ]
    lines += [f"  - {{name: outlet-{n}, url: 'https://site{n}.bench.example/feed'}}" for n in range(opts.sources)]
    lines += ["outputs:", f"  - {{slug: world, title: World, max_entries: {opts.max_entries}}}"]
    path = tmp / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fill(config_path: Path, opts: argparse.Namespace) -> int:
    """Parse and store every generated feed with the pipeline's own commit (no HTTP needed)."""
    from aggregator.config import load_config
    from aggregator.parseworker import document_to_feed
    from aggregator.pipeline import Pipeline
    from aggregator.poll import Polled
    from aggregator.records import FetchResult
    from aggregator.store.database import ensure_schema, make_engine
    from aggregator.store.repository import Store

    config = load_config(config_path).config
    engine = make_engine(config.settings.database_url)
    try:
        ensure_schema(engine)
        store = Store(engine)
        now = datetime.now(UTC)
        store.sync_sources(config.source_specs(), now)
        pipeline = Pipeline(config, store, owner="bench-serve")
        stored = 0
        for source in store.claim_due("bench-serve", now, 100_000, timedelta(minutes=30)):
            n = int(source.fetch.name.rsplit("-", 1)[1])
            body = feed_body(n, opts.items, now)
            result = FetchResult(source.fetch.id, source.fetch.url, now, 200, body, "application/rss+xml")
            parsed = document_to_feed(body, source.fetch.url, result.content_type, now)
            polled = Polled(source, result, parsed, body_hash=hashlib.sha256(body).hexdigest())
            stored += pipeline.commit(polled).record.items_new
        return stored
    finally:
        engine.dispose()


NGINX_CONF = """
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    types {{ application/atom+xml atom; application/rss+xml rss; application/feed+json json; }}
    server {{
        listen 127.0.0.1:{port};
        location /feeds/ {{
            alias {output}/;
            gzip_static on;
            add_header Cache-Control "public, max-age=60";
        }}
    }}
}}
"""


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {seconds:g}s")


def probe(url: str, etag: str | None = None) -> tuple[int, str, int]:
    """(status, ETag, body length) of one GET, conditional when ``etag`` is given."""
    request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("ETag", ""), len(response.read())
    except urllib.error.HTTPError as exc:  # urllib reports a 304 as an error
        return exc.code, exc.headers.get("ETag", ""), len(exc.read())


# --- measuring -------------------------------------------------------------------------------
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


MODES = ("plain", "conditional", "gzip")
"""plain: GET, identity; conditional: GET with If-None-Match of the server's own ETag (a 304);
gzip: GET with Accept-Encoding: gzip (aggregator compresses once per rendering; nginx gets a
pre-compressed copy with gzip_static, the same work)."""


def wrk(url: str, opts: argparse.Namespace, mode: str, etag: str) -> dict[str, Any]:
    header = {
        "plain": ["-H", "Accept-Encoding: identity"],
        "conditional": ["-H", f"If-None-Match: {etag}"],
        "gzip": ["-H", "Accept-Encoding: gzip"],
    }[mode]
    base = ["wrk", "-t", str(opts.threads), "-c", str(opts.connections), "--latency", *header]
    if opts.warmup > 0:
        subprocess.run([*base, "-d", f"{opts.warmup:g}s", url], capture_output=True, timeout=opts.warmup + 30)
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        [*base, "-d", f"{opts.duration:g}s", url], capture_output=True, text=True, timeout=opts.duration + 60
    )
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if rps is None or latency is None or p99 is None:
        raise SystemExit(f"could not read wrk's output:\n{out}\n{done.stderr}")
    return {
        "rps": float(rps.group(1)),
        "latency_ms": float(latency.group(1)) * UNITS[latency.group(2)],
        "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)],
        "bad": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "load": f"{load_before:.2f}",
    }


def environment(opts: argparse.Namespace) -> dict[str, str]:
    import starlette
    import uvicorn

    env = {
        "machine": f"{platform.platform()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "uvicorn": f"{uvicorn.__version__}, starlette {starlette.__version__}",
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip(),
    }
    if opts.backend == "postgresql":
        import psycopg
        from sqlalchemy.engine import make_url

        dsn = make_url(opts.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("show server_version").fetchone()
        env["postgresql"] = str(row[0] if row else "?")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "aggregator"], capture_output=True, text=True
    )
    env["aggregator"] = commit.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    return env


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AGGREGATOR_TEST_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL allowed to CREATE DATABASE (default $AGGREGATOR_TEST_DATABASE_URL or %(default)s)",
    )
    parser.add_argument("--sources", type=int, default=50, help="sources (default 50)")
    parser.add_argument("--items", type=int, default=20, help="items per source (default 20)")
    parser.add_argument("--max-entries", type=int, default=100, help="World's max_entries (default 100)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = arguments(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian: apt-get install -y wrk nginx)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    env = environment(opts)
    load_before = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx's workers run as nobody: they must reach output_dir
        with database(opts, tmp) as url:
            agg_port, nginx_port = free_port(), free_port()
            config_path = write_config(tmp, url, agg_port, opts)
            stored = fill(config_path, opts)
            agg = [sys.executable, "-m", "aggregator", "--config", str(config_path), "--log-level", "warning"]
            size = publish_files(tmp, agg, opts, nginx_port)
            with open(tmp / "serve.log", "wb") as log:
                server = subprocess.Popen([*agg, "serve"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
            command = ["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")]
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            nginx = subprocess.Popen([*command, "-g", "daemon off;"], **quiet)  # type: ignore[call-overload]
            try:
                targets = {
                    "aggregator": f"http://127.0.0.1:{agg_port}/feeds/world.atom",
                    "nginx": f"http://127.0.0.1:{nginx_port}/feeds/world.atom",
                }
                results = measure(targets, check_servers(targets, size), opts)
            finally:
                stop(server)
                stop(nginx)
    report(opts, env, results, size=size, stored=stored, load_before=load_before, started=started)
    return 0


def publish_files(tmp: Path, agg: list[str], opts: argparse.Namespace, nginx_port: int) -> int:
    """``aggregator publish`` the files, gzip the Atom one for nginx, write nginx's config;
    returns the size of world.atom."""
    subprocess.run([*agg, "publish"], check=True, cwd=ROOT, capture_output=True, timeout=120)
    for path in [tmp / "data", tmp / "feeds"]:
        if path.exists():
            path.chmod(0o755)
    atom = (tmp / "feeds" / "world.atom").read_bytes()
    (tmp / "feeds" / "world.atom.gz").write_bytes(gzip.compress(atom, mtime=0))
    (tmp / "nginx.conf").write_text(
        NGINX_CONF.format(workers=opts.nginx_workers, tmp=tmp, port=nginx_port, output=tmp / "feeds")
    )
    return len(atom)


def check_servers(targets: dict[str, str], size: int) -> dict[str, str]:
    """Both servers answer the whole file with an ETag, and a 304 to it; returns their ETags."""
    for url in targets.values():
        wait_for(url, 30)
    etags = {}
    for target, url in targets.items():
        status, etag, length = probe(url)
        if status != 200 or length != size or not etag:
            raise SystemExit(f"{target}: plain GET gave {status}, {length} bytes, ETag {etag!r}")
        status, _, length = probe(url, etag)
        if status != 304 or length:
            raise SystemExit(f"{target}: conditional GET gave {status} with {length} bytes, not a 304")
        etags[target] = etag
    return etags


def measure(
    targets: dict[str, str], etags: dict[str, str], opts: argparse.Namespace
) -> dict[tuple[str, str], dict[str, Any]]:
    """Mode by mode, the two servers one after the other: the load of a shared machine
    drifts, and a ratio of back-to-back figures drifts least."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for mode in MODES:
        for target, url in targets.items():
            results[(target, mode)] = row = wrk(url, opts, mode, etags[target])
            print(
                f"{target:>10} {mode:>11}: {row['rps']:>9,.0f} req/s  avg {row['latency_ms']:6.2f} ms"
                f"  p99 {row['p99_ms']:6.2f} ms  bad {row['bad']}  (load {row['load']})",
                flush=True,
            )
    return results


def report(
    opts: argparse.Namespace,
    env: dict[str, str],
    results: dict[tuple[str, str], dict[str, Any]],
    *,
    size: int,
    stored: int,
    load_before: str,
    started: float,
) -> None:
    print()
    print(
        f"run: --backend {opts.backend} --sources {opts.sources} --items {opts.items} --max-entries {opts.max_entries}"
        f" --duration {opts.duration:g} --warmup {opts.warmup:g} --connections {opts.connections}"
        f" --threads {opts.threads} --nginx-workers {opts.nginx_workers}"
    )
    print(f"world.atom: {size:,} bytes, {min(stored, opts.max_entries)} entries ({stored} items stored)")
    for key, value in env.items():
        print(f"{key}: {value}")
    print(
        f"load average before: {load_before}; after: {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())};"
        f" total {time.monotonic() - started:.0f}s"
    )
    for mode in MODES:
        ratio = results[("aggregator", mode)]["rps"] / results[("nginx", mode)]["rps"]
        print(
            f"{mode}: aggregator/nginx = {results[('aggregator', mode)]['rps']:,.0f}/"
            f"{results[('nginx', mode)]['rps']:,.0f} req/s = {ratio:.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
