"""The name extractor's shortcuts find what its plain rules find."""

from __future__ import annotations

import random
import re

from aggregator import names

PIECES = [*"aZé日 ,.-–!?\"()%3\n\t’'", " per cent", " million", "  ", ", ", " - ", "U.S.", "e.g. ", "Mr. "]


def test_skipping_spaces_and_commas_finds_the_same_tokens() -> None:
    plain = re.compile(names.TOKENS)
    rng = random.Random(15)
    for _ in range(5000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        assert names._TOKEN.findall(text) == plain.findall(text), repr(text)
