"""The parse worker process: its pool, its limits, and its unit of work.

feedparser is where ingest spends its CPU, so bodies are parsed in worker processes
(``ParsePool``). Everything a worker does lives here, and a worker imports only this module and
the pure stages it calls (``normalize``, ``cluster``, ``stories``): importing the I/O stages
too (SQLAlchemy, aiohttp) would cost every worker the memory of libraries it never uses.

* limits: each document gets ``PARSE_CPU_SECONDS`` of CPU and the process
  ``PARSE_MEMORY_BYTES`` of address space (``init_parse_worker``), so a pathological document
  fails its own source with a ParseError;
* lifetime: a worker ends with the daemon, however the daemon ends (``_exit_with``), and a
  pool whose worker died is started again (``ParsePool``);
* unit of work: ``parse_and_prepare`` parses and normalizes one body, and signs and
  featurizes its items for story matching, but those the writer says it stored as they are
  (``marks_of``).
"""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from datetime import datetime
from hashlib import blake2b
from multiprocessing import get_context
from typing import Any, ParamSpec, TypeVar

from aggregator import cluster, stories
from aggregator.errors import ParseError
from aggregator.plaintext import html_to_lines
from aggregator.records import Item, ParsedFeed

log = logging.getLogger("aggregator")

# Budgets of one parse worker (see init_parse_worker): several times what a body at the fetch cap
# needs, so an honest feed never meets them and only a pathological document is stopped.
PARSE_CPU_SECONDS = 30.0
PARSE_MEMORY_BYTES = 1 << 30

START_METHOD = "spawn"
"""How a parse worker process starts: a fresh interpreter, never a fork of the daemon, which
holds threads, sockets and database handles. "forkserver" is just as safe, but it keeps one
more interpreter running for the daemon's whole life, a process that holds nothing its
workers share: they import what they use after they are forked from it, as a spawned worker
does at its start."""

Marks = bytes
"""Items already stored as they are, as ``item_mark``s packed 8 bytes each (``marks_of``): what
the writer tells a worker it need not sign or featurize again (``parse_and_prepare``)."""


