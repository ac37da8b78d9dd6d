"""The embedding model's tokenizer run one word at a time, with each word's ids remembered.

WordLlama's tokenizer is Llama 2's: its normalizer puts "▁" before the text and in place of
every space, it has no pre-tokenizer, and its BPE model then works on the whole text as one
"word". Encoding a headline and lead that way costs far more than the table lookup it feeds,
and it is paid in full for every item, although news repeats the same few thousand words.

A BPE merge joins two adjacent pieces into a token of the vocabulary, so it can only join
across a place where a letter is followed by "▁" if some token holds "▁" after another
character; none does (``WordPieces.of`` checks). The text therefore falls apart, before every
run of "▁", into words that are tokenized independently of each other, and the ids of the
whole are the ids of its words in order: each word's are computed once and remembered, and
reading stops as soon as enough ids are known.

Three things bypass this and use the tokenizer itself: a text holding one of the tokenizer's
added tokens verbatim ("<s>"), which the tokenizer splits out before normalizing, a text holding
"▁" itself (rare, and words could no longer be cut at spaces), and a tokenizer this reasoning
was not checked for (``WordPieces.of`` gives None).
"""

from __future__ import annotations

import json
from typing import Any

SPACE = "\u2581"
WORDS_REMEMBERED = 20_000
"""Distinct words a process keeps the ids of (forgotten all at once when full): news reuses a
vocabulary of this order, and each word costs about 250 bytes of the worker's memory."""

REMEMBERED_WORD_CHARS = 48
"""The longest word whose ids are remembered. A text in a script written without spaces
(Chinese, Japanese, Thai) is one "word" from space to space, up to the whole title and lead:
remembered, each such text kept its 2,000 ids (some 20 KB) for a word no later text repeats,
and ``WORDS_REMEMBERED`` of them would have filled a parse worker's memory limit."""

_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
    ],
}


class WordPieces:
    """``first(text, count)``: the first ``count`` ids ``tokenizer.encode(text)`` would give."""

    def __init__(self, tokenizer: Any, added: tuple[str, ...], vocabulary: int) -> None:
        self._tokenizer = tokenizer
        self._model = tokenizer.model
        # The BPE model's own cache of words would now hold the same words a second time (about
        # 5 MB of a worker's memory); its texts as a whole were never short enough to be kept.
        getattr(self._model, "_resize_cache", lambda _capacity: None)(0)
        self._added = added
        self._known: dict[str, tuple[int, ...]] = {}
        self._ints = list(range(vocabulary))  # one int object per id, shared by every word

    @classmethod
    def of(cls, tokenizer: Any) -> WordPieces | None:
        """Word-by-word tokenizing for ``tokenizer``, or None if it may not give the same ids.

        Read from the loaded objects, not from ``tokenizer.to_str()``: parsing that JSON (the
        merges above all) would raise a parse worker's peak memory by some 20 MB.
        """
        model = tokenizer.model
        normalizer = tokenizer.normalizer
        if not (
            type(model).__name__ == "BPE"
            and normalizer is not None
            and json.loads(normalizer.__getstate__()) == _NORMALIZER
            and tokenizer.pre_tokenizer is None
            and not model.dropout
            and not model.ignore_merges
            and not model.continuing_subword_prefix
            and not model.end_of_word_suffix
        ):
            return None
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if any(SPACE in (tokenizer.id_to_token(i) or "").lstrip(SPACE) for i in range(size)):
            return None
        added = tuple(token.content for token in tokenizer.get_added_tokens_decoder().values())
        return cls(tokenizer, added, size)

    def first(self, text: str, count: int) -> list[int]:
        if not text:
            return []  # the normalizer puts no "▁" before nothing
        if SPACE in text or any(token in text for token in self._added):
            ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids[:count]
            return ids
        # Each word is a part between spaces with the "▁" that stands for the space before it
        # (and the start of the text); the cache is keyed without that one "▁", so that for most
        # words the part itself is the key. Empty parts are runs of spaces, and go with the next.
        known = self._known
        ids = []
        run = ""
        for part in text.split(" "):
            if not part:
                run += SPACE
                continue
            key = run + part if run else part
            run = ""
            pieces = known.get(key)
            if pieces is None:
                pieces = self._learn(key)
            ids += pieces
            if len(ids) >= count:
                return ids[:count]
        if run:  # spaces at the end: a word of "▁" alone, one for each
            ids += known.get(run[1:]) or self._learn(run[1:])
        return ids[:count]

    def remembered(self) -> tuple[int, int]:
        """Words whose ids are kept, and the most that are (``WORDS_REMEMBERED``)."""
        return len(self._known), WORDS_REMEMBERED

    def _learn(self, key: str) -> tuple[int, ...]:
        """The ids of the word ``SPACE + key``, remembered under ``key`` unless it is longer
        than ``REMEMBERED_WORD_CHARS``."""
        ints = self._ints
        pieces = tuple(ints[token.id] for token in self._model.tokenize(SPACE + key))
        if len(key) <= REMEMBERED_WORD_CHARS:
            if len(self._known) >= WORDS_REMEMBERED:
                self._known.clear()
            self._known[key] = pieces
        return pieces
