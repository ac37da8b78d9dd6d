"""The plain text of HTML that ``normalize.sanitize_html`` let through: what matching reads of an
item (``html_to_lines`` for its names), and what JSON Feed's plain-text summary shows. Apart
from ``normalize`` so that the publishing process, which renders stored HTML and never
sanitizes, need not load the sanitizer (nh3) to read it. And the Latin letters that text
compared without accents is written with (``WRITTEN_PLAIN``).
"""

from __future__ import annotations

import html
import re

# nh3's output is well-formed: attribute values double-quoted, "<" in text escaped, no comments.
# So a tag is exactly "<", then anything but ">" or a quoted string, then ">".
_SANITIZED_TAG = re.compile(r'<(?:[^>"]|"[^"]*")*>')
_BLOCK_TAG = re.compile(
    r'</?(?:p|div|br|li|h[1-6]|tr|td|th|blockquote|pre|figure|figcaption|dd|dt|hr|table|ul|ol)\b(?:[^>"]|"[^"]*")*>'
)


# C0 controls but tab and line ends, DEL, C1 controls (U+009B is a terminal's CSI too), and lone
# surrogates: a header byte that is not UTF-8 comes from aiohttp as one, and no database stores it.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


# Characters XML 1.0 cannot carry (C0 controls, lone surrogates, U+FFFE/U+FFFF). feedparser's
# fallback parser and JSON Feed let them through; lxml (under feedgen) refuses to write them, and
# nh3 cannot even be called with a lone surrogate. One bad character must not break an output.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` without the characters XML cannot carry (``NOT_XML``)."""
    return NOT_XML.sub("", text) if NOT_XML.search(text) else text


def visible(text: str) -> str:
    r"""``text`` with its control characters written out (``\x1b``): a server's reason phrase or
    redirect target, shown in a log line or in ``aggregator sources``, must not be able to
    clear, retitle or recolour the operator's terminal."""
    return _CONTROL.sub(_written_out, text) if _CONTROL.search(text) else text


def _written_out(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def collapse(text: str) -> str:
    r"""Whitespace runs to one space, ends stripped: what ``re.sub(r"\s+", " ", text).strip()``
    gives (both use Python's own whitespace test), at a fraction of the cost; it runs several
    times per item."""
    return " ".join(text.split())


def html_to_text(sanitized: str) -> str:
    """Plain text of HTML that came out of ``sanitize_html``: a fast path for every item."""
    if "<" not in sanitized and "&" not in sanitized:
        return collapse(sanitized)
    text = _SANITIZED_TAG.sub("", _BLOCK_TAG.sub(" ", sanitized))
    return collapse(html.unescape(text))


def html_to_lines(sanitized: str) -> str:
    """``html_to_text`` with each block (paragraph, list item, heading, line break) on a line of
    its own: the same words, a newline where ``html_to_text`` has the space between blocks.
    A block ends a sentence whether or not the feed ended it with a full stop: a standfirst
    run into the article ("… torture and looting</p><p>The tanks rolled in …") would otherwise
    make "The" a capitalised word inside a sentence, a name (``names.extract``). Line breaks of
    the HTML's source are not blocks: they wrap lines, mid-sentence."""
    if "<" not in sanitized:
        return html_to_text(sanitized)
    blocks = (collapse(html.unescape(_SANITIZED_TAG.sub("", block))) for block in _BLOCK_TAG.split(sanitized))
    return "\n".join(block for block in blocks if block)


UNMARKED_LATIN_LETTERS = {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe", "ı": "i"}
"""Latin letters with no Unicode decomposition into a base letter and a mark, and the letters
outlets that drop marks write for them ("Støre" as "Store", "Wałęsa" as "Walesa", Turkish
"Diyarbakır" as "Diyarbakir"): story matching's names (``names.unaccented``) and curation's
keywords (``curate.folded``) drop them alike."""

UNPRINTED_MARKS = {"ё": "е"}
"""Letters whose mark the language's own print mostly leaves out, and the letter printed for
them: Russian news writes "Королев" for "Королёв" and "еще" for "ещё", and a second outlet
writes them with the mark. Story matching's names and curation's keywords write them alike
(``names.unaccented``, ``curate.folded``). Other Cyrillic marks stay: "й" is no "и"."""

WRITTEN_PLAIN = {**UNMARKED_LATIN_LETTERS, **UNPRINTED_MARKS}
"""Both tables above in one: what story matching's names and curation's keywords translate
before dropping the marks that decompose (``names.unaccented``, ``curate.folded``), so that a
name and a keyword are folded alike."""
