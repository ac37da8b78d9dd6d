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
* unit of work: ``parse_and_prepare`` parses, normalizes and signs one body, with a cache of
  signatures and story features by content (``sign``, ``featurize``).
"""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from datetime import datetime
from hashlib import blake2b
from multiprocessing import get_context
from typing import Any, ParamSpec, TypeVar

from aggregator import cluster, stories
from aggregator.errors import ParseError
from aggregator.records import ParsedFeed

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

SIGNED_CACHE_SIZE = 50_000
"""Items a process remembers the signature and story features of, by a digest of what they
were computed from. A feed that changed usually changed by a few items; the others were
signed when that feed was last parsed, by this process if it is the only parse worker. Polls
go round every source, so this must hold about every live item to help at all (first in,
first out). Each is kept as one bytes object (``_remember``), its signature and features as
the bytes their base64 stands for (``_compact``): with the semantic features about 0.55 KB,
28 MB when full (as the stored text it took 0.7 KB, as Python strings and tuples 1.3 KB)."""

_remembered: dict[bytes, bytes] = {}
_remembered_lock = threading.Lock()  # without a pool, parsing runs on several threads


def remembered() -> tuple[int, int]:
    """Items this process remembers the signature and features of, and the most it keeps
    (``SIGNED_CACHE_SIZE``): a bounded cache that fills as new items arrive, which
    ``bench/soak.py`` prints beside the memory (in-process parsing keeps it in the daemon)."""
    with _remembered_lock:
        return len(_remembered), SIGNED_CACHE_SIZE


_LENGTHS = struct.Struct(">II")  # a remembered item's signature and features: how many bytes each
_WORD = "\0"  # between the words: a word holding it is not remembered
_TEXT = b"\0"  # a stored form kept as its text (``_compact``): never the start of a version


def parse_and_sign(
    body: bytes, url: str, content_type: str | None, fetched_at: datetime
) -> tuple[ParsedFeed, dict[str, cluster.Signed]]:
    """Parse and normalize one body, and sign every item for story matching.

    Signing is text processing as costly as normalizing, and in the main process it would
    take a large share of a first ingest's CPU; here it runs on every core instead of the one,
    and so do the stored form of each signature and its lookup keys.
    """
    feed = document_to_feed(body, url, content_type, fetched_at)
    return feed, {item.key: sign(item.title, item.text) for item in feed.items}


Featurized = tuple[str, tuple[str, ...]]
"""An item's ``stories.Features.dumps()`` and its names and figures as words (``names.Terms``),
which the writer needs only to explain a decision."""


def parse_and_prepare(
    body: bytes, url: str, content_type: str | None, fetched_at: datetime, semantic: bool
) -> tuple[ParsedFeed, dict[str, cluster.Signed], dict[str, Featurized]]:
    """``parse_and_sign``, and with ``semantic`` each item's story features too: embedding a
    headline and lead is the costliest part of matching, so it runs on the parse workers,
    where the model is loaded once per process."""
    feed, signatures = parse_and_sign(body, url, content_type, fetched_at)
    prepared = {item.key: featurize(item.title, item.text) for item in feed.items} if semantic else {}
    return feed, signatures, prepared


def featurize(title: str, text: str) -> Featurized:
    """An item's features and words, remembered like ``sign`` (a feed's unchanged items are
    embedded once per process)."""
    digest = _digest(title, text)
    signed, featurized = _recall(digest)
    if featurized is not None:
        return featurized
    features, terms = stories.features_of(title, text, signed=False)
    featurized = (features.dumps(), terms.words)
    _remember(digest, signed, featurized)
    return featurized


def sign(title: str, text: str) -> cluster.Signed:
    """``cluster.Signed.of``, remembered: a changed feed's unchanged items cost a digest
    and a decode, a fraction of a signature. Signatures are pure, so a remembered one is
    the one that would be computed."""
    digest = _digest(title, text)
    stored, featurized = _recall(digest)
    if stored is not None:
        return cluster.Signed.from_stored(stored)
    signed = cluster.Signed.of(title, text)
    _remember(digest, signed.stored, featurized)
    return signed


def _digest(title: str, text: str) -> bytes:
    return blake2b(f"{title}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _recall(digest: bytes) -> tuple[str | None, Featurized | None]:
    """What is remembered of an item: its stored signature and its features, each if known."""
    with _remembered_lock:
        packed = _remembered.get(digest)
    if packed is None:
        return None, None
    signed_length, features_length = _LENGTHS.unpack_from(packed)
    signed_end = _LENGTHS.size + signed_length
    features_end = signed_end + features_length
    signed, features, words = packed[_LENGTHS.size : signed_end], packed[signed_end:features_end], packed[features_end:]
    featurized = None
    if features:
        text = words.decode("utf-8", "surrogatepass")
        featurized = (_expand(features, FEATURES_BASE64), tuple(text.split(_WORD)) if text else ())
    return (_expand(signed, SIGNATURE_BASE64) if signed else None), featurized


def _remember(digest: bytes, signed: str | None, featurized: Featurized | None) -> None:
    """Keep an item's stored signature and features (either may be unknown) as one bytes
    object, forgetting the oldest items past ``SIGNED_CACHE_SIZE``."""
    signed_part = _compact(signed, SIGNATURE_BASE64) if signed else b""
    features_part = words = b""
    if featurized is not None and all(word and _WORD not in word for word in featurized[1]):
        features_part = _compact(featurized[0], FEATURES_BASE64)
        words = _WORD.join(featurized[1]).encode("utf-8", "surrogatepass")
    packed = b"".join((_LENGTHS.pack(len(signed_part), len(features_part)), signed_part, features_part, words))
    with _remembered_lock:
        _remembered[digest] = packed
        while len(_remembered) > SIGNED_CACHE_SIZE:
            del _remembered[next(iter(_remembered))]


Codec = tuple[Callable[[bytes], str], Callable[[str], bytes]]
"""How a stored form writes its bytes as base64 text, and reads them back."""

SIGNATURE_BASE64: Codec = (cluster.signature_text, cluster.signature_bytes)
FEATURES_BASE64: Codec = (stories.features_text, stories.features_bytes)


def _compact(form: str, codec: Codec) -> bytes:
    """A stored form ("version:base64") as its version, ":" and the bytes the base64 stands for,
    a quarter smaller. Kept as its text (after ``_TEXT``) unless the codec writes that text
    back from those bytes, so that ``_expand`` always returns the form that was computed."""
    encode, decode = codec
    version, colon, payload = form.partition(":")
    if colon and version.isascii() and version.isalnum():
        try:
            raw = decode(payload)
        except ValueError:  # binascii.Error is a ValueError
            raw = None
        if raw is not None and encode(raw) == payload:
            return version.encode("ascii") + b":" + raw
    return _TEXT + form.encode("ascii")


def _expand(compact: bytes, codec: Codec) -> str:
    """Back from ``_compact``: the stored form, as it was computed."""
    if compact.startswith(_TEXT):
        return compact[len(_TEXT) :].decode("ascii")
    version, _, raw = compact.partition(b":")
    return f"{version.decode('ascii')}:{codec[0](raw)}"


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
