"""Featurize benchmark: CPU per item of the parse worker's story features (semantic matching).

Runs ``parseworker.featurize`` (embedding + names and figures + stored form) on two corpora,
in this process and on one thread, and prints the CPU time per item of each stage:

* ``wikinews``: the headlines and leads of ``../shared/stories/wikinews-dev.csv`` (real news text
  from many outlets: a wide vocabulary, leads of up to 600 characters);
* ``farm``: the items of bench/ingest.py's first 60 feeds, parsed and normalized as a parse worker
  sees them (1-2.5 KB of text each, cut to what the embedding reads).

Each stage runs over each corpus twice, every item computed each time: pass 1 is the first time
this process meets the texts, pass 2 the best of ``--repeat`` runs after it. The per-word caches
of the tokenizer and of ``names`` are kept from one run to the next, so only the first row
(``wikinews featurize``, pass 1) is what a freshly started worker pays; the farm's pass 1 meets
a new vocabulary with those caches already warm. The figures are CPU seconds
(``time.process_time``) divided by items; ``threads`` is the calling thread's CPU over the
process's, 1.00 when no other thread (such as a tokenizer's thread pool) did any of the work.

The digests at the end are of every item's stored features and words and of every vector's
float32 bytes: equal digests before and after a change mean the change altered no output.
Usage::

    .venv/bin/python bench/featurize.py
    .venv/bin/python bench/featurize.py --repeat 3     # best of three for each figure
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):  # run as a script from anywhere
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import ingest  # noqa: E402

from aggregator import names, parseworker, semantic, stories  # noqa: E402

WIKINEWS = ROOT.parent / "shared" / "stories" / "wikinews-dev.csv"
FARM_FEEDS = 60

Texts = list[tuple[str, str]]


def wikinews() -> Texts:
    with WIKINEWS.open(newline="", encoding="utf-8") as file:
        return [(row["title"], row["lead"]) for row in csv.DictReader(file)]


def farm() -> Texts:
    texts: Texts = []
    fetched = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    for feed in range(FARM_FEEDS):
        body = (ingest.rss2, ingest.atom, ingest.rss1)[feed % 3](feed, range(30))
        parsed = parseworker.document_to_feed(body, f"http://127.0.0.1/feed{feed}", None, fetched)
        texts += [(item.title, item.text) for item in parsed.items]
    return texts


def per_item(texts: Texts, work: Callable[[str, str], object], repeat: int) -> tuple[float, float]:
    """Best CPU microseconds per item over ``repeat`` runs: of the process and of this thread."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        process, thread = time.process_time(), time.thread_time()
        for title, text in texts:
            work(title, text)
        spent = (time.process_time() - process, time.thread_time() - thread)
        best = min(best, spent)
    return best[0] / len(texts) * 1e6, best[1] / len(texts) * 1e6


def stages(embedder: semantic.Embedder) -> dict[str, Callable[[str, str], object]]:
    def dumps(title: str, text: str) -> str:
        return stories.Features(embedder.embed(title, text), names.extract(title, text).keys).dumps()

    return {
        "featurize": parseworker.featurize,
        "  embed": embedder.embed,
        "  names.extract": names.extract,
        "  (both + dumps)": dumps,
    }


def digests(texts: Texts, embedder: semantic.Embedder) -> tuple[str, str]:
    features, vectors = hashlib.sha256(), hashlib.sha256()
    for title, text in texts:
        stored, words = parseworker.featurize(title, text)
        features.update(f"{stored}\t{chr(31).join(words)}\n".encode("utf-8", "surrogatepass"))
        vectors.update(embedder.embed(title, text).tobytes())
    return features.hexdigest()[:16], vectors.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each figure (the best is printed)")
    args = parser.parse_args(argv)
    print("== bench/featurize.py ==")
    print(f"command: python bench/featurize.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    load = os.getloadavg()[0]
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, load {load:.2f}")
    embedder = semantic.embedder()
    corpora = {"wikinews": wikinews(), "farm": farm()}
    print(f"{'corpus':<10}{'stage':<20}{'pass 1 us':>11}{'pass 2 us':>11}{'threads':>9}")
    for name, texts in corpora.items():
        for stage, work in stages(embedder).items():
            first = per_item(texts, work, 1)
            second = per_item(texts, work, args.repeat)
            print(f"{name:<10}{stage:<20}{first[0]:>11.1f}{second[0]:>11.1f}{second[1] / second[0]:>9.2f}")
    for name, texts in corpora.items():
        features, vectors = digests(texts, embedder)
        print(f"digests of {name} ({len(texts)} items): features {features}, vectors {vectors}")
    print(f"load average (1 min) at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
