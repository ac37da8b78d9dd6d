"""Rendering outputs to bytes with a validator, and writing them atomically.

An output is rendered from its ``OutputEntry``s only — no clock, no randomness — so the
same stories give the same bytes and the same ETag: feed readers' conditional GETs
keep answering 304 until something really changed. Atom and RSS come from feedgen;
feedgen cannot write ``atom:source`` with an id and ``updated`` (the validator wants
both), so we add those to its tree. JSON Feed 1.1 is plain ``json``.

What every entry tells a reader (the outlet, the coverage, attachments, a preview image) is
``entryview``'s, the same in every format. Attachments: Atom ``link rel="enclosure"``, RSS
``enclosure`` (one per item, RSS allows no more), JSON Feed ``attachments``. An undated item gets
no ``published`` date: its ``updated`` is when it was first seen, and the HTML page says so.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from feedgen.feed import FeedGenerator
from lxml import etree

from aggregator import __version__
from aggregator.archive import Page, archive_page_url, archive_url
from aggregator.config import Output
from aggregator.entryview import (
    also_reported,
    entry_html,
    feed_url,
    item_language,
    kind,
    media_type,
    outlets_text,
    page_summary,
    preview,
    size,
    source_name,
    story_url,
)
from aggregator.errors import PublishError
from aggregator.plaintext import html_to_text
from aggregator.records import Candidate, Enclosure, OutputEntry, etag_of, etag_of_digest

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_TYPE = "application/atom+xml"
MEDIA_NS = "http://search.yahoo.com/mrss/"  # Media RSS: media:thumbnail
DC_NS = "http://purl.org/dc/elements/1.1/"
HISTORY_NS = "http://purl.org/syndication/history/1.0"  # RFC 5005
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GENERATOR_URI = "https://pypi.org/project/aggregator/"


@dataclass(frozen=True)
class Rendering:
    slug: str
    format: str  # atom | rss | json
    media_type: str
    body: bytes

    @property
    def etag(self) -> str:
        return etag_of(self.body)

    @property
    def filename(self) -> str:
        return f"{self.slug}.{self.format}"


FORMATS = {
    "atom": "application/atom+xml; charset=utf-8",
    "rss": "application/rss+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
# The HTML templates of every page we render (feed pages, archives, the front door, stories).
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("aggregator", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def html_datetime(moment: datetime) -> str:
    """A time as a ``<time datetime>`` says it: in whole seconds. HTML allows at most three
    fractional digits, and a time first seen by our clock has six (``isoformat``'s)."""
    return moment.replace(microsecond=0).isoformat()


TEMPLATES.filters["html_datetime"] = html_datetime


def render_all(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    hub: str | None = None,
    *,
    archives: Sequence[str] = (),
    updated_if_empty: datetime | None = None,
) -> list[Rendering]:
    """Every format of the subscription feed; ``archives`` are its frozen archive weeks with
    entries, oldest first (RFC 5005: the feed links the newest, which links the one before).
    ``updated_if_empty``: the feed's time when it has no entry to take one from (the newest
    entry's otherwise): when it last changed (``empty_feed_updated``), not 1970."""
    history: tuple[tuple[str, str], ...] = ()
    if archives:
        history = (("prev-archive", archive_url(public_url, output.slug, archives[-1])),)
    atom = joined(atom_pieces(output, entries, public_url, hub, links=history, updated_if_empty=updated_if_empty))
    page = joined(html_pieces(output, entries, public_url, archives=archives))
    return [
        Rendering(output.slug, "atom", FORMATS["atom"], atom),
        Rendering(
            output.slug,
            "rss",
            FORMATS["rss"],
            render_rss(output, entries, public_url, hub, links=history, updated_if_empty=updated_if_empty),
        ),
        Rendering(output.slug, "json", FORMATS["json"], render_json(output, entries, public_url, hub)),
        Rendering(output.slug, "html", FORMATS["html"], page),
    ]


def empty_feed_updated(previous: bytes | None, now: datetime) -> datetime:
    """The ``updated`` of an output with no entries, from its stored Atom rendering
    (``previous``): that one's, if it had no entries either, so the bytes stay the same from
    one publish to the next and readers' conditional requests keep getting 304; ``now`` (whole
    seconds, as Last-Modified has them) when there is none or it had entries (the output just
    emptied: that is a change, and the time must not fall back to an entry's). Never 1970,
    which an empty output once said and readers showed as its date: a rendering that says so
    is taken for none."""
    if previous and _FIRST_ENTRY not in previous:
        try:
            found = etree.fromstring(previous).findtext(f"{{{ATOM_NS}}}updated")
            if found and (said := datetime.fromisoformat(found)) > EPOCH:
                return said
        except (ValueError, etree.LxmlError):
            pass  # not a rendering of ours: take it for none
    return now.replace(microsecond=0)


Filler = Callable[[Sequence[OutputEntry]], list[OutputEntry]]
"""Entries with their leads' HTML (summary and content), from entries without it. An archive
week holds up to 5,000 entries: their HTML, read all at once, was the largest part of what a
week's freezing held beside the documents it renders. Read a piece at a time as each piece is
rendered, only one piece's is held."""


def _filled(entries: Sequence[OutputEntry], fill: Filler | None, piece: int) -> Iterator[OutputEntry]:
    """``entries`` one by one, given their HTML (``fill``) ``piece`` at a time."""
    if fill is None:
        yield from entries
        return
    for start in range(0, len(entries), piece):
        yield from fill(entries[start : start + piece])


def archive_pieces(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    week: Page,
    previous: str | None,
    fill: Filler | None = None,
) -> tuple[Iterator[bytes | memoryview], Iterator[bytes]]:
    """One archive page (a week, or a part of a busy one) as an RFC 5005 archive document and
    as an HTML page, each in pieces rendered as they are asked for (``atom_pieces``,
    ``html_pieces``). ``previous`` is the page before it that has entries; no
    ``next-archive``: the document never changes. ``fill``:
    gives the entries their leads' HTML a piece at a time, when they came without it
    (``Filler``)."""
    links = [("current", feed_url(public_url, output.slug, "atom"))]
    if previous is not None:
        links.append(("prev-archive", archive_url(public_url, output.slug, previous)))
    atom = atom_pieces(output, entries, public_url, links=tuple(links), archive_of=week, fill=fill)
    page = html_pieces(output, entries, public_url, week=week.dated_title, previous=previous, fill=fill)
    return atom, page


def joined(pieces: Iterable[bytes | memoryview]) -> bytes:
    """A document's pieces (``atom_pieces``, ``html_pieces``) as its bytes, in a buffer that
    grows in place (a list of pieces joined at the end held the document twice)."""
    whole = io.BytesIO()
    for piece in pieces:
        whole.write(piece)
    return whole.getvalue()


def html_pieces(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    *,
    archives: Sequence[str] = (),
    week: str | None = None,
    previous: str | None = None,
    fill: Filler | None = None,
) -> Iterator[bytes]:
    """The output as a page people can read on a phone, linking its feeds for auto-discovery
    and its archive pages for older entries (``week``: this page is that archived week, as
    ``Page.dated_title`` names it),
    UTF-8 encoded a piece at a time as it is generated; ``fill`` as in ``archive_pieces``."""
    try:
        chunks = TEMPLATES.get_template("output.html").generate(
            output=output,
            entries=_filled(entries, fill, ATOM_PIECE),
            atom_url=feed_url(public_url, output.slug, "atom"),
            rss_url=feed_url(public_url, output.slug, "rss"),
            json_url=feed_url(public_url, output.slug, "json"),
            page_url=f"{public_url}/feeds/{output.slug}",
            home_url=f"{public_url}/",
            archives=[
                (Page.of(label).dated_title, archive_page_url(public_url, output.slug, label))
                for label in reversed(archives)
            ],
            week=week,
            previous_url=archive_page_url(public_url, output.slug, previous) if previous else None,
            story_url=lambda entry: story_url(public_url, entry.lead.story_id),
            language=lambda candidate: item_language(candidate, output.language),
            summary=page_summary,
            source_name=source_name,
            also_reported=also_reported,
            outlets_text=outlets_text,
            preview=preview,
            size=size,
            kind=kind,
        )
        yield from _encoded(chunks)
    except jinja2.TemplateError as exc:
        raise PublishError(f"{output.slug}.html: cannot render: {exc}") from exc


HTML_CHUNKS = 4096
"""Pieces of a page's text encoded at a time. An archive week's page is several MB: rendered
whole, its text (two or four bytes a character once one is not Latin-1) and the list of
pieces it was joined from were held beside the encoded bytes; encoded as it is generated,
only the bytes grow. UTF-8 of the pieces, concatenated, is UTF-8 of the whole: same bytes."""


def _encoded(chunks: Iterator[str]) -> Iterator[bytes]:
    batch: list[str] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) >= HTML_CHUNKS:
            yield "".join(batch).encode("utf-8")
            batch.clear()
    yield "".join(batch).encode("utf-8")


