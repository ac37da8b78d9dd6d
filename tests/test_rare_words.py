"""Rare plain words as evidence: two reports of one incident share "capsized", "squall" and
"lifeboat" even when they share few names, and such words add to the names' weight without
entering the agreement check. Real text through the real model's tokenizer and stemmer."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from aggregator import names, semantic, stories, wordpieces
from aggregator.stories import Features, Member, StoryProfile, TermStats, features_of, judge

NOON = datetime(2026, 3, 3, 12, tzinfo=UTC)
CAPSIZE = (
    "Ferry capsizes on Lake Torvane in squall, dozens rescued",
    "A passenger ferry capsized on Lake Torvane on Sunday after a sudden squall swamped its deck; lifeboats "
    "and fishermen pulled dozens of passengers from the water, the coastguard said.",
)
OVERTURN = (  # another outlet's own report: one place name in common, the same plain facts
    "Dozens plucked from Torvane waters after ferry overturns",
    "Fishermen and lifeboat crews plucked dozens of people from the water after a ferry overturned in a "
    "squall on Sunday. The coastguard said the vessel capsized within minutes.",
)


def test_plain_words_are_stemmed_and_names_left_to_extract() -> None:
    slapping = names.plain_words("Pope apologises after slapping hand", "", names.extract("Pope", ""))
    slaps = names.plain_words("WATCH: Pope slaps woman's hand", "", names.Terms(()))
    assert "slapping" in slapping and "slaps" in slaps
    assert names.stem("slapping") == names.stem("slaps") == "~slap"
    assert "pope" not in slapping  # a name, read by ``names.extract``
    assert all(len(word) >= names.PLAIN_WORD_LETTERS for word in slaps)


def test_a_word_the_vocabulary_holds_whole_is_no_evidence() -> None:
    found = stories.rare_words("Government says police killed", "officials reported robocall fines", names.Terms(()))
    assert "~govern" not in found and "~kill" not in found and "~offici" not in found
    assert found["~robocal"][1] == stories.RARE_WORD_WEIGHT  # three pieces or more: full weight
    pieces = semantic.embedder().pieces(["government", "robocall"])
    assert pieces[0] == 1 and pieces[1] >= stories.RARE_PIECES


def test_word_pieces_are_the_same_without_the_word_by_word_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    words = ["slapping", "government", "robocall", "izzadin", "parade"]
    loaded = semantic.embedder()
    monkeypatch.setattr(wordpieces.WordPieces, "of", classmethod(lambda _cls, _tokenizer: None))
    plain = semantic.Embedder(loaded._table, loaded._tokenizer)
    assert plain._pieces is None
    assert plain.pieces(words) == loaded.pieces(words)
    assert plain.pieces([]) == []


def test_an_item_keeps_a_bounded_number_of_rare_words_the_rarest_first() -> None:
    unusual = " ".join(f"zorbex{chr(97 + n)}quillan" for n in range(26))  # made-up words, many pieces each
    found = stories.rare_words("Parade floats", f"parade {unusual}", names.Terms(()))
    assert len(found) == stories.MAX_RARE_WORDS
    assert "~parad" not in found  # two pieces: it gives way to the rarer words
    assert all(weight == stories.RARE_WORD_WEIGHT for _, weight in found.values())


def test_shared_rare_words_carry_an_independent_report_over_the_names_bar() -> None:
    first, _ = features_of(*CAPSIZE)
    second, terms = features_of(*OVERTURN)
    story = StoryProfile(1, (Member(1, NOON, first),), NOON)
    stats = TermStats(200, {})
    joined = judge(second, NOON + timedelta(hours=1), story, stats)
    without = judge(replace(second, words={}), NOON + timedelta(hours=1), story, stats)
    assert joined.joins and not without.joins
    assert "too few rare names" in without.why_not
    assert joined.word_weight > 0 and joined.name_weight == pytest.approx(without.name_weight + joined.word_weight)
    reason = joined.reason(terms)
    assert "rare word stems" in reason and "squall" in reason and "lifeboat" in reason


def test_rare_words_never_make_other_names_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same plain facts about another lake's ferry (other place, other day) share the words
    but not the names. With the names bar lowered so that the words alone clear it, the
    agreement check, which counts names only, still refuses it, and still takes the true rewrite."""
    monkeypatch.setattr(stories, "MIN_NAME_WEIGHT", 1.0)
    monkeypatch.setattr(stories, "STRONG_NAME_WEIGHT", 1.0)
    first, _ = features_of(*CAPSIZE)
    title, text = (
        part.replace("Lake Torvane", "Lake Marisk").replace("Torvane", "Marisk").replace("Sunday", "Friday")
        for part in OVERTURN
    )
    story = StoryProfile(1, (Member(1, NOON, first),), NOON)
    stats = TermStats(200, {})
    look_alike = judge(features_of(title, text)[0], NOON + timedelta(hours=1), story, stats)
    assert look_alike.word_weight >= 1.0 and not look_alike.joins
    assert "mostly differ" in look_alike.why_not
    assert judge(features_of(*OVERTURN)[0], NOON + timedelta(hours=1), story, stats).joins


def test_features_with_rare_words_survive_storage_and_older_ones_still_load() -> None:
    original, _ = features_of(*CAPSIZE)
    assert original.words
    back = Features.loads(original.dumps(), original.signature)
    assert back.words == original.words and back.terms == original.terms
    assert float(np.dot(back.vector, original.vector)) > 0.999
    # An item stored by the previous release ("s1": vector and terms only) is still compared.
    packed = semantic.quantise(original.vector) + b"".join(t.to_bytes(4, "big") for t in sorted(original.terms))
    older = Features.loads("s1:" + base64.b64encode(packed).decode("ascii"))
    assert older.terms == original.terms and older.words == {}
    with pytest.raises(ValueError):
        Features.loads(original.dumps()[:60])
