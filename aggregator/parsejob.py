"""The parse pool's unit of work: bytes in, the normalized feed and its story signatures out.

It has a module of its own so that a worker process imports only what parsing needs
(``normalize``, ``cluster`` and ``stories``, all pure): a function defined in ``pipeline`` would
make every worker import the I/O stages too — SQLAlchemy and aiohttp, 50 MB per worker.
"""

from __future__ import annotations

import threading
from datetime import datetime
from hashlib import blake2b

from aggregator import cluster, names, semantic, stories
from aggregator.normalize import document_to_feed
from aggregator.records import ParsedFeed

SIGNED_CACHE_SIZE = 50_000
"""Signatures a process remembers, by a digest of what they were computed from: their
stored form only, about 330 bytes each with the digest (16 MB when full). A feed that
changed usually changed by a few items; the others were signed when that feed was last
parsed, by this process if it is the only parse worker. Polls go round every source, so
this must hold about every live item to help at all (first in, first out)."""

_signed: dict[bytes, str] = {}
_featured: dict[bytes, Featurized] = {}  # the same, for story features (about 600 bytes each)
_signed_lock = threading.Lock()  # without a pool, parsing runs on several threads


def parse_and_sign(
    body: bytes, url: str, content_type: str | None, fetched_at: datetime
) -> tuple[ParsedFeed, dict[str, cluster.Signed]]:
    """Parse and normalize one body, and sign every item for story matching.

    Signing is text processing as costly as normalizing (0.18 ms an item, 15% of the main
    process's CPU in a first ingest); here it runs on every core instead of the one, and so
    do the stored form of each signature and its lookup keys.
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
    digest = blake2b(f"{title}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    with _signed_lock:
        stored = _featured.get(digest)
    if stored is not None:
        return stored
    terms = names.extract(title, text)
    stored = (stories.Features(semantic.embedder().embed(title, text), terms.keys).dumps(), terms.words)
    with _signed_lock:
        _featured[digest] = stored
        while len(_featured) > SIGNED_CACHE_SIZE:
            del _featured[next(iter(_featured))]
    return stored


def sign(title: str, text: str) -> cluster.Signed:
    """``cluster.Signed.of``, remembered: a changed feed's unchanged items cost a digest
    and a decode (10 µs) instead of a signature (60 µs). Signatures are pure, so a
    remembered one is the one that would be computed."""
    digest = blake2b(f"{title}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    with _signed_lock:
        stored = _signed.get(digest)
    if stored is not None:
        return cluster.Signed.from_stored(stored)
    signed = cluster.Signed.of(title, text)
    with _signed_lock:
        _signed[digest] = signed.stored
        while len(_signed) > SIGNED_CACHE_SIZE:
            del _signed[next(iter(_signed))]
    return signed