def item_mark(key: str, fingerprint: str) -> int:
    """An item as stored: its key within its source and its content's fingerprint, hashed to 64
    bits. The writer and a worker compute it alike, each from the normalized item."""
    digest = blake2b(f"{key}\0{fingerprint}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def marks_of(items: Iterable[Item]) -> Marks:
    """The marks of ``items``, packed (``Marks``)."""
    return array("Q", (item_mark(item.key, item.fingerprint) for item in items)).tobytes()


Featurized = tuple[str, tuple[str, ...]]
"""An item's ``stories.Features.dumps()`` and its names and figures as words (``names.Terms``),
which the writer needs only to explain a decision."""


def parse_and_prepare(
    body: bytes, url: str, content_type: str | None, fetched_at: datetime, semantic: bool, known: Marks = b""
) -> tuple[ParsedFeed, dict[str, cluster.Signed], dict[str, Featurized]]:
    """Parse and normalize one body, and sign each item for story matching, and with
    ``semantic`` featurize it too. Signing is text processing as costly as normalizing, and
    embedding a headline and lead the costliest part of matching: in the main process they
    would take a large share of a first ingest's CPU, here they run on every core but that
    one, and the model is loaded once per worker.

    ``known``: the items of this source the writer stored as they are now (``marks_of`` of
    the items its last committed parse of the source found). A changed feed usually changed by
    a few items, and the writer matches only new and changed ones: the others are neither
    signed nor featurized, nor sent back. Computing them was most of a changed feed's cost;
    remembering what was computed instead took every worker a cache as large as the live
    items (half a kilobyte each), which a source parsed by another worker than last time
    missed anyway.
    """
    feed = document_to_feed(body, url, content_type, fetched_at)
    todo = list(_unknown(feed, known))
    signatures = {item.key: cluster.Signed.of(item.title, item.text) for item in todo}
    prepared = {item.key: featurize(item.title, feature_text(item), item.language) for item in todo} if semantic else {}
    return feed, signatures, prepared


def _unknown(feed: ParsedFeed, known: Marks) -> Iterator[Item]:
    """The items of ``feed`` that ``known`` does not hold."""
    if not known:
        yield from feed.items
        return
    marks = array("Q")
    marks.frombytes(known)
    held = set(marks)
    for item in feed.items:
        if item_mark(item.key, item.fingerprint) not in held:
            yield item


def feature_text(item: Item) -> str:
    """The text an item's story features are computed from: ``Item.text`` with the blocks of
    its HTML on lines of their own (``plaintext.html_to_lines``), so that a paragraph's first
    word starts a sentence for the names read from it. ``Item.text`` itself stays as it is:
    an entry with no guid is known by its hash, and curation rules search it."""
    html = item.content_html or item.summary_html
    return html_to_lines(html) if html else item.text


def featurize(title: str, text: str, language: str | None = None) -> Featurized:
    """An item's story features (stored form) and words; ``language``: its declared one."""
    features, terms = stories.features_of(title, text, signed=False, language=language)
    return features.dumps(), terms.words


# --- limits of a worker -------------------------------------------------------------------------
_cpu_budget: float | None = None  # set in parse workers by init_parse_worker


class ParseTimeout(ParseError):
    """The document used up its CPU budget."""


def init_parse_worker(
    cpu_seconds: float | None = PARSE_CPU_SECONDS, memory_bytes: int | None = PARSE_MEMORY_BYTES
) -> None:
    """Initializer of a parse worker process: bound each document's CPU and the process's memory.

    Time is bounded per document with a CPU timer (``document_to_feed`` arms it), memory per
    process with RLIMIT_AS: an allocation past it raises MemoryError, which fails the document,
    not the worker. Both only make sense in a process of our own, hence an initializer.
    """
    global _cpu_budget
    _cpu_budget = cpu_seconds
    _import_stages()
    if memory_bytes:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def document_to_feed(body: bytes, url: str, content_type: str | None, fetched_at: datetime) -> ParsedFeed:
    """Parse and normalize one body; the unit of work sent to the parse process pool.

    Raises only ``ParseError``: a hostile document must cost its source, never the batch.
    """
    try:
        with _cpu_limit(_cpu_budget):
            return _parse_and_normalize(body, url, content_type, fetched_at)
    except MemoryError:
        raise ParseError("document too large to parse within the memory limit") from None
    except RecursionError:
        raise ParseError("document nested too deeply") from None


def _parse_and_normalize(body: bytes, url: str, content_type: str | None, fetched_at: datetime) -> ParsedFeed:
    """``parse.parse_document``, then ``normalize.normalize_feed``. Imported here, not at the
    top: the daemon imports this module for its pool and hands every document to a worker, so
    it would hold feedparser, ftfy and nh3 in memory for nothing. A worker imports them as it
    starts (``init_parse_worker``); without a pool, the daemon does at its first document."""
    from aggregator.normalize import normalize_feed
    from aggregator.parse import parse_document

    return normalize_feed(parse_document(body, url, content_type), url, fetched_at)


def _import_stages() -> None:
    """Import what ``_parse_and_normalize`` uses now, before any document's budget runs."""
    import aggregator.normalize
    import aggregator.parse  # noqa: F401


@contextmanager
def _cpu_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``ParseTimeout`` in this thread once the process has spent ``seconds`` more CPU.

    A signal can only interrupt the main thread, so this applies in a worker process (where
    tasks run on the main thread) and is a no-op elsewhere. The timer repeats every 0.1 s
    after it first fires, so the exception keeps coming until it leaves the parser.
    """
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGPROF"):
        yield
        return
    armed = True

    def expire(_signum: int, _frame: Any) -> None:
        if armed:
            raise ParseTimeout(f"gave up after {seconds:g} s of CPU")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.1)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


# --- the pool --------------------------------------------------------------------------------------
P = ParamSpec("P")
T = TypeVar("T")


class ParsePool(Executor):
    """The parse process pool, started again whenever a worker has died.

    Each worker bounds every document's CPU time and its own memory
    (``init_parse_worker``), so a pathological document fails its source with a
    ParseError. A worker can still die (the OOM killer, a crash in native code), and that
    breaks a ProcessPoolExecutor for good: every later submit raises BrokenProcessPool, so
    one bad document would stop all parsing until a restart. The documents in flight fail
    their sources (retried at their next poll); the next submit gets a fresh pool.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=get_context(START_METHOD), initializer=_init_worker, initargs=(os.getpid(),)
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            log.warning("a parse worker died; starting a new parse pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _init_worker(parent: int) -> None:
    _exit_with(parent)
    init_parse_worker()


def _exit_with(pid: int) -> None:
    """End this process when process ``pid`` (the daemon) ends, however it ends.

    A parse worker holds both ends of its own task queue, so it never sees the daemon go: after
    a ``kill -9`` the workers waited forever, and kept the resource tracker alive with them
    (two processes or more per kill, unless systemd killed the whole cgroup). A pidfd becomes
    readable when its process exits; a thread waits on it.
    """
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)  # already gone
    except (AttributeError, OSError):
        return  # no pidfd here (not Linux >= 5.3): the worker lives as long as its queue

    def wait() -> None:
        select.select([handle], [], [])
        os._exit(0)

    threading.Thread(target=wait, name="exit-with-daemon", daemon=True).start()


def default_parse_workers() -> int:
    """One parser process per CPU but one, at least one.

    This process needs a core of its own while a large ingest runs (the event loop and the
    database writer). With as many parsers as cores, the parsers and this process contend for
    every core, and the switching costs more CPU and more time than the extra parser saves.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def make_parse_pool(workers: int | None) -> Executor | None:
    """A process pool sized to the machine; 0 parses in a thread of this process instead."""
    count = default_parse_workers() if workers is None else workers
    if count <= 0:
        return None
    return ParsePool(count)