def _generator(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    fmt: str,
    hub: str | None = None,
    updated: datetime | None = None,
) -> FeedGenerator:
    fg = FeedGenerator()
    self_url = feed_url(public_url, output.slug, fmt)
    fg.id(feed_url(public_url, output.slug, "atom"))
    fg.title(output.title)
    fg.subtitle(output.subtitle or f"{output.title}, aggregated by aggregator")
    fg.description(output.subtitle or f"{output.title}, aggregated by aggregator")
    fg.author({"name": output.title})
    fg.link(href=self_url, rel="self", type=FORMATS[fmt].split(";")[0])
    if hub and fmt == "atom":
        fg.link(href=hub, rel="hub")
    # Last: feedgen makes the last link the RSS channel's <link>, which must be the web page.
    fg.link(href=f"{public_url}/feeds/{output.slug}", rel="alternate", type="text/html")
    fg.generator("aggregator", __version__, GENERATOR_URI)
    if output.icon:
        fg.icon(output.icon)
        fg.logo(output.icon)
    if output.language:
        fg.language(output.language)
    updated = updated or max((e.updated_at for e in entries), default=EPOCH)
    fg.updated(updated)
    fg.lastBuildDate(updated)
    for entry in entries:
        _add_entry(fg, entry, fmt, public_url)
    return fg


