"""Language tags as feeds write them: a BCP 47 tag ("fr-FR") as often as a POSIX locale
("fr_FR"), in any case, now and then a word ("English"). Curation compares them, story matching
asks which language an item is in, and the pages mark text with them: one reading for all three."""

from __future__ import annotations

import re

_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")


def primary_language(tag: str) -> str:
    """The tag's language alone, whatever region or script follows it: "fr" for "fr_FR"."""
    return tag.strip().lower().replace("_", "-").split("-")[0]


def language_tag(*declared: str | None) -> str | None:
    """The first of ``declared`` that is a language tag, mended ("en_US" is "en-US"), or None:
    an invalid ``lang`` makes a screen reader guess worse than none."""
    for value in declared:
        tag = (value or "").strip().replace("_", "-")
        if _TAG.fullmatch(tag):
            return tag
    return None
