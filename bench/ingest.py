"""Ingest benchmark: aggregator against the parse floor and against the `reader` library.

Generates N local feeds x M items (mixed RSS 2.0 / Atom / RSS 1.0, 1-3 KB per item), serves
them from a separate process on 127.0.0.1 (ETag + conditional GET), and measures in one run:

  (a)  feedparser alone on the same bodies, one process: the parse floor
  (b)  aggregator's first ingest of everything (real Pipeline, SQLite, parse process pool)
  (c)  an immediate re-poll: every source answers 304, nothing may be parsed
  (d)  10% of the feeds gained 3 items (and (a') the parse floor of those feeds alone)
  (e)  the `reader` library doing (b) — not a dependency: ``pip install reader sgmllib3k``
       (reader 3.26 vendors a feedparser that imports ``sgmllib`` without declaring it);
       skipped when it is not installed
  (f)  (b) as users run it: the installed ``aggregator`` command, ``poll --once --all`` on a
       fresh database. A parse worker imports the main module of the process that started it,
       and for the command that is its console script, not this file: (f) is where what that
       costs shows. Only wall, CPU and memory are read, from outside the command.

(a) is measured again after (d), and (b)/(a) uses the mean of the two: this machine's
speed drifts by up to ±15% within a minute. (b), (c) and (d) are rounds of one process,
as in the daemon: one parse pool (started during (b), warm afterwards) and one SQLite
database. (a), (a'), (e) and (f) run in processes of their own.
Figures: wall seconds; CPU seconds of the measured process and all its descendants (the parse
workers), and how much of it the main process used; and the peak RSS of all those processes
together (the sum of each one's high-water mark: an upper bound of the true peak; for (f), of
those alive at one moment, since its migration's process ends before its workers start), and each
one's high-water mark by kind (``rss_by_process``: main, tracker, worker). For (b),
(c) and (d) the report also gives the group commit's batches (``groupcommit``): how many
transactions the round committed and how many fetch results each held. For (b),
(c) and (d) ``main_by_thread`` splits the main process's CPU: the event loop (fetching, "loop"),
the executor threads (each poll's transaction, claims, publishing: "db") and the parse
pool's own threads (moving bodies out and results back: "pool"), and ``gc_s`` the part of it
spent in the garbage collector (``gc_full``: its full collections). The feed
server runs in a separate process and is never counted. Usage::

    .venv/bin/python bench/ingest.py                      # 1000 feeds x 30 items
    .venv/bin/python bench/ingest.py --feeds 200 --skip-reader
    .venv/bin/python bench/ingest.py --stream stock       # news from a few templates: story matching at work
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import importlib.util
import io
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
BASE_TIME = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
STOPWORDS = (
    "the", "of", "and", "to", "a", "in", "that", "is", "for", "on", "it", "with", "as", "was", "he", "be", "by",
    "at", "from", "his", "an", "have", "but", "has", "are", "not", "they", "this", "had", "which", "were",
    "their", "been", "one", "who", "will", "its", "more", "after", "would", "also", "said", "than", "new",
)  # fmt: skip


def _vocabulary() -> tuple[list[str], list[float]]:
    """~5,000 words with Zipf frequencies: unrelated items share words the way real news does.

    (With a vocabulary of a hundred words every item shares phrases with every other one, and
    story clustering, which looks for shared phrases, does work no real corpus would cause.)
    """
    rng = random.Random(1)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = list(STOPWORDS)
    seen = set(words)
    while len(words) < 5000:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    weights, total = [], 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 1)
        weights.append(total)
    return words, weights


WORDS, CUMULATIVE_WEIGHTS = _vocabulary()


# --- feeds -----------------------------------------------------------------------------------
def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choices(WORDS, cum_weights=CUMULATIVE_WEIGHTS, k=words))
    return text[0].upper() + text[1:] + "."


def _article_html(rng: random.Random, feed: int, index: int) -> str:
    """1-2.5 KB of the HTML real feeds carry: paragraphs, links, an image, entities."""
    paragraphs = []
    for p in range(rng.randint(2, 5)):
        body = " ".join(_sentence(rng, rng.randint(8, 18)) for _ in range(rng.randint(2, 4)))
        if p == 0:
            body = f"<strong>{body[:40]}</strong>{body[40:]} &#8212; it&#8217;s &amp; more"
        if rng.random() < 0.5:
            body += f' <a href="https://example.org/related/{feed}/{index}-{p}?ref=rss">Read more</a>'
        paragraphs.append(f"<p>{body}</p>")
    if rng.random() < 0.6:
        paragraphs.insert(1, f'<figure><img src="/images/{feed}/{index}.jpg" alt="photo {index}" width="640"></figure>')
    return "".join(paragraphs)


STREAM: dict[str, Any] = {"kind": "random", "feeds": 1000, "items": 30}  # set from the command line in main()


def _stock_items() -> list[Any]:
    """The stock-phrase stream (``--stream stock``): news told from a few templates, with copies
    across feeds (tests/templated.py), enough for every feed's items and the ones it gains."""
    if "stock" not in STREAM:
        sys.path.insert(0, str(REPO))
        from tests import templated

        wanted = STREAM["feeds"] * (STREAM["items"] + 3)
        days = 6
        found = templated.generate(events_per_day=wanted // (days * 4) + 1, days=days, seed=11, distinct=False)
        STREAM["stock"] = found[:wanted]
    stock: list[Any] = STREAM["stock"]
    return stock


def _item(feed: int, index: int) -> dict[str, Any]:
    rng = random.Random(feed * 1_000_003 + index)
    if STREAM["kind"] == "stock":
        stock = _stock_items()
        feeds, items = STREAM["feeds"], STREAM["items"]
        number = index * feeds + feed if index >= 0 else feeds * items + feed * 3 - index - 1
        source = stock[number]
        host = f"site{feed % 97}.example.com"
        return {
            "id": f"https://{host}/feed{feed}/{source.id}",
            "link": f"https://{host}/feed{feed}/{source.id}?utm_source=rss",
            "title": source.title,
            "html": f"<p>{escape(source.text)}</p>",
            "author": f"Reporter {rng.randint(1, 40)}",
            "tags": ["World"],
            "date": BASE_TIME - (stock[-1].published_at - source.published_at),
        }
    host = f"site{feed % 97}.example.com"
    return {
        "id": f"https://{host}/feed{feed}/2026/11/story-{index}",
        "link": f"https://{host}/feed{feed}/2026/11/story-{index}?utm_source=rss&utm_medium=feed",
        "title": _sentence(rng, rng.randint(6, 12))[:-1] + f" ({feed}/{index})",
        "html": _article_html(rng, feed, index),
        "author": f"Reporter {rng.randint(1, 40)}",
        "tags": rng.sample(["World", "Europe", "Economy", "Climate", "Politics", "Science", "Health"], 2),
        "date": BASE_TIME - timedelta(hours=index, minutes=feed % 60),
    }


def rss2(feed: int, indexes: range) -> bytes:
    items = []
    for i in indexes:
        f = _item(feed, i)
        cats = "".join(f"<category>{t}</category>" for t in f["tags"])
        items.append(
            f"<item><title>{escape(f['title'])}</title><link>{escape(f['link'])}</link>"
            f"<guid isPermaLink='false'>{escape(f['id'])}</guid><pubDate>{format_datetime(f['date'])}</pubDate>"
            f"<dc:creator>{f['author']}</dc:creator>{cats}"
            f"<description><![CDATA[{f['html']}]]></description></item>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<rss version='2.0' xmlns:dc='http://purl.org/dc/elements/1.1/'><channel>"
        f"<title>RSS feed {feed}</title><link>https://site{feed % 97}.example.com/feed{feed}</link>"
        f"<description>Bench feed {feed}</description><ttl>30</ttl>{''.join(items)}</channel></rss>"
    ).encode()


def atom(feed: int, indexes: range) -> bytes:
    entries = []
    for i in indexes:
        f = _item(feed, i)
        cats = "".join(f"<category term='{t}'/>" for t in f["tags"])
        entries.append(
            f"<entry><id>{escape(f['id'])}</id><title>{escape(f['title'])}</title>"
            f"<link rel='alternate' href='{escape(f['link'])}'/><updated>{f['date'].isoformat()}</updated>"
            f"<author><name>{f['author']}</name></author>{cats}"
            f"<content type='html'>{escape(f['html'])}</content></entry>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        f"<id>urn:bench:feed{feed}</id><title>Atom feed {feed}</title>"
        f"<updated>{BASE_TIME.isoformat()}</updated><link href='https://site{feed % 97}.example.com/feed{feed}'/>"
        f"{''.join(entries)}</feed>"
    ).encode()


def rss1(feed: int, indexes: range) -> bytes:
    items, seq = [], []
    for i in indexes:
        f = _item(feed, i)
        about = escape(f["id"])
        seq.append(f"<rdf:li rdf:resource='{about}'/>")
        items.append(
            f"<item rdf:about='{about}'><title>{escape(f['title'])}</title><link>{escape(f['link'])}</link>"
            f"<dc:creator>{f['author']}</dc:creator><dc:subject>{f['tags'][0]}</dc:subject>"
            f"<dc:date>{f['date'].isoformat()}</dc:date><description>{escape(f['html'])}</description></item>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#' xmlns='http://purl.org/rss/1.0/'"
        " xmlns:dc='http://purl.org/dc/elements/1.1/'>"
        f"<channel rdf:about='https://site{feed % 97}.example.com/feed{feed}'><title>RDF feed {feed}</title>"
        f"<link>https://site{feed % 97}.example.com/feed{feed}</link><description>Bench</description>"
        f"<items><rdf:Seq>{''.join(seq)}</rdf:Seq></items></channel>{''.join(items)}</rdf:RDF>"
    ).encode()


DIALECTS: tuple[Callable[[int, range], bytes], ...] = (rss2, atom, rss1)
CONTENT_TYPES = ("application/rss+xml", "application/atom+xml", "application/rdf+xml")


def feed_body(feed: int, items: int, gained: int = 0) -> bytes:
    """Feed ``feed`` with ``items`` items; ``gained`` newer ones are prepended (indexes below 0)."""
    return DIALECTS[feed % 3](feed, range(-gained, items - gained))


def write_feeds(directory: Path, feeds: int, items: int) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for n in range(feeds):
        body = feed_body(n, items)
        (directory / f"{n}.xml").write_bytes(body)
        total += len(body)
    return total


# --- the feed server (its own process: its CPU is never counted) --------------------------------
def serve(directory: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = directory / Path(self.path).name
            try:
                body = path.read_bytes()
            except OSError:
                self.send_error(404)
                return
            etag = '"' + hashlib.md5(body).hexdigest() + '"'
            n = int(path.stem)
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", f"{CONTENT_TYPES[n % 3]}; charset=utf-8")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # the listen backlog: the default 5 drops SYNs under load

    httpd = Server(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


# --- measuring a phase ----------------------------------------------------------------------
def _proc_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def _cpu_and_hwm(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and summed peak RSS (bytes) of these live processes."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, hwm = 0.0, 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm += int(line.split()[1]) * 1024
    return cpu, hwm


def _process_kind(pid: int, main: int | None = None) -> str:
    """What a process of the measured tree is: ``main`` (default: this one), multiprocessing's
    resource tracker, or (anything else) a parse worker."""
    if pid == (os.getpid() if main is None else main):
        return "main"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return "tracker" if "resource_tracker" in command else "worker"


def _hwm_by_process(pids: list[int]) -> str:
    """Each live process's peak RSS in MB, by kind (``_process_kind``): which one holds the memory."""
    parts = []
    for pid in sorted(pids):
        hwm = _cpu_and_hwm([pid])[1]
        if hwm:
            parts.append(f"{_process_kind(pid)}:{hwm / 1e6:.0f}")
    return ",".join(parts)


def _threads_cpu() -> dict[str, float]:
    """This process's CPU seconds by kind of thread: the event loop ("loop"), the executor
    threads that run each poll's transaction, claims and publishing ("db"), and the parse
    pool's threads that move bodies and results across the process boundary ("pool")."""
    tick = os.sysconf("SC_CLK_TCK")
    kinds = {"loop": 0.0, "db": 0.0, "pool": 0.0}
    for thread in threading.enumerate():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            kind = "db" if thread.name.startswith(("asyncio_", "aggregator-writer")) else "pool"
            kind = "loop" if thread is threading.main_thread() else kind
            kinds[kind] += (int(fields[11]) + int(fields[12])) / tick
    return kinds


class Meter:
    """Wall, CPU (this process + live descendants) and summed peak RSS between two readings.

    Every process a phase measures lives until its last reading (the pool is shut down after),
    so no CPU is lost to a child that exited unseen. The main process's CPU is also split by
    thread (``_threads_cpu``), which says where the aggregator's own overhead goes.
    """

    def __init__(self) -> None:
        self.last = self.read()
        self.threads = _threads_cpu()

    @staticmethod
    def read() -> tuple[float, float, float]:
        """Now: wall clock, CPU of this process tree, CPU of this process."""
        cpu, _hwm = _cpu_and_hwm(_proc_tree(os.getpid()))
        return time.perf_counter(), cpu, sum(os.times()[:2])

    def lap(self) -> dict[str, Any]:
        now = self.read()
        tree = _proc_tree(os.getpid())
        figures = {
            "wall": now[0] - self.last[0],
            "cpu": now[1] - self.last[1],
            "cpu_main": now[2] - self.last[2],
            "rss": _cpu_and_hwm(tree)[1],
            "rss_by_process": _hwm_by_process(tree),
            "processes": len(tree),
        }
        self.last = now
        threads = _threads_cpu()
        figures["main_by_thread"] = "+".join(
            f"{kind}:{threads[kind] - self.threads.get(kind, 0.0):.2f}" for kind in ("loop", "db", "pool")
        )
        self.threads = threads
        return figures


class Collections:
    """Time the main process spent in CPython's cyclic garbage collector, and its full
    collections, between two readings (``gc.callbacks``): its share of the writer's CPU is
    what ``aggregator.collector`` sets the pace for, and machine noise does not blur it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0
        self._last = (0.0, 0)
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info["generation"] == 2

    def lap(self) -> dict[str, Any]:
        seconds, full = self._last
        self._last = (self.seconds, self.full)
        return {"gc_s": round(self.seconds - seconds, 2), "gc_full": self.full - full}


BATCH_KEYS = ("transactions", "results_per_tx", "tx_sizes", "commit_s", "batch_retries")


class Batches:
    """Group-commit batches between two readings, from the pipeline's own Prometheus histograms."""

    def __init__(self) -> None:
        self.last = self._read()

    @staticmethod
    def _read() -> dict[str, float]:
        from aggregator import metrics

        values: dict[str, float] = {}
        for histogram, prefix in ((metrics.COMMIT_BATCH_SIZE, "size"), (metrics.COMMIT_SECONDS, "seconds")):
            for metric in histogram.collect():
                for sample in metric.samples:
                    kind = sample.name.rsplit("_", 1)[1]
                    key = f"{prefix}_{kind}" + (f"_{sample.labels['le']}" if kind == "bucket" else "")
                    values[key] = sample.value
        for metric in metrics.COMMIT_BATCH_RETRIES.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    values["retries"] = sample.value
        return values

    def lap(self) -> dict[str, Any]:
        now = self._read()
        delta = {k: v - self.last.get(k, 0.0) for k, v in now.items()}
        self.last = now
        count = int(delta.get("size_count", 0))
        # Results per transaction by histogram bucket ("<=4: n" counts transactions of 3 or 4).
        spread, below = [], 0.0
        for bound in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0"):
            cumulative = delta.get(f"size_bucket_{bound}", 0.0)
            if cumulative - below:
                spread.append(f"<={int(float(bound))}:{int(cumulative - below)}")
            below = cumulative
        return {
            "transactions": count,
            "results_per_tx": round(delta.get("size_sum", 0.0) / count, 1) if count else 0.0,
            "tx_sizes": ",".join(spread) or "-",
            "commit_s": round(delta.get("seconds_sum", 0.0), 2),
            "batch_retries": int(delta.get("retries", 0)),
        }


# --- the phases (each in its own child process) -----------------------------------------------
def phase_floor(opts: argparse.Namespace) -> dict[str, Any]:
    """feedparser.parse with its defaults (sanitize + resolve URIs), one process, same bodies."""
    import feedparser

    wanted = json.loads(opts.only) if opts.only else None
    bodies = []
    for path in sorted(Path(opts.dir).glob("*.xml")):
        if wanted is None or int(path.stem) in wanted:
            bodies.append((int(path.stem), path.read_bytes()))
    meter = Meter()
    entries = 0
    for n, body in bodies:
        headers = {"content-type": f"{CONTENT_TYPES[n % 3]}; charset=utf-8", "content-location": opts.url(n)}
        entries += len(feedparser.parse(io.BytesIO(body), response_headers=headers).entries)
    figures = meter.lap()
    del figures["main_by_thread"]  # one thread: nothing to split
    return {**figures, "entries": entries}


def _aggregator_config(opts: argparse.Namespace) -> Any:
    from aggregator.config import parse_config

    return parse_config(_config_text(opts, Path(opts.data)), "bench.yaml")


def _config_text(opts: argparse.Namespace, data: Path) -> str:
    """The config of (b) and (f): every bench feed, one output, its database in ``data``."""
    lines = [
        "settings:",
        f"  data_dir: {data}",
        "  allow_private_networks: true",
        "  public_url: http://bench.example",
        f"  concurrency: {opts.concurrency}",
        "  per_host_concurrency: 64",  # every feed lives on 127.0.0.1
        f"  parse_workers: {opts.workers}",
        f"  story_matching: {opts.story_matching}",
        "sources:",
    ]
    for n in range(opts.feeds):
        lines += [f"  - name: feed {n}", f"    url: {opts.url(n)}", "    tags: [bench]"]
    lines += ["outputs:", "  - slug: all", "    title: Everything"]
    return "\n".join(lines) + "\n"


def phase_aggregator(opts: argparse.Namespace) -> dict[str, Any]:
    """Rounds (b), (c), (d) as the daemon runs them: one process, one parse pool, one database.

    Each round is ``poll --once --all`` through the real wiring (fetch, pool parse, SQLite,
    publish). Round (b) also pays for starting the pool and creating the database. Between
    (c) and (d), unmeasured, 10% of the feeds gain 3 items.
    """
    import logging

    from aggregator import collector, malloc
    from aggregator.parseworker import make_parse_pool
    from aggregator.pipeline import Pipeline, poll_once
    from aggregator.publisher import Publisher
    from aggregator.store.database import ensure_schema, make_engine
    from aggregator.store.repository import Store

    malloc.limit_arenas()  # as the command does (cli.main), before the pool and the writers start threads
    logging.getLogger("aggregator").setLevel(logging.WARNING)
    # How much of each round is publishing (the outputs, and in (b) the archive weeks the
    # backlog completes), which `reader` has no counterpart of: timed, not changed.
    publishing = {"s": 0.0}
    publish = Publisher.publish

    def timed_publish(self: Publisher, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return publish(self, *args, **kwargs)
        finally:
            publishing["s"] += time.perf_counter() - started

    Publisher.publish = timed_publish  # type: ignore[method-assign]
    collector.pace_for_service()  # as `aggregator run` and `poll` do
    config = _aggregator_config(opts)
    changed = json.loads(opts.only)
    rounds: dict[str, Any] = {}
    meter = Meter()
    batches = Batches()
    collections = Collections()
    engine = make_engine(config.settings.database_url)
    pool = make_parse_pool(config.settings.parse_workers)
    try:
        ensure_schema(engine, apart=True)  # as the daemon's commands do
        store = Store(engine)
        store.sync_sources(config.source_specs(), datetime.now(UTC))
        pipeline = Pipeline(config, store, parse_pool=pool)
        setup_cpu = Meter.read()[1] - meter.last[1]  # part of (b), shown apart in the report

        async def three_rounds() -> None:  # one event loop for all three, as in the daemon
            for name in ("b", "c", "d"):
                if name == "d":
                    for n in changed:
                        (Path(opts.dir) / f"{n}.xml").write_bytes(feed_body(n, opts.items, gained=3))
                    meter.lap()
                    batches.lap()
                    collections.lap()
                publishing["s"] = 0.0
                summary = await poll_once(pipeline, all_sources=True)
                rounds[name] = {
                    **meter.lap(),
                    "publish_s": round(publishing["s"], 2),
                    "polled": summary.polled,
                    "new": summary.new_items,
                    "updated": summary.updated_items,
                    "not_modified": summary.not_modified,
                    "errors": summary.errors,
                    **batches.lap(),
                    **collections.lap(),
                }

        asyncio.run(three_rounds())
        rounds["b"]["setup_cpu"] = round(setup_cpu, 2)
    finally:
        if pool is not None:
            pool.shutdown()
        engine.dispose()
    return rounds


def phase_reader(opts: argparse.Namespace) -> dict[str, Any]:
    """The same first ingest with ``reader``, using its own thread pool for retrieve + parse."""
    import logging

    from reader import make_reader

    logging.getLogger("reader").setLevel(logging.ERROR)
    meter = Meter()
    reader = make_reader(str(Path(opts.data) / "reader.sqlite"))
    for n in range(opts.feeds):
        reader.add_feed(opts.url(n))
    reader.update_feeds(workers=opts.reader_workers)
    figures = meter.lap()
    del figures["main_by_thread"]  # reader's threads are not ours to label
    figures["entries"] = reader.get_entry_counts().total
    reader.close()
    return figures


def phase_installed(opts: argparse.Namespace, data: Path) -> dict[str, Any]:
    """(f): the installed command's first ingest, sampled from outside: wall, CPU of the command
    and every process it started (``RUSAGE_CHILDREN`` once it has exited, its workers reaped by
    it), and each process's high-water mark, read every 0.2 s while it runs; the peak is the
    sum over the processes alive at one moment, at most."""
    command = Path(sys.executable).with_name("aggregator")
    if not command.exists():
        raise SystemExit(f"(f) needs the aggregator command beside {sys.executable}: pip install -e .")
    config = data / "feeds.yaml"
    config.write_text(_config_text(opts, data))
    log = data / "command.log"
    args = [str(command), "--config", str(config), "--log-level", "warning", "poll", "--once", "--all"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(args, stdout=output, stderr=output, cwd=data)
    peaks: dict[int, tuple[str, int]] = {}
    alive: list[set[int]] = []  # the processes seen at each sample
    while process.poll() is None:
        alive.append(set())
        for pid in _proc_tree(process.pid):
            hwm = _cpu_and_hwm([pid])[1]
            if hwm:
                peaks[pid] = (_process_kind(pid, main=process.pid), hwm)
                alive[-1].add(pid)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"(f) failed (exit {process.returncode}):\n{log.read_text()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Processes that never ran at the same time do not add up: the peak is that of the
    # processes alive together, each at its own high-water mark. A migration at the start
    # runs in a process of its own that ends before the parse workers start.
    at_peak = max(alive, key=lambda seen: sum(peaks[pid][1] for pid in seen), default=set())

    def listed(inside: bool) -> str:
        chosen = sorted(value for pid, value in peaks.items() if (pid in at_peak) == inside)
        return ",".join(f"{kind}:{hwm / 1e6:.0f}" for kind, hwm in chosen)

    apart = listed(False)
    return {
        "wall": wall, "cpu": cpu, "cpu_main": None, "rss": sum(peaks[pid][1] for pid in at_peak),
        "rss_by_process": listed(True), "processes": len(peaks), **({"not_at_the_peak": apart} if apart else {}),
    }  # fmt: skip


PHASES = {"floor": phase_floor, "aggregator": phase_aggregator, "reader": phase_reader}


def run_phase(opts: argparse.Namespace, name: str, data: Path, **extra: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--phase", name, "--dir", str(opts.feeds_dir), "--data", str(data)]
    args += ["--port", str(opts.port), "--feeds", str(opts.feeds), "--items", str(opts.items)]
    args += ["--workers", str(opts.workers), "--stream", opts.stream, "--story-matching", opts.story_matching]
    args += ["--concurrency", str(opts.concurrency), "--reader-workers", str(opts.reader_workers)]
    for key, value in extra.items():
        args += [f"--{key}", value]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- the driver -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1), help="aggregator parse_workers (its default)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="aggregator fetch concurrency")
    parser.add_argument("--reader-workers", type=int, default=16, help="reader update_feeds(workers=...)")
    parser.add_argument("--skip-reader", action="store_true")
    parser.add_argument(
        "--story-matching", choices=["semantic", "lexical", "off"], default="semantic", help="aggregator's setting"
    )
    parser.add_argument(
        "--stream",
        choices=["random", "stock"],
        default="random",
        help="items of random words, or news told from a few templates with copies across feeds (story matching)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    STREAM.update(kind=opts.stream, feeds=opts.feeds, items=opts.items)
    opts.url = lambda n: f"http://127.0.0.1:{opts.port}/{n}.xml"
    if opts.serve:
        serve(Path(opts.serve))
        return 0
    if opts.phase:
        sys.path.insert(0, str(REPO))
        print(json.dumps(PHASES[opts.phase](opts)))
        return 0
    return drive(opts)


def drive(opts: argparse.Namespace) -> int:
    if not opts.skip_reader and importlib.util.find_spec("reader") is None:
        print("reader is not installed: skipping (e)", file=sys.stderr)
        opts.skip_reader = True
    opts.load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    opts.feeds_dir = root / "feeds"
    started = time.perf_counter()
    size = write_feeds(opts.feeds_dir, opts.feeds, opts.items)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(opts.feeds_dir)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        opts.port = int(server.stdout.readline())
        opts.server_pid = server.pid
        results = run_all(opts, root)
    finally:
        server.terminate()
        server.wait()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(opts, size, results, time.perf_counter() - started)
    return 0


def run_all(opts: argparse.Namespace, root: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    changed = sorted(random.Random(7).sample(range(opts.feeds), max(1, opts.feeds // 10)))
    results["a"] = run_phase(opts, "floor", root)
    (root / "aggregator").mkdir()
    server_before = _cpu_and_hwm([opts.server_pid])[0]
    rounds = run_phase(opts, "aggregator", root / "aggregator", only=json.dumps(changed))
    results.update(rounds)
    results["server"] = {"aggregator": _cpu_and_hwm([opts.server_pid])[0] - server_before}
    results["d"]["changed_feeds"] = len(changed)
    results["a'"] = run_phase(opts, "floor", root, only=json.dumps(changed))  # the changed bodies
    # The floor again: this machine's speed drifts by ±15% over a minute, so the ratio to (b)
    # uses the mean of a floor measured before and one measured after it.
    results["a2"] = run_phase(opts, "floor", root)
    for n in changed:  # (f) and reader see the bodies (b) saw
        (opts.feeds_dir / f"{n}.xml").write_bytes(feed_body(n, opts.items))
    (root / "installed").mkdir()
    results["f"] = phase_installed(opts, root / "installed")
    if not opts.skip_reader:
        (root / "reader").mkdir()
        server_before = _cpu_and_hwm([opts.server_pid])[0]
        results["e"] = run_phase(opts, "reader", root / "reader")
        results["server"]["reader"] = _cpu_and_hwm([opts.server_pid])[0] - server_before
    return results


def wall_floor(b: dict[str, Any], workers: int, reader_wall: float) -> str:
    """How short (b)'s wall could be with its CPU as it is, whatever the overlap: not shorter than
    the main process's CPU (its threads share one interpreter), than each parse worker's even
    share of the other processes' CPU (the workers, and the pool's resource tracker, which uses
    next to none), nor than all of it spread over the cores. Against ``reader``'s wall, that says
    which process's CPU a change must take off for (b) to catch up: where the workers' share
    alone reaches ``reader``'s wall, no work taken off the main process can."""
    cores = len(os.sched_getaffinity(0))
    main, others = b["cpu_main"], b["cpu"] - b["cpu_main"]
    bounds = {"main": main, "each parse worker": others / workers, f"all over {cores} cores": b["cpu"] / cores}
    limit, floor = max(bounds.items(), key=lambda kv: kv[1])
    shown = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in bounds.items())
    return (
        f"(b)'s wall cannot be shorter than its CPU allows ({shown}): {floor:.1f} s, set by {limit}, "
        f"{floor / reader_wall:.2f}x (e)'s wall"
    )


def report(opts: argparse.Namespace, size: int, results: dict[str, dict[str, Any]], total: float) -> None:
    import feedparser
    import nh3

    try:
        from importlib.metadata import version

        reader_version = version("reader")
    except Exception:
        reader_version = "not installed"
    items = opts.feeds * opts.items
    print("== bench/ingest.py ==")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"load average (1 min) at start {opts.load_before:.2f}, at end {os.getloadavg()[0]:.2f}"
    )
    nh3_version = getattr(nh3, "__version__", "?")
    print(f"versions: feedparser {feedparser.__version__}, nh3 {nh3_version}, reader {reader_version}")
    print(
        f"corpus: {opts.feeds} feeds x {opts.items} items of the {opts.stream} stream (RSS 2.0 / Atom / RSS 1.0), "
        f"{size / 1e6:.1f} MB, {size / items:.0f} bytes per item on average"
    )
    print(
        f"aggregator: parse_workers={opts.workers}, concurrency={opts.concurrency}, "
        f"story_matching={opts.story_matching}; "
        f"reader: update_feeds(workers={opts.reader_workers})"
    )
    labels = {
        "a": "(a)  feedparser alone, 1 process",
        "b": "(b)  aggregator first ingest",
        "c": "(c)  aggregator re-poll (304)",
        "a'": "(a') feedparser alone, changed feeds",
        "d": "(d)  aggregator, 10% gained 3 items",
        "e": "(e)  reader first ingest",
        "f": "(f)  (b) by the installed command",
    }
    print(f"{'phase':40} {'wall s':>8} {'CPU s':>8} {'of which main':>14} {'peak RSS MB':>12}  notes")
    for key, label in labels.items():
        r = results.get(key)
        if r is None:
            continue
        shown = ("wall", "cpu", "cpu_main", "rss", *BATCH_KEYS)
        notes = " ".join(f"{k}={v}" for k, v in r.items() if k not in shown)
        main = "-" if r["cpu_main"] is None else f"{r['cpu_main']:.2f}"
        print(f"{label:40} {r['wall']:8.2f} {r['cpu']:8.2f} {main:>14} {r['rss'] / 1e6:12.0f}  {notes}")
    a, b, c, d, a2 = (results[k] for k in ("a", "b", "c", "d", "a'"))
    after = results["a2"]
    floor_cpu, floor_wall = (a["cpu"] + after["cpu"]) / 2, (a["wall"] + after["wall"]) / 2
    print(
        f"(a) measured again after the aggregator rounds: {after['cpu']:.2f} s CPU "
        f"({after['cpu'] / a['cpu'] - 1:+.0%}: machine drift); the floor below is the mean, {floor_cpu:.2f} s"
    )
    print(f"(b)/(a): CPU {b['cpu'] / floor_cpu:.2f}x (target <= 1.25), wall {b['wall'] / floor_wall:.2f}x")
    print(
        f"  (b) includes {b['setup_cpu']:.2f} s of CPU creating the database and syncing {opts.feeds} sources; "
        f"without it {(b['cpu'] - b['setup_cpu']) / floor_cpu:.2f}x"
    )
    if "e" in results:
        e = results["e"]
        # On the plain stream aggregator must be far faster than reader; on the stock stream, where
        # it matches every item to stories and reader matches nothing, no slower.
        target = 1.0 if opts.stream == "stock" else 0.35
        print(f"(b)/(e): wall {b['wall'] / e['wall']:.2f}x (target <= {target}), CPU {b['cpu'] / e['cpu']:.2f}x")
        print(f"  {wall_floor(b, opts.workers, e['wall'])}")
        polls = b["wall"] - b["publish_s"]
        print(
            f"  of (b)'s wall, {b['publish_s']:.2f} s was publishing once the polls were done (on a first ingest "
            f"mostly freezing the archive weeks its backlog completes), which reader has no counterpart of: "
            f"the polls alone took {polls:.2f} s, {polls / e['wall']:.2f}x (e)'s wall (the target stays on the whole)"
        )
    print(f"(c): wall {c['wall']:.2f}s for {c['polled']} sources, {c['not_modified']} not modified (target < 2 s)")
    print(f"(d)/(a'): CPU {d['cpu'] / a2['cpu']:.2f}x (target <= 1.3)")
    for key in ("b", "c", "d"):
        r = results[key]
        print(
            f"group commit in ({key}): {r['transactions']} transactions for {r['polled']} fetch results, "
            f"{r['results_per_tx']} each on average (transactions by size: {r['tx_sizes']}), "
            f"{r['commit_s']:.2f} s inside them, {r['batch_retries']} batches redone one by one"
        )
    print(f"peak RSS of (b), all processes: {b['rss'] / 1e6:.0f} MB (target <= 300)")
    print(f"peak RSS of (f), the installed command's processes: {results['f']['rss'] / 1e6:.0f} MB (target <= 300)")
    server = results["server"]
    shares = ", ".join(f"{seconds:.1f} s during the {phase} rounds" for phase, seconds in server.items())
    print(f"the feed server (not counted above, but on the same 2 cores): {shares} of CPU")
    print(f"total bench time {total:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
