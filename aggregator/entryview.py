"""What an output entry tells a reader, in every format: the outlet, the coverage, attachments.

The feeds (``publish``), the archive pages and the story pages (``pages``) all show an entry the
same way: the outlet by its configured ``name`` (not the feed's own title, which is often a
tagline), how many outlets carry the story with links to the others (with their headlines where
they differ from the lead's) and to the full coverage,
the lead's attachments with a type and a size for people, and its preview image.
"""

from __future__ import annotations

import html
import mimetypes
import re
from typing import NamedTuple

from aggregator.langtags import language_tag
from aggregator.records import Candidate, Enclosure, OutputEntry


def feed_url(public_url: str, slug: str, fmt: str) -> str:
    return f"{public_url}/feeds/{slug}.{fmt}"


def story_url(public_url: str, story_id: int) -> str:
    """The story's full-coverage page: every outlet's item of it."""
    return f"{public_url}/stories/{story_id}"


def entry_html(entry: OutputEntry, public_url: str) -> str:
    """An entry's text in the feeds: the lead's own, then which outlet it is from and who else
    reported the story (``also_reported``). A feed reader names an entry by its author, which is
    the byline when there is one ("Michael Levenson"), and few show ``atom:source``, so the
    outlet is said here."""
    body = entry.lead.content_html or entry.lead.summary_html
    coverage = f"From {html.escape(source_name(entry.lead))} · {html.escape(outlets_text(entry))}"
    shown, more = also_reported(entry)
    if not shown:
        return body + f"<p>{coverage}</p>"
    rows = "".join(
        f"<li>{_linked(html.escape(source_name(also.item)), also.item.link)}"
        + (f": {html.escape(also.headline)}" if also.headline else "")
        + "</li>"
        for also in shown
    )
    if more:
        rows += f"<li>and {more} more</li>"
    full = html.escape(story_url(public_url, entry.lead.story_id), quote=True)
    return body + f'<p>{coverage}. Also reported by:</p><ul>{rows}</ul><p><a href="{full}">Full coverage</a></p>'


def _linked(text: str, link: str | None) -> str:
    return f'<a href="{html.escape(link, quote=True)}">{text}</a>' if link else text


ALSO_SHOWN = 8
"""Items an entry names at most besides its lead (``also_reported``), those with a headline of
their own first; the story's page lists them all."""


class Also(NamedTuple):
    """Another item of an entry's story, as the entry names it: by its outlet, with its headline
    where that says something new."""

    item: Candidate
    headline: str | None
    """Its headline, where it says something the lead's, and those named before it, do not."""


def also_reported(entry: OutputEntry) -> tuple[list[Also], int]:
    """What an entry names besides its lead, at most ``ALSO_SHOWN``: each other outlet
    (``other_outlets``), with its headline where that differs from the lead's and from those
    before it; then any other item whose headline says something none of those does, whatever
    its outlet, the lead's included; those with a headline of their own first when there are
    more, each in member order. And how many more outlets there are.

    An independent report's headline tells a reader what it adds, and where matching put two
    developments of one event in one story (both semi-finals of a day), the second one's
    headline is there to be read and followed rather than hidden behind an outlet's name, or
    behind the lead's when its outlet reported both. A copy under a headline already named
    adds nothing to say. Headlines are compared by their words, whatever the case and
    punctuation."""
    others = other_outlets(entry)
    named = {id(other) for other in others}
    seen = {_headline_words(entry.lead.title)}
    shown = []
    for other in others:
        words = _headline_words(other.title)
        shown.append(Also(other, other.title if words and words not in seen else None))
        seen.add(words)
    for item in entry.also:
        if id(item) not in named and (words := _headline_words(item.title)) and words not in seen:
            shown.append(Also(item, item.title))
            seen.add(words)
    order = {id(item): n for n, item in enumerate(entry.also)}
    kept = sorted(sorted(shown, key=lambda also: also.headline is None)[:ALSO_SHOWN], key=lambda a: order[id(a.item)])
    return kept, len(others) - sum(id(also.item) in named for also in kept)


_WORD = re.compile(r"\w+")


def _headline_words(title: str) -> str:
    return " ".join(_WORD.findall(title.casefold()))


def source_name(candidate: Candidate) -> str:
    """The outlet as the operator named it in feeds.yaml: the feed's own title is often a
    tagline ("UK homepage") or shared by mirrors, so it names nothing a reader recognises."""
    return candidate.source_name


def other_outlets(entry: OutputEntry) -> list[Candidate]:
    """One item per outlet besides the lead's (preferring one with a link), in member order."""
    chosen: dict[str, Candidate] = {}
    for other in entry.also:
        if other.source_name == entry.lead.source_name:
            continue
        if other.source_name not in chosen or (other.link and not chosen[other.source_name].link):
            chosen[other.source_name] = other
    return list(chosen.values())


def outlets_text(entry: OutputEntry) -> str:
    count = entry.outlets
    return f"Reported by {count} outlet{'' if count == 1 else 's'}"


def item_language(candidate: Candidate, output_language: str | None) -> str | None:
    """The language tag for an item's own text on a page whose chrome is English: the one its
    feed declared, else the output's (curation admits an item of no declared language into an
    output of one language as that language), else None, and it is read as the page is.
    Feeds write "en_US" and "English" too: the first is mended, the second is no tag and is
    skipped, since an invalid ``lang`` makes a screen reader guess worse than none."""
    return language_tag(candidate.language, output_language)


