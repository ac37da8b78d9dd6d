"""Stored story features never change by accident: every sample text's features, words and
vector are compared with the ones recorded in ``tests/data/features/expected.json``.

Features are stored with each item and compared with features computed later, by another
process or another release, so a faster way of computing them must give the same bytes. The
samples are the headlines and leads of ``tests/data/stories`` (real news prose), each topic's
leads run together into one long text (past what the embedding reads), and texts made to hit the
tokenizer's and the name extractor's corners. The stored features and words are compared byte
for byte. The vector itself, before quantisation, is compared on every eighth component to
within ``VECTOR_TOLERANCE``: far below what quantisation keeps, so that even a difference it
would hide shows, but not byte for byte, since numpy's float32 sums differ in their last bits
from one CPU to another (AVX-512 against AVX2), and CI runs on whichever machine it gets.

After a deliberate change to the features (with a new ``stories.FEATURES_VERSION``), record them
again with ``.venv/bin/python -m tests.test_features_golden``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator import cluster, names, parseworker, semantic, stories, wordpieces

DATA = Path(__file__).resolve().parent / "data"
EXPECTED = DATA / "features" / "expected.json"

CORNERS = [
    ("", ""),
    ("Headline only", ""),
    ("", "Text only, no headline."),
    ("  Leading,  double   and trailing spaces  ", "   in the text too   "),
    ("Tabs\tand\nnewlines", "Line one\r\nline two\u2028and a line separator\tthen a tab."),
    ("Literal <s> and </s> and <unk> in a headline", "Text with <s>inside</s>, <unk> and <s > near misses."),
    ("The block \u2581 character\u2581inside", "\u2581\u2581 leads, and trails \u2581"),
    ("Ελληνικά, русский и 日本語のニュース", "Москва — 東京: emoji 🌍🔥, combining e\u0301 and ﬁnance ligatures."),
    ("Soft\u00adhyphen in Ger\u00adman", "NBSP\u00a0here: 3\u00a0000 people, 4,5% and 4.5 per cent, $3bn, U.S., U.K."),
    ("ALL CAPS HEADLINE FROM KARACHI", "KARACHI (AP) — Dr. Smith met Mr. Jones in St. Louis on Tuesday. Then left."),
    ("Words cut mid-way", "antidisestablishmentarianism " * 60),
    ("A text with no spaces", "x" * 1400 + "yz" * 100),
    ("lower-case start", "e.g. this, i.e. that, etc. and so on. also cf. the u.s. and end. then more."),
    ("Numbers", "1,234,567 and 1.5bn and 12k and 3 thousand and 0.50% and 7.0 percent and 1,5 m and 10.000."),
    (
        "Chávez Meets Erdoğan In Zürich",
        "SÃO PAULO — Hugo Chavez, Recep Erdogan, Jonas Støre and Lech Wałęsa met Nguyễn and Сергей Шойгу.",
    ),
    (
        "Harbour Ferry Strike Ends",
        "Ferry crews in Tellerton ended their strike on Friday. (Reporting by Ana Vell; Editing by Jo Marr) The "
        "post Harbour Ferry Strike Ends appeared first on Tellerton Evening Courier. Continue reading…",
    ),
]


def samples() -> list[tuple[str, str, str]]:
    """(name, title, text) of every sample, in a fixed order."""
    found: list[tuple[str, str, str]] = []
    for path in sorted((DATA / "stories").rglob("*.json")):
        topic = path.relative_to(DATA / "stories").with_suffix("").as_posix()
        items = json.loads(path.read_text(encoding="utf-8"))["items"]
        found += [(f"{topic}/{item['id']}", item["title"], item.get("summary", "")) for item in items]
        found.append((f"{topic}/all", items[0]["title"], " ".join(item.get("summary", "") for item in items)))
    found += [(f"corner/{n}", title, text) for n, (title, text) in enumerate(CORNERS)]
    return found


def record(title: str, text: str) -> dict[str, Any]:
    """What is stored of an item, and its vector's digest, computed without the item cache."""
    features, terms = stories.features_of(title, text, signed=False)
    vector = semantic.embedder().embed(title, stories.flattened(cluster.without_boilerplate(text)))  # as features_of
    return {
        "features": features.dumps(),
        "words": list(terms.words),
        "vector_sample": [round(float(x), 6) for x in vector[::8]],
    }


VECTOR_TOLERANCE = 1e-5
"""How far a sampled vector component may be from the recorded one: a thousandth of what one
quantisation step is worth, a hundred times what rounding and a CPU's last bits make."""


def assert_recorded(name: str, found: dict[str, Any], recorded: dict[str, Any]) -> None:
    assert (found["features"], found["words"]) == (recorded["features"], recorded["words"]), name
    assert np.allclose(found["vector_sample"], recorded["vector_sample"], rtol=0, atol=VECTOR_TOLERANCE), name


@pytest.fixture(scope="module")
def expected() -> dict[str, dict[str, Any]]:
    recorded: dict[str, dict[str, Any]] = json.loads(EXPECTED.read_text(encoding="utf-8"))
    return recorded


def test_every_sample_is_recorded(expected: dict[str, dict[str, Any]]) -> None:
    assert [name for name, _, _ in samples()] == list(expected)
    assert any(len(text) > 1500 for _, _, text in samples())  # past what the embedding reads


@pytest.mark.parametrize(("name", "title", "text"), samples(), ids=[name for name, _, _ in samples()])
def test_features_are_the_recorded_ones(expected: dict[str, dict[str, Any]], name: str, title: str, text: str) -> None:
    assert_recorded(name, record(title, text), expected[name])


def test_the_worker_stores_the_recorded_features(expected: dict[str, dict[str, Any]]) -> None:
    for name, title, text in samples():
        stored, words = parseworker.featurize(title, text)
        assert (stored, list(words)) == (expected[name]["features"], expected[name]["words"]), name


def test_words_forgotten_and_learnt_again_give_the_recorded_features(
    expected: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(names, "WORDS_REMEMBERED", 7)
    monkeypatch.setattr(wordpieces, "WORDS_REMEMBERED", 7)
    for name, title, text in samples():
        assert_recorded(name, record(title, text), expected[name])


def main() -> None:
    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    recorded = {name: record(title, text) for name, title, text in samples()}
    lines = (f"{json.dumps(name)}: {json.dumps(entry, ensure_ascii=False)}" for name, entry in recorded.items())
    EXPECTED.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")  # a line per sample
    print(f"recorded {len(recorded)} samples in {EXPECTED}")


if __name__ == "__main__":
    main()