def _add_entry(fg: FeedGenerator, entry: OutputEntry, fmt: str, public_url: str) -> None:
    lead = entry.lead
    fe = fg.add_entry(order="append")
    fe.id(entry.story_uid)
    fe.guid(entry.story_uid, permalink=False)
    fe.title(lead.title)
    if lead.link:
        # For Atom, entry links are rewritten in _atom_entry (feedgen 1.0 drops rel/type).
        fe.link(href=lead.link, rel="alternate", type="text/html")
    if lead.dated:  # an undated item's sort time is no publication date: say none
        fe.published(lead.published_at)
    fe.updated(entry.updated_at)
    fe.author({"name": lead.author or source_name(lead)})
    # An Atom entry needs content or an alternate link; the title stands in for neither-nor.
    body = entry_html(entry, public_url) or ("" if lead.link else f"<p>{html.escape(lead.title)}</p>")
    if body:
        fe.content(body, type="CDATA" if fmt == "rss" else "html")
    if lead.summary_html and lead.content_html:
        fe.summary(lead.summary_html, type="html")
    for category in lead.categories:
        fe.category(term=category)
    if fmt == "rss":
        fe.source(url=lead.source_url, title=source_name(lead))
        if lead.enclosures:
            first = lead.enclosures[0]
            fe.enclosure(first.url, str(first.length or 0), media_type(first))


ATOM_PIECE = 250
"""Entries rendered at a time in a long Atom document (an archive week holds up to 5,000):
feedgen and lxml hold several times a document's size while building it, twice over (feedgen's
tree, then ours parsed from its text), so a long document is rendered in pieces of this many
entries and spliced; only one piece's trees are alive at a time. The bytes are the same."""
_FIRST_ENTRY = b"\n  <entry>"  # etree.indent puts every entry on a line of its own, 2 spaces in
_FEED_END = b"\n</feed>"