# Every tag, its quoted attribute values taken whole: a "<h1>" inside an attribute belongs to
# that tag and is not rewritten. Text cannot hold one: nh3 (html5ever) escapes "<" in text.
_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9]*)((?:[^>"']|"[^"]*"|'[^']*')*)>""")
_HEADING = re.compile(r"h[1-6]", re.IGNORECASE)
FIRST_SUMMARY_HEADING = 3
"""A summary's top heading level on a page: below the page's h1 and its article's h2."""


def demoted_headings(fragment: str) -> str:
    """Sanitized HTML with its headings moved below an article's h2 (h1 and h2 become h3, h3
    becomes h4, and on, h6 at most), keeping their order. A feed's ``<h1>`` in a summary was
    a second h1 on the page, inside an article headed by an h2: screen readers' outlines and
    axe's heading-order went wrong. Only pages do this: the stored HTML and the feeds keep
    the outlet's headings, which a feed reader shows under its own."""
    if "<h" not in fragment and "<H" not in fragment:
        return fragment

    def demote(tag: re.Match[str]) -> str:
        name = tag.group(2)
        if not _HEADING.fullmatch(name):
            return tag.group(0)
        level = min(max(int(name[1]) + 1, FIRST_SUMMARY_HEADING), 6)
        return f"<{tag.group(1)}h{level}{tag.group(3)}>"

    return _TAG.sub(demote, fragment)


def page_summary(candidate: Candidate) -> str:
    """An item's summary (else its content) as a page shows it: ``demoted_headings``, then
    ``images_with_alt``, then ``scrollers_focusable``."""
    return scrollers_focusable(images_with_alt(demoted_headings(candidate.summary_html or candidate.content_html)))


_SCROLLERS = frozenset({"pre", "table"})
"""What a page lets scroll sideways within a summary (its style sheet's ``overflow-x: auto``)."""
SCROLLER_CLASS = "scroller"
"""The class of the region a summary's table scrolls in on a page (``scrollers_focusable``)."""


def scrollers_focusable(fragment: str) -> str:
    """Sanitized HTML whose long lines and wide tables can be scrolled from the keyboard. A page
    lets a ``<pre>`` or a table scroll within the column rather than the whole page sideways on
    a phone; a region that scrolls but cannot take the focus cannot be scrolled without a mouse
    (axe: scrollable-region-focusable; browsers that do not focus scrollers themselves, Safari
    among them). So a ``<pre>`` is in the tab order (``tabindex="0"``), and a table sits in a
    named region that is and that scrolls: a table made a block to scroll itself is no longer a
    table to some screen readers. Whether one is wider than the screen is known only where it is
    laid out, so every one is. Only pages do this, like ``demoted_headings``; the sanitizer keeps
    no ``tabindex`` or ``role`` of the feed's own, and its output closes every table it opens."""
    if not any(f"<{name}" in fragment or f"<{name.upper()}" in fragment for name in _SCROLLERS):
        return fragment

    def focusable(tag: re.Match[str]) -> str:
        closing, name, attributes = tag.groups()
        if name.lower() == "pre" and not closing:
            return f'<{name} tabindex="0"{attributes}>'
        if name.lower() != "table":
            return tag.group(0)
        if closing:
            return f"{tag.group(0)}</div>"
        return f'<div class="{SCROLLER_CLASS}" role="region" aria-label="Table" tabindex="0">{tag.group(0)}'

    return _TAG.sub(focusable, fragment)


_ALT = re.compile(r"""\salt\s*=""", re.IGNORECASE)


def images_with_alt(fragment: str) -> str:
    """Sanitized HTML whose images without an ``alt`` get an empty one. A screen reader reads
    an image with none by its file name ("IMG_20261124_0912.jpg"); an empty one says it adds
    nothing to the text beside it, which is what a feed rarely tells otherwise. An image the
    feed described keeps its description. Only pages do this, like ``demoted_headings``."""
    if "<img" not in fragment and "<IMG" not in fragment:
        return fragment

    def described(tag: re.Match[str]) -> str:
        if tag.group(1) or tag.group(2).lower() != "img" or _ALT.search(_quoted_values_blanked(tag.group(3))):
            return tag.group(0)
        attributes = tag.group(3)
        closing = "/" if attributes.rstrip().endswith("/") else ""
        attributes = attributes.rstrip().removesuffix("/") if closing else attributes
        return f'<{tag.group(2)}{attributes} alt=""{closing}>'

    return _TAG.sub(described, fragment)


def _quoted_values_blanked(attributes: str) -> str:
    """Attributes with their quoted values emptied: an ``alt=`` inside a title is no alt."""
    return re.sub(r""""[^"]*"|'[^']*'""", '""', attributes)


def media_type(enclosure: Enclosure) -> str:
    """RSS and JSON Feed require a type: the given one, else a guess from the file name."""
    return enclosure.type or mimetypes.guess_type(enclosure.url)[0] or "application/octet-stream"


def preview(candidate: Candidate) -> str | None:
    """The image to show with an entry: the source's thumbnail, else an image attachment."""
    if candidate.thumbnail:
        return candidate.thumbnail
    return next((e.url for e in candidate.enclosures if (e.type or "").startswith("image/")), None)


def kind(enclosure: Enclosure) -> str:
    """What a link to an attachment is called on the page: "Audio", "Video", "Image" or "Attachment"."""
    major = media_type(enclosure).split("/")[0]
    return {"audio": "Audio", "video": "Video", "image": "Image"}.get(major, "Attachment")


def size(enclosure: Enclosure) -> str:
    """An attachment's kind and size for people: "audio/mpeg, 100.1 MB"."""
    mime = media_type(enclosure)
    if not enclosure.length:
        return mime
    amount, unit = float(enclosure.length), "bytes"
    for bigger in ("kB", "MB", "GB"):
        if amount < 1000:
            break
        amount, unit = amount / 1000, bigger
    return f"{mime}, {amount:.0f} {unit}" if unit == "bytes" else f"{mime}, {amount:.1f} {unit}"
