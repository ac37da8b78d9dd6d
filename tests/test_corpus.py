"""The robustness sweep: every file of the shared feed corpus through parse + normalize.

The corpus (~2,400 files: feedparser's unit cases and ~300 real-world and broken feeds, see
its README.md) lives beside the repository as ``shared/corpus`` — ``../shared/corpus`` from
the repository root, or wherever ``AGGREGATOR_CORPUS`` points — and is never copied in. The
sweep is skipped, with the path it looked at, when the folder is absent.

Each file listed in its INDEX.tsv goes through ``document_to_feed`` in a parse pool built like
the pipeline's (``START_METHOD``, ``init_parse_worker``), as a body with no HTTP headers, and
lands in exactly one bucket:

* ingested — a ``ParsedFeed`` came back;
* rejected — a ``ParseError`` with a one-line reason (the per-source error users see);
* crashed — any other exception, or a worker that died: there must be none.

Every ingested item is then checked for sanitizer escapes (``find_escapes``, defined in
tests/test_normalize.py) in ``summary_html`` and ``content_html``, and for a link or enclosure
that is not http(s). There must be none anywhere, and feedparser's ``sanitize`` cases are
counted on their own. The counts are printed (they show without ``-s``).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import pytest

from aggregator.errors import ParseError
from aggregator.parseworker import START_METHOD, document_to_feed, init_parse_worker
from tests.test_normalize import find_escapes, url_scheme

CORPUS = Path(os.environ.get("AGGREGATOR_CORPUS") or Path(__file__).resolve().parents[1].parent / "shared" / "corpus")
FETCHED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SANITIZE_CASES = "feedparser/wellformed/sanitize/"
CHUNK = 40  # files per pool task: enough to amortize pickling, small enough to balance two workers
CPU_SECONDS = 20.0  # per document; the slowest corpus file needs well under a second

pytestmark = pytest.mark.skipif(
    not (CORPUS / "INDEX.tsv").is_file(), reason=f"feed corpus not found at {CORPUS} (set AGGREGATOR_CORPUS)"
)


@dataclass
class Outcome:
    path: str
    bucket: str  # ingested | rejected | crashed
    detail: str = ""  # the rejection reason or the crash
    items: int = 0
    escapes: list[str] = field(default_factory=list)


def sweep_chunk(root: str, paths: list[str]) -> list[Outcome]:
    """Runs in a pool worker: the outcome of each file, never an exception."""
    outcomes = []
    for path in paths:
        body = (Path(root) / path).read_bytes()
        try:
            feed = document_to_feed(body, f"https://corpus.example/{path}", None, FETCHED_AT)
        except ParseError as exc:
            outcomes.append(Outcome(path, "rejected", str(exc)))
            continue
        except Exception as exc:  # the point of the sweep: count them instead of stopping
            outcomes.append(Outcome(path, "crashed", f"{type(exc).__name__}: {exc}"))
            continue
        escapes = []
        for item in feed.items:
            for name in ("summary_html", "content_html"):
                escapes += [f"{item.key} {name}: {e}" for e in find_escapes(getattr(item, name))]
            for url in [item.link or "", *(e.url for e in item.enclosures)]:
                if url and url_scheme(url) not in ("http", "https"):
                    escapes.append(f"{item.key}: non-http link {url[:60]!r}")
        outcomes.append(Outcome(path, "ingested", items=len(feed.items), escapes=escapes))
    return outcomes


def index_rows() -> list[dict[str, str]]:
    """The rows of the corpus's INDEX.tsv (``tests/corpusrun.py`` serves the same files)."""
    with (CORPUS / "INDEX.tsv").open(newline="") as index:
        return list(csv.DictReader(index, delimiter="\t"))


@pytest.fixture(scope="module")
def sweep() -> dict[str, Outcome]:
    paths = [row["path"] for row in index_rows()]
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    outcomes: dict[str, Outcome] = {}
    with ProcessPoolExecutor(
        2, mp_context=get_context(START_METHOD), initializer=init_parse_worker, initargs=(CPU_SECONDS, None)
    ) as pool:
        futures = [(chunk, pool.submit(sweep_chunk, str(CORPUS), chunk)) for chunk in chunks]
        for chunk, future in futures:
            try:
                outcomes.update((o.path, o) for o in future.result())
            except Exception as exc:  # a dead worker takes its whole chunk with it
                outcomes.update((p, Outcome(p, "crashed", f"worker lost: {type(exc).__name__}")) for p in chunk)
    return outcomes


def test_every_file_is_ingested_or_rejected_and_the_counts_are_printed(
    sweep: dict[str, Outcome], capsys: pytest.CaptureFixture[str]
) -> None:
    buckets = Counter(o.bucket for o in sweep.values())
    escapes = sum(len(o.escapes) for o in sweep.values())
    sanitize = [o for o in sweep.values() if o.path.startswith(SANITIZE_CASES)]
    sanitize_escapes = sum(len(o.escapes) for o in sanitize)
    with capsys.disabled():
        print(
            f"\ncorpus sweep over {len(sweep)} files in {CORPUS}: {buckets['ingested']} ingested "
            f"({sum(o.items for o in sweep.values())} items), {buckets['rejected']} rejected, "
            f"{buckets['crashed']} crashed; sanitizer escapes: {escapes} "
            f"({sanitize_escapes} in {len(sanitize)} feedparser sanitize cases)"
        )
    assert len(sweep) == len(index_rows())
    crashed = [f"{o.path}: {o.detail}" for o in sweep.values() if o.bucket == "crashed"]
    assert crashed == []
    assert buckets["ingested"] + buckets["rejected"] == len(sweep)


def test_rejections_carry_a_one_line_reason(sweep: dict[str, Outcome]) -> None:
    rejected = [o for o in sweep.values() if o.bucket == "rejected"]
    assert rejected, "the corpus has broken files: some must be rejected"
    bad = [f"{o.path}: {o.detail!r}" for o in rejected if not o.detail or "\n" in o.detail or len(o.detail) > 200]
    assert bad == []


def test_no_sanitizer_escape_anywhere(sweep: dict[str, Outcome]) -> None:
    sanitize = [o for o in sweep.values() if o.path.startswith(SANITIZE_CASES)]
    assert len(sanitize) > 700 and all(o.bucket == "ingested" for o in sanitize)
    assert [f"{o.path}: {e}" for o in sanitize for e in o.escapes] == []
    assert [f"{o.path}: {e}" for o in sweep.values() for e in o.escapes] == []


def test_nothing_feedparser_reads_entries_from_is_rejected(sweep: dict[str, Outcome]) -> None:
    """The INDEX labels what feedparser 6.0.14 (alone, defaults) extracts: we may not refuse more."""
    refused = [
        f"{row['path']}: {sweep[row['path']].detail}"
        for row in index_rows()
        if row["feedparser_entries"] not in ("", "0") and sweep[row["path"]].bucket == "rejected"
    ]
    assert refused == []


def test_real_world_feeds_all_ingest_with_items(sweep: dict[str, Outcome]) -> None:
    real = [o for o in sweep.values() if "/real-world/" in o.path]
    assert len(real) >= 20
    assert [o.path for o in real if o.bucket != "ingested" or not o.items] == []