def atom_pieces(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    hub: str | None = None,
    *,
    links: tuple[tuple[str, str], ...] = (),
    archive_of: Page | None = None,
    updated_if_empty: datetime | None = None,
    fill: Filler | None = None,
) -> Iterator[bytes | memoryview]:
    """Atom 1.0; ``links`` adds (rel, href) feed links, ``archive_of`` makes it an RFC 5005
    archive document for that week (own self URL and id, ``fh:archive`` marker);
    ``updated_if_empty`` as in ``render_all``. In pieces, in order (``joined`` gives the
    bytes), each ``ATOM_PIECE`` entries rendered alone and spliced (``fill`` as in
    ``archive_pieces``): written as they come, the document is never held whole. Each
    piece is good until the next is asked for."""
    if len(entries) <= ATOM_PIECE:
        whole = list(_filled(entries, fill, ATOM_PIECE))
        yield _render_atom(output, whole, public_url, hub, links, archive_of, None if entries else updated_if_empty)
        return
    updated = max(e.updated_at for e in entries)
    end = b""
    for start in range(0, len(entries), ATOM_PIECE):
        piece = list(_filled(entries[start : start + ATOM_PIECE], fill, ATOM_PIECE))
        document = _render_atom(output, piece, public_url, hub, links, archive_of, updated)
        first, last = document.index(_FIRST_ENTRY), document.rindex(_FEED_END)
        yield memoryview(document)[0 if start == 0 else first : last]
        end = document[last:]
    yield end


def _render_atom(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    hub: str | None,
    links: tuple[tuple[str, str], ...],
    archive_of: Page | None,
    updated: datetime | None = None,
) -> bytes:
    try:
        raw = _generator(output, entries, public_url, "atom", hub, updated).atom_str(pretty=True)
        root = etree.fromstring(raw, etree.XMLParser(remove_blank_text=True))
        del raw
        if archive_of is not None:
            url = archive_url(public_url, output.slug, archive_of)
            root.find(f"{{{ATOM_NS}}}id").text = url
            for link in root.findall(f"{{{ATOM_NS}}}link"):
                if link.get("rel") == "self":
                    link.set("href", url)
            root.insert(0, etree.Element(f"{{{HISTORY_NS}}}archive", nsmap={"fh": HISTORY_NS}))
        anchor = next((i for i, child in enumerate(root) if child.tag == f"{{{ATOM_NS}}}link"), len(root))
        for offset, (rel, href) in enumerate(links):  # the current feed and archives: all Atom
            root.insert(anchor + offset, etree.Element(f"{{{ATOM_NS}}}link", rel=rel, href=href, type=ATOM_TYPE))
        for element, entry in zip(root.findall(f"{{{ATOM_NS}}}entry"), entries, strict=True):
            _atom_links(element, entry)
            _atom_source(element, entry.lead)
            _thumbnail(element, entry.lead)
        etree.indent(root, space="  ")
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
    except (ValueError, TypeError, AttributeError, etree.LxmlError) as exc:
        raise PublishError(f"{output.slug}.atom: cannot render: {exc}") from exc


def _atom_links(element: etree._Element, entry: OutputEntry) -> None:
    """The lead's page as the alternate link; the other outlets' versions as rel="related".

    feedgen 1.0 writes entry links without their rel, type and title attributes (its
    loop variable shadows the link dict), so we write them ourselves.
    """
    for link in element.findall(f"{{{ATOM_NS}}}link"):
        element.remove(link)
    anchor = element.find(f"{{{ATOM_NS}}}content")
    position = list(element).index(anchor) + 1 if anchor is not None else len(element)
    links = []
    if entry.lead.link:
        links.append({"rel": "alternate", "type": "text/html", "href": entry.lead.link})
    seen = {entry.lead.link}
    for other in entry.also:
        if other.link and other.link not in seen:
            seen.add(other.link)
            links.append({"rel": "related", "type": "text/html", "href": other.link, "title": source_name(other)})
    for enclosure in entry.lead.enclosures:
        attributes = {"rel": "enclosure", "href": enclosure.url, "type": media_type(enclosure)}
        if enclosure.length:
            attributes["length"] = str(enclosure.length)
        if (enclosure.url, "enclosure") not in {(a["href"], a["rel"]) for a in links}:
            links.append(attributes)
    for offset, attributes in enumerate(links):
        link = etree.Element(f"{{{ATOM_NS}}}link", attrib=attributes)
        link.tail = element[0].tail if len(element) else None
        element.insert(position + offset, link)


