"""The reader's way in: the front door (``/``), the outputs as OPML, and a story's full coverage.

These pages are rendered on request from the configuration and the database (they are
small, and a story page must show an outlet's item as soon as it is stored), escaped by
Jinja2 — headlines and names come from outside — and served with the output pages'
script-forbidding Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import jinja2

from aggregator.archive import Page, archive_page_url, archive_url
from aggregator.config import Config, Output
from aggregator.curate import lead_of
from aggregator.entryview import feed_url
from aggregator.errors import PublishError
from aggregator.langtags import language_tag
from aggregator.publish import TEMPLATES
from aggregator.store.repository import ArchivePage, StoryCoverage

FRONT_DOOR_ARCHIVES = 6  # newest archive weeks listed per output; the feed page lists them all


@dataclass(frozen=True)
class OutputLinks:
    """Everything the front door says about one output."""

    output: Output
    page: str
    formats: tuple[tuple[str, str], ...]  # (label, URL)
    archives: tuple[tuple[str, str, str], ...]  # (week and its days, HTML page, Atom document), newest first
    archive_count: int


def output_links(public_url: str, output: Output, archives: Sequence[ArchivePage]) -> OutputLinks:
    newest = list(reversed(archives))[:FRONT_DOOR_ARCHIVES]
    return OutputLinks(
        output=output,
        page=f"{public_url}/feeds/{output.slug}",
        formats=tuple(
            (label, feed_url(public_url, output.slug, fmt))
            for label, fmt in (("Atom", "atom"), ("RSS", "rss"), ("JSON Feed", "json"))
        ),
        archives=tuple(
            (
                Page.of(p.week).dated_title,
                archive_page_url(public_url, output.slug, p.week),
                archive_url(public_url, output.slug, p.week),
            )
            for p in newest
        ),
        archive_count=len(archives),
    )


def render_front_door(config: Config, archives: Mapping[str, Sequence[ArchivePage]]) -> bytes:
    """``/``: every output with its description, formats, HTML page and archives."""
    public = config.settings.public_url
    outputs = [output_links(public, o, archives.get(o.slug, ())) for o in config.outputs]
    return _render(
        "index.html",
        outputs=outputs,
        opml_url=f"{public}/opml",
        status_url=f"{public}/status" if config.settings.status_page else None,
    )


def render_story(coverage: StoryCoverage, public_url: str) -> bytes:
    """``/stories/<id>``: every outlet's item of one story, newest development first, under the
    headline of the item that leads the story's entry in an output carrying all of them, as the
    World feed does (``curate.lead_of``)."""
    first = lead_of(coverage.items)
    outlets = len({item.source_name for item in coverage.items})
    return _render(
        "story.html",
        story=coverage,
        headline=first.title if first else "",
        headline_language=language_tag(first.language) if first else None,
        outlets=outlets,
        home_url=f"{public_url}/",
        language=lambda item: language_tag(item.language),
    )


def outputs_opml(config: Config) -> bytes:
    """The outputs as an OPML 2.0 subscription list, for a reader to import in one go."""
    public = config.settings.public_url
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<opml version="2.0">',
        f"  <head><title>{_text(config.settings.public_url)} feeds</title></head>",
        "  <body>",
    ]
    for output in config.outputs:
        attributes = (
            f"type={quoteattr('rss')} text={quoteattr(output.title)} title={quoteattr(output.title)} "
            f"xmlUrl={quoteattr(feed_url(public, output.slug, 'atom'))} "
            f"htmlUrl={quoteattr(f'{public}/feeds/{output.slug}')}"
        )
        if output.subtitle:
            attributes += f" description={quoteattr(output.subtitle)}"
        lines.append(f"    <outline {attributes}/>")
    lines += ["  </body>", "</opml>", ""]
    return "\n".join(lines).encode("utf-8")


def _render(template: str, **context: object) -> bytes:
    try:
        return TEMPLATES.get_template(template).render(**context).encode("utf-8")
    except jinja2.TemplateError as exc:
        raise PublishError(f"{template}: cannot render: {exc}") from exc


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
