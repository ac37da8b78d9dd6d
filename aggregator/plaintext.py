"""The plain text of HTML that ``normalize.sanitize_html`` let through: what matching reads of an
item (``html_to_lines`` for its names), and what JSON Feed's plain-text summary shows. Apart
from ``normalize`` so that the publishing process, which renders stored HTML and never
sanitizes, need not load the sanitizer (nh3) to read it.
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