def _atom_source(element: etree._Element, lead: Candidate) -> None:
    """``atom:source`` names the original feed (RFC 4287 §4.2.11): id, title, updated, self link."""
    source = etree.SubElement(element, f"{{{ATOM_NS}}}source")
    etree.SubElement(source, f"{{{ATOM_NS}}}id").text = lead.source_feed_id or lead.source_url
    etree.SubElement(source, f"{{{ATOM_NS}}}title").text = source_name(lead)
    etree.SubElement(source, f"{{{ATOM_NS}}}updated").text = lead.updated_at.isoformat()
    if lead.source_link:
        etree.SubElement(source, f"{{{ATOM_NS}}}link", rel="alternate", href=lead.source_link)
    etree.SubElement(source, f"{{{ATOM_NS}}}link", rel="self", href=lead.source_url)


def _thumbnail(element: etree._Element, lead: Candidate) -> None:
    if lead.thumbnail:
        etree.SubElement(element, f"{{{MEDIA_NS}}}thumbnail", url=lead.thumbnail, nsmap={"media": MEDIA_NS})


def render_rss(
    output: Output,
    entries: list[OutputEntry],
    public_url: str,
    hub: str | None = None,
    *,
    links: Sequence[tuple[str, str]] = (),
    updated_if_empty: datetime | None = None,
) -> bytes:
    """RSS 2.0. ``author`` needs an e-mail address, so the author (else the outlet) goes in
    ``dc:creator``, as most feeds do; the outlet itself is the item's ``source``.
    ``links`` (rel, href) lead to Atom archive documents: RFC 5005's relations go in RSS as
    ``atom:link``, so an RSS subscriber away longer than the feed's window finds the archive
    as an Atom one does. ``updated_if_empty`` as in ``render_all``."""
    try:
        updated = None if entries else updated_if_empty
        raw = bytes(_generator(output, entries, public_url, "rss", updated=updated).rss_str(pretty=True))
        parsed = etree.fromstring(raw, etree.XMLParser(remove_blank_text=True))
        nsmap = {**parsed.nsmap, "dc": DC_NS}
        if any(entry.lead.thumbnail for entry in entries):
            nsmap["media"] = MEDIA_NS
        root = etree.Element(parsed.tag, attrib=dict(parsed.attrib), nsmap=nsmap)  # namespaces declared once
        root.extend(list(parsed))
        channel = root.find("channel")
        for element, entry in zip(channel.findall("item"), entries, strict=True):
            for author in element.findall("author"):
                element.remove(author)
            creator = etree.Element(f"{{{DC_NS}}}creator")
            creator.text = entry.lead.author or source_name(entry.lead)
            element.append(creator)
            _thumbnail(element, entry.lead)
        if hub:
            etree.SubElement(channel, f"{{{ATOM_NS}}}link", rel="hub", href=hub)
        for rel, href in links:
            etree.SubElement(channel, f"{{{ATOM_NS}}}link", rel=rel, href=href, type=FORMATS["atom"].split(";")[0])
        etree.indent(root, space="  ")
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
    except (ValueError, TypeError, etree.LxmlError) as exc:
        raise PublishError(f"{output.slug}.rss: cannot render: {exc}") from exc


def render_json(output: Output, entries: list[OutputEntry], public_url: str, hub: str | None = None) -> bytes:
    """JSON Feed 1.1 (https://jsonfeed.org/version/1.1)."""
    doc = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": output.title,
        "home_page_url": f"{public_url}/feeds/{output.slug}",
        "feed_url": feed_url(public_url, output.slug, "json"),
        "description": output.subtitle or f"{output.title}, aggregated by aggregator",
        "authors": [{"name": output.title}],
        "items": [_json_item(entry, public_url) for entry in entries],
    }
    if output.icon:
        doc["icon"] = output.icon
    if output.language:
        doc["language"] = output.language
    if hub:
        doc["hubs"] = [{"type": "WebSub", "url": hub}]
    return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")


