"""Tokenizing word by word gives the ids the model's tokenizer gives for the whole text."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, normalizers
from tokenizers.models import BPE

from aggregator import semantic, wordpieces

PIECES = [*"abAB \u2581\n\t.,'’-03<>/éλж日🌍\u00ad\u00a0", "  ", "<s>", "</s>", "<unk>", " the", "The ", "said."]


def tokenizer() -> Tokenizer:
    found: Tokenizer = semantic.embedder()._tokenizer
    return found


def whole(text: str) -> list[int]:
    ids: list[int] = tokenizer().encode(text, add_special_tokens=False).ids
    return ids


@pytest.fixture
def pieces() -> wordpieces.WordPieces:
    made = wordpieces.WordPieces.of(tokenizer())
    assert made is not None  # the model's tokenizer is one the reasoning holds for
    return made


def test_random_texts_get_the_tokenizers_ids(pieces: wordpieces.WordPieces) -> None:
    rng = random.Random(15)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        assert pieces.first(text, 10_000) == whole(text), repr(text)


def test_reading_stops_at_count_with_the_first_ids(pieces: wordpieces.WordPieces) -> None:
    text = "Ministers agreed a grain corridor in Istanbul on Tuesday, officials said. " * 40
    assert pieces.first(text, 160) == whole(text)[:160]
    assert len(pieces.first(text, 160)) == 160
    assert pieces.first("Short", 160) == whole("Short")


def test_remembered_words_are_bounded_and_forgetting_changes_nothing(
    pieces: wordpieces.WordPieces, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wordpieces, "WORDS_REMEMBERED", 5)
    text = "one two three four five six seven eight nine ten eleven twelve"
    assert pieces.first(text, 100) == pieces.first(text, 100) == whole(text)
    assert 0 < len(pieces._known) <= 5


def test_a_long_unspaced_text_is_read_but_not_remembered(pieces: wordpieces.WordPieces) -> None:
    """A Chinese lead is one word between spaces: its ids are right, and not kept for a word no
    later text repeats (each such text's ids took some 20 KB)."""
    lead = "国务院总理作政府工作报告提出二〇二五年国内生产总值增长目标为百分之五左右" * 30
    text = f"政府工作报告 {lead} 新华社"
    assert pieces.first(text, 10_000) == whole(text)
    assert "政府工作报告" in pieces._known and "新华社" in pieces._known
    assert lead not in pieces._known
    assert max(map(len, pieces._known)) <= wordpieces.REMEMBERED_WORD_CHARS


def test_a_tokenizer_with_a_space_inside_a_token_is_not_split_into_words() -> None:
    vocab = {"<unk>": 0, "\u2581": 1, "a": 2, "b": 3, "\u2581a": 4, "a\u2581": 5}
    made = Tokenizer(BPE(vocab, [("\u2581", "a"), ("a", "\u2581")], unk_token="<unk>"))
    made.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    assert wordpieces.WordPieces.of(made) is None
    del vocab["a\u2581"]
    safe = Tokenizer(BPE(vocab, [("\u2581", "a")], unk_token="<unk>"))
    safe.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    assert wordpieces.WordPieces.of(safe) is not None
    safe.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" ", "\u2581")])
    assert wordpieces.WordPieces.of(safe) is None  # another normalizer: not checked, not used