def _json_item(entry: OutputEntry, public_url: str) -> dict[str, object]:
    lead = entry.lead
    item: dict[str, object] = {
        "id": entry.story_uid,
        "title": lead.title,
        "content_html": entry_html(entry, public_url),
    }
    if lead.dated:
        item["date_published"] = lead.published_at.isoformat()
    item["date_modified"] = entry.updated_at.isoformat()
    author: dict[str, str] = {"name": lead.author or source_name(lead)}
    if not lead.author and lead.source_link:
        author["url"] = lead.source_link
    item["authors"] = [author]
    if lead.link:
        item["url"] = lead.link
    if image := preview(lead):
        item["image"] = image
    if lead.enclosures:
        item["attachments"] = [_json_attachment(e) for e in lead.enclosures]
    # JSON Feed has no field for the outlet or the coverage: an extension object carries them.
    outlet: dict[str, str] = {"name": source_name(lead), "feed_url": lead.source_url}
    if lead.source_link:
        outlet["home_page_url"] = lead.source_link
    item["_aggregator"] = {
        "about": GENERATOR_URI,
        "outlet": outlet,
        "outlets": entry.outlets,
        "dated": lead.dated,
        "age_unknown": lead.age_unknown,
        # Every other item of the story, as "Also reported by" names the first few of them.
        "also": [
            {"outlet": source_name(other), "title": other.title, **({"url": other.link} if other.link else {})}
            for other in entry.also
        ],
    }
    if lead.categories:
        item["tags"] = list(lead.categories)
    # JSON Feed's summary is plain text (readers show it as is), where Atom's may be HTML.
    if lead.content_html and lead.summary_html and (summary := html_to_text(lead.summary_html)):
        item["summary"] = summary
    return item


def _json_attachment(enclosure: Enclosure) -> dict[str, object]:
    attachment: dict[str, object] = {"url": enclosure.url, "mime_type": media_type(enclosure)}
    if enclosure.length:
        attachment["size_in_bytes"] = enclosure.length
    return attachment


def write_atomically(directory: Path, rendering: Rendering) -> Path:
    return write_file(directory, rendering.filename, rendering.body)


def write_file(directory: Path, filename: str, body: bytes | Iterable[bytes | memoryview]) -> Path:
    """Temp file + fsync + rename: readers (and nginx) see the old file or the new, never half.
    ``body``: the bytes, or pieces of them written as they come (``atom_pieces``)."""
    with spooled(directory, filename, body) as written:
        return place(written, directory / filename)


def holds(path: Path, body: bytes) -> bool:
    """Whether the file at ``path`` is ``body``, byte for byte (False where it is missing or
    cannot be read): a file that is need not be written again, nor its date changed."""
    try:
        return path.stat().st_size == len(body) and path.read_bytes() == body
    except OSError:
        return False


@contextmanager
def spooled(directory: Path, filename: str, body: bytes | Iterable[bytes | memoryview]) -> Iterator[Path]:
    """``body`` in a temp file of its own beside ``filename`` in ``directory``, on disk (fsync)
    and readable by all, for the block: ``place`` gives it its name, or it is removed when the
    block ends."""
    target = directory / filename
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".tmp")
    except OSError as exc:
        raise PublishError(f"cannot write {target}: {exc.strerror or exc}") from exc
    tmp = Path(name)
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                for piece in (body,) if isinstance(body, bytes) else body:
                    handle.write(piece)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
        except OSError as exc:
            raise PublishError(f"cannot write {target}: {exc.strerror or exc}") from exc
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def place(spooled: Path, target: Path) -> Path:
    """Give a ``spooled`` file its name, at once: readers see the old file or the new."""
    try:
        os.replace(spooled, target)
    except OSError as exc:
        raise PublishError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def etag_of_file(path: Path) -> str:
    """``etag_of`` the bytes of a file, read a piece at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return etag_of_digest(digest)
