"""Bytes → ``RawFeed``: feedparser for RSS/Atom/RDF, our own mapping for JSON Feed.

This stage only extracts; it decides nothing about identity, dates or HTML
safety (that is ``normalize``). It is a pure function of its inputs, so it can run
in a worker process: the result is made of plain dataclasses that pickle cheaply,
never feedparser's dicts.

The rest is about hostile or broken input rather than about feeds:

* the body is handed to feedparser as a stream, never as ``bytes``: feedparser tries
  ``open()`` on a bytes argument first, so a body reading ``/etc/passwd`` or
  ``/dev/zero`` would make it read a local file;
* cheap checks run before feedparser sees the body (``check_bounds``): more than
  ``MAX_ENTRIES`` entries, or internal DTD entities that would expand past
  ``MAX_ENTITY_EXPANSION`` bytes (feedparser's fallback parser expands them itself,
  quadratically: a 100 KB body became 1 GB), reject the document outright; a body that
  is still gzip is inflated, up to ``MAX_GUNZIP_BYTES``;
* a document that is no feed is rejected with a reason a user can act on (an HTML page,
  an empty body, invalid JSON…), and the half entry at the end of a truncated body is
  dropped rather than stored under a made-up identity;
* feedparser's own sanitizer and relative-URI resolver are switched off: they run the
  HTML through a pure-Python SGML parser, are a large share of the parse, and are redone
  better by nh3 in ``normalize`` (which resolves against each element's ``xml:base``,
  carried here as ``summary_base`` / ``content_base``).
"""

from __future__ import annotations

import calendar
import codecs
import functools
import html
import io
import json
import re
import xml.sax
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import feedparser
import feedparser.mixin

from aggregator.errors import ParseError, one_line

JSON_FEED_TYPES = ("application/feed+json", "application/json")
# A feed with more entries than this is refused, not truncated: it is either broken or hostile
# (a daily podcast of twenty years has 7,300), and feedparser would spend minutes and gigabytes
# on a million of them before we could count.
MAX_ENTRIES = 10_000
# Bytes that internal DTD entities may add to a document when expanded (see check_bounds).
MAX_ENTITY_EXPANSION = 1 << 20
MAX_GUNZIP_BYTES = 16 << 20  # a body still gzip-compressed inflates to at most this (fetch caps at 15 MB)

_ENTRY_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(?:item|entry)[\s/>]")
# The spec's version URLs; generators also write a bare "1.1" (gofeed reads those, so do we).
_JSON_FEED_VERSION = re.compile(r"(?:https?://jsonfeed\.org/version/|v?)1(?:\.\d+)?/?$", re.IGNORECASE)
_ENTRY_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?(?:item|entry)\s*>")
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_]")
_HTML_PAGE = re.compile(rb"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>])", re.IGNORECASE | re.DOTALL)
# What feedparser keeps of an internal DTD subset (sanitizer.RE_SAFE_ENTITY_PATTERN).
_SAFE_ENTITY = re.compile(rb'<!ENTITY\s+(\w+)\s+"(&#\w+;|[^&"]*)"')
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


URL_CACHE_SIZE = 4096  # (base, reference) pairs remembered per process; a document has a handful


def _memoize_feedparser_urls() -> None:
    """Let feedparser's per-element URL joins hit a cache.

    On every start tag feedparser re-joins the current base URL with itself (to track
    ``xml:base``), and on every link it joins the href: two urllib parses per element,
    a fifth of a whole parse, nearly always of the same few strings. Both functions are
    pure (strings in, a string out), so a bounded cache cannot change a result.
    ``tests/test_parse.py`` fails if a feedparser release renames them (the cache would
    then silently stop applying).
    """
    mixin = feedparser.mixin
    for name in ("make_safe_absolute_uri", "_urljoin"):
        function = getattr(mixin, name, None)
        if function is not None and not hasattr(function, "cache_info"):
            setattr(mixin, name, functools.lru_cache(maxsize=URL_CACHE_SIZE)(function))


_memoize_feedparser_urls()

MEDIA_DESCRIPTION = "media_description"
"""Where ``_keep_media_descriptions_apart`` has feedparser put an entry's ``media:description``."""


def _keep_media_descriptions_apart() -> None:
    """Let feedparser file Media RSS's ``media:description`` under a key of its own.

    feedparser reads ``media:description`` as a second ``description``: after the item's own it
    becomes a content part, before it the summary (feedparser issue #53, open since 2016). It is
    the description of a photo or video, mostly a caption ("Supporters rallied in front of the
    State Capitol"), and it stood in for the article in every output and in story matching's
    lead. Kept apart, it is the entry's text only when the entry has none of its own
    (``_entry``): a video feed's only description. ``tests/test_parse.py`` fails if a feedparser
    release renames the handlers (the item's text would then silently be a caption again).
    """
    from feedparser.namespaces import mediarss

    def start(parser: Any, attrs: dict[str, str]) -> None:
        parser.push_content(MEDIA_DESCRIPTION, attrs, "text/plain", 1)

    def end(parser: Any) -> None:
        parser.pop_content(MEDIA_DESCRIPTION)

    # feedparser dispatches on the element's name: ``_start_`` / ``_end_`` + prefix + local name.
    for name, handler in (("_start_media_description", start), ("_end_media_description", end)):
        if hasattr(mediarss.Namespace, name):
            setattr(mediarss.Namespace, name, handler)


_keep_media_descriptions_apart()

RESOLVED_ID = "aggregator_resolved_id"
"""Where ``_keep_relative_ids_as_written`` has feedparser put a relative id resolved as it was."""


# RFC 3986: a URI reference that starts with a scheme is absolute; anything else is relative.
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:")


def _written(parser: Any) -> str:
    """The text of the element feedparser is about to pop, as the document wrote it."""
    stack = parser.elementstack
    if not stack or stack[-1][0] != "id":
        return ""
    return "".join(p if isinstance(p, str) else p.decode("utf-8", "replace") for p in stack[-1][2])


def _relative(reference: str) -> bool:
    return bool(reference.strip()) and not _SCHEME.match(reference)


def _keep_relative_ids_as_written() -> None:
    """Let an entry's ``<guid>`` / ``<id>`` stay as the feed wrote it, not resolved against the feed's URL.

    feedparser resolves a guid that is a permalink (RSS's default) and every Atom ``<id>`` against
    the document's base, as it does a link. A relative one ("12345", "/?p=12", "Safetynet") then
    names the item by where the feed was fetched from: the same feed after a redirect to https,
    a new host, or another port of a test server gave every such item a new identity, and it was
    stored again beside itself. An identity is a name, not a place; the link the guid stands for
    is still resolved, with the ``xml:base`` in effect, as before.

    The resolved form is kept too (``RESOLVED_ID``): items stored before this were keyed by it,
    and are found under it (``normalize.normalize_entry``, ``Item.former_key``).
    ``tests/test_parse.py`` fails if a feedparser release renames the handlers.
    """
    from feedparser.namespaces import _base

    original = getattr(_base.Namespace, "_end_guid", None)
    if original is None or getattr(original, "__module__", None) == __name__:
        return

    def end_guid(parser: Any) -> None:
        if not (parser.guidislink and parser.inentry and not parser.insource and _relative(_written(parser))):
            original(parser)
            return
        parser.guidislink = False  # feedparser's pop resolves an id against the base only as a permalink
        try:
            original(parser)
        finally:
            parser.guidislink = True
        entry = parser.entries[-1]
        if written := entry.get("id"):
            link = parser.resolve_uri(written)
            entry["guidislink"] = "link" not in entry  # the guid stands for the link, as before
            entry.setdefault("link", link)
            entry[RESOLVED_ID] = link

    for name in ("_end_guid", "_end_id"):
        setattr(_base.Namespace, name, end_guid)


_keep_relative_ids_as_written()


@dataclass(frozen=True)
class RawEntry:
    id: str | None
    link: str | None
    title: str | None
    title_is_html: bool
    summary: str | None
    content: str | None
    published: datetime | None
    updated: datetime | None
    author: str | None
    categories: tuple[str, ...]
    enclosures: tuple[tuple[str, str | None, int | None], ...]
    language: str | None
    # The base URL in effect (xml:base, else the document URL) for relative links inside the
    # summary / content HTML; None means the document URL.
    summary_base: str | None = None
    content_base: str | None = None
    thumbnail: str | None = None  # media:thumbnail, else an image media:content; JSON Feed ``image``
    # A relative ``id`` as feedparser resolved it against the document's base (``RESOLVED_ID``).
    resolved_id: str | None = None


@dataclass(frozen=True)
class RawFeed:
    title: str | None
    link: str | None
    feed_id: str | None
    language: str | None
    ttl_minutes: int | None
    update_period_minutes: int | None
    entries: tuple[RawEntry, ...]
    warning: str | None = None
    title_is_html: bool = False


def parse_document(body: bytes, url: str, content_type: str | None = None) -> RawFeed:
    """Parse one fetched body. Raises ``ParseError`` (one-line reason) when it is not a feed we can read."""
    body = _gunzipped(body)
    if not body.strip():
        raise ParseError("empty body")
    if _HTML_PAGE.match(body.lstrip(b"\xef\xbb\xbf")[:1024]):
        raise ParseError("an HTML page, not a feed (is the URL the site rather than its feed?)")
    if _looks_like_json(body, content_type):
        return _parse_json_feed(body, url)
    check_bounds(body)
    headers = {"content-location": url}
    if content_type:
        # feedparser decodes by the HTTP charset (text/* without one means US-ASCII to it), and
        # sniffs the BOM and XML prolog only under an XML type without one. A byte order mark
        # outranks the HTTP header (as in browsers): a UTF-16 file served as "charset=utf-8" or
        # "text/html" by a server that labels everything so is still a readable feed.
        has_bom = body.startswith((codecs.BOM_UTF8, *(bom for bom, _ in _WIDE_BOMS)))
        headers["content-type"] = "application/xml" if has_bom else content_type
    try:
        parsed = feedparser.parse(
            io.BytesIO(body), response_headers=headers, sanitize_html=False, resolve_relative_uris=False
        )
    except ParseError:
        raise  # the CPU budget ran out (parseworker.document_to_feed)
    except MemoryError:
        raise ParseError("document too large to parse within the memory limit") from None
    except Exception as exc:  # feedparser raises rarely, but anything from a hostile body stays here
        raise ParseError(one_line(f"unreadable feed: {type(exc).__name__}: {exc}")) from None
    feed = parsed.get("feed", {})
    entries = parsed.get("entries", [])
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    # Ill-formed XML: the strict parser gave up and feedparser's loose parser read the document.
    ill_formed = isinstance(problem, xml.sax.SAXException)
    warning = _warning(problem) if parsed.get("bozo") else None
    if not parsed.get("version") and not entries:
        # An HTML page, an error page, plain text, or XML that is no feed dialect feedparser knows.
        detail = warning if warning and ill_formed else "no rss, feed or RDF root element"
        raise ParseError(one_line(f"not an RSS, Atom, RDF or JSON feed ({detail})"))
    if len(entries) > MAX_ENTRIES:
        raise ParseError(f"more than {MAX_ENTRIES} entries")
    if ill_formed and entries and _last_entry_unclosed(body):
        # A body cut short (a dropped connection, a full disk at the publisher): the loose
        # parser still returns the entry it was in the middle of, with half a title and no id.
        # Stored under a hash key it would stay forever beside the real one; drop it.
        entries = entries[:-1]
        warning = one_line(f"truncated document, its unfinished last entry dropped ({warning})")
    language = _text(feed.get("language"))
    return RawFeed(
        title=_text(feed.get("title")),
        title_is_html="html" in ((feed.get("title_detail") or {}).get("type") or ""),
        link=_text(feed.get("link")),
        feed_id=_text(feed.get("id")),
        language=language,
        ttl_minutes=_int(feed.get("ttl")),
        update_period_minutes=_update_period(feed),
        entries=tuple(_entry(e, language) for e in entries),
        warning=warning,
    )


def _warning(problem: Any) -> str:
    """feedparser's bozo exception as one line an operator can act on."""
    if isinstance(problem, xml.sax.SAXParseException):
        where = f"line {problem.getLineNumber()}, column {problem.getColumnNumber()}"
        return one_line(f"ill-formed XML: {problem.getMessage()} at {where}")
    if problem is None:
        return "malformed document"
    return one_line(f"{type(problem).__name__}: {problem}")


def _gunzipped(body: bytes) -> bytes:
    """A body that is still gzip (a .xml.gz served as is, or compressed twice) is decompressed.

    Bounded: a gzip bomb stops at ``MAX_GUNZIP_BYTES``, as the fetcher's own cap does.
    """
    if not body.startswith(b"\x1f\x8b"):
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_GUNZIP_BYTES + 1)
    except zlib.error as exc:
        raise ParseError(one_line(f"corrupt gzip body: {exc}")) from None
    if len(out) > MAX_GUNZIP_BYTES:
        raise ParseError(f"gzip body expands past {MAX_GUNZIP_BYTES} bytes")
    if not inflater.eof:
        raise ParseError("corrupt gzip body: truncated")
    return out


def check_bounds(body: bytes) -> None:
    """Refuse, before parsing, an XML body whose parse could not be bounded in time or memory.

    Both checks are a few scans of the body in C, so every document pays almost nothing:

    * more than ``MAX_ENTRIES`` item/entry start tags;
    * internal entities whose expansion (value length x number of references) exceeds
      ``MAX_ENTITY_EXPANSION``. Nested entities (the classic billion laughs) never get
      this far: feedparser drops every entity whose value contains ``&``, and expat caps
      amplification; but one flat 100 KB entity referenced 10,000 times is 1 GB, and when
      expat refuses it feedparser's fallback parser expands it anyway.
    """
    view = _ascii_view(body)
    entries = len(_ENTRY_TAG.findall(view))
    if entries > MAX_ENTRIES:
        raise ParseError(f"more than {MAX_ENTRIES} entries ({entries} item/entry tags)")
    start = _FIRST_ELEMENT.search(view)
    head = view[: start.start()] if start else view
    if b"<!ENTITY" not in head:
        return
    expansion = 0
    for name, value in _SAFE_ENTITY.findall(head):
        expansion += len(value) * view.count(b"&" + name + b";")
        if expansion > MAX_ENTITY_EXPANSION:
            raise ParseError(f"DTD entities would expand to more than {MAX_ENTITY_EXPANSION} bytes")


def _last_entry_unclosed(body: bytes) -> bool:
    view = _ascii_view(body)
    last = max(_ENTRY_TAG.finditer(view), key=lambda m: m.start(), default=None)
    if last is None or view[last.end() - 2 : last.end()] == b"/>":
        return False
    return _ENTRY_END.search(view, last.end()) is None


def _ascii_view(body: bytes) -> bytes:
    """The body as ASCII-compatible bytes, so the byte patterns above also see UTF-16/32 documents."""
    for bom, codec in _WIDE_BOMS:
        if body.startswith(bom):
            return body.decode(codec, "replace").encode("utf-8", "replace")
    if b"\x00" in body[:4]:  # UTF-16/32 without a BOM: "<?xm" has a NUL in every code unit
        for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            view = body.decode(codec, "replace").encode("utf-8", "replace")
            if view.lstrip()[:1] == b"<":
                return view
    return body


def _entry(e: Any, feed_language: str | None) -> RawEntry:
    # dict.get, not feedparser's own: FeedParserDict.get runs its alias and fallback logic for
    # every key, several times a plain lookup, and this reads ~20 keys per entry. Only "enclosures"
    # (computed from links) and "updated_parsed" (see _updated) need that logic.
    get = dict.get
    content = content_base = content_language = None
    for part in get(e, "content") or ():
        # Prefer the HTML rendering when a feed offers several (Atom allows text + html).
        kind = get(part, "type") or ""
        if content is None or "html" in kind:
            value = get(part, "value")
            # A text/plain part is text, not markup: escape it so "a < b" survives sanitizing.
            content = html.escape(value) if value and "html" not in kind and "xml" not in kind else value
            content_base, content_language = get(part, "base"), get(part, "language")
    summary_detail = get(e, "summary_detail") or {}
    summary = get(e, "summary")
    if not summary and content is None:  # a media description is the text of an entry with none
        summary_detail = get(e, f"{MEDIA_DESCRIPTION}_detail") or {}
        summary = get(e, MEDIA_DESCRIPTION)
    if summary and "html" not in (get(summary_detail, "type") or "html"):
        summary = html.escape(summary)
    title_detail = get(e, "title_detail") or {}
    enclosures = []
    for enc in e.get("enclosures") or ():
        if href := _text(get(enc, "href")):
            enclosures.append((href, _text(get(enc, "type")), _int(get(enc, "length"))))
    return RawEntry(
        id=_text(get(e, "id")),
        link=_text(get(e, "link")),
        title=_text(get(e, "title")),
        title_is_html="html" in (get(title_detail, "type") or ""),
        summary=_text(summary),
        content=_text(content),
        published=_struct_time(get(e, "published_parsed")),
        updated=_struct_time(_updated(e)),
        author=_text(get(e, "author")),
        categories=tuple(t for t in (_text(get(tag, "term")) for tag in get(e, "tags") or ()) if t),
        enclosures=tuple(enclosures),
        # An Atom entry's xml:lang reaches its text's details, not the entry: read where the text is.
        language=_text(content_language or get(summary_detail, "language") or get(title_detail, "language"))
        or feed_language,
        summary_base=_text(get(summary_detail, "base")),
        content_base=_text(content_base),
        thumbnail=_thumbnail(e),
        resolved_id=_text(get(e, RESOLVED_ID)),
    )


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif")


def _thumbnail(e: dict[str, Any]) -> str | None:
    """The item's preview image: ``media:thumbnail``, else the first ``media:content`` that is an
    image (by ``medium``, by ``type``, or — the Guardian gives neither — by its file name)."""
    for thumb in dict.get(e, "media_thumbnail") or ():
        if isinstance(thumb, dict) and (url := _text(thumb.get("url"))):
            return url
    for media in dict.get(e, "media_content") or ():
        if not isinstance(media, dict) or not (url := _text(media.get("url"))):
            continue
        medium, kind = _text(media.get("medium")), _text(media.get("type"))
        if medium == "image" or (kind or "").startswith("image/"):
            return url
        if medium is None and kind is None and _path(url).lower().endswith(_IMAGE_SUFFIXES):
            return url
    return None


def _path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def _updated(entry: dict[str, Any]) -> Any:
    """The entry's update time, or else its publication time: what feedparser's own
    ``entry.get("updated_parsed")`` returns today (with a DeprecationWarning each time, and a
    promise to stop), kept as the meaning of ``updated`` for the items already stored."""
    if dict.__contains__(entry, "updated_parsed"):
        return dict.get(entry, "updated_parsed")
    return dict.get(entry, "published_parsed")


def _looks_like_json(body: bytes, content_type: str | None) -> bool:
    """The body decides; the content type only breaks a tie (servers label feeds wrongly both ways)."""
    first = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first in (b"{", b"["):
        return True
    if first == b"<":
        return False
    return bool(content_type and content_type.split(";")[0].strip().lower() in JSON_FEED_TYPES)


def _parse_json_feed(body: bytes, url: str) -> RawFeed:
    """JSON Feed 1.0/1.1 (jsonfeed.org) mapped to the same shape feedparser gives us."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(one_line(f"invalid JSON: {exc}")) from None
    except RecursionError:
        raise ParseError("invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict) or not _JSON_FEED_VERSION.match(str(doc.get("version", ""))):
        raise ParseError("JSON document is not a JSON Feed (no jsonfeed.org version)")
    items = doc.get("items")
    if not isinstance(items, list):
        raise ParseError("JSON Feed has no items list")
    if len(items) > MAX_ENTRIES:
        raise ParseError(f"more than {MAX_ENTRIES} entries")
    language = _text(doc.get("language"))
    feed_authors = _authors(doc)
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        html_content = _text(item.get("content_html"))
        plain = _text(item.get("content_text"))
        summary = _text(item.get("summary"))  # plain text in JSON Feed, unlike RSS/Atom
        entries.append(
            RawEntry(
                id=_text(item.get("id")),
                link=_text(item.get("url")) or _text(item.get("external_url")),
                title=_text(item.get("title")),
                title_is_html=False,
                summary=html.escape(summary) if summary else None,
                content=html_content if html_content is not None else (_paragraphs(plain) if plain else None),
                published=_iso_date(item.get("date_published")),
                updated=_iso_date(item.get("date_modified")),
                author=_authors(item) or feed_authors,
                categories=tuple(str(t) for t in _list(item.get("tags")) if isinstance(t, str | int)),
                enclosures=tuple(
                    (str(a["url"]), _text(a.get("mime_type")), _int(a.get("size_in_bytes")))
                    for a in _list(item.get("attachments"))
                    if isinstance(a, dict) and isinstance(a.get("url"), str)
                ),
                language=_text(item.get("language")) or language,
                thumbnail=_text(item.get("image")),
            )
        )
    return RawFeed(
        title=_text(doc.get("title")),
        link=_text(doc.get("home_page_url")),
        feed_id=_text(doc.get("feed_url")) or url,
        language=language,
        ttl_minutes=None,
        update_period_minutes=None,
        entries=tuple(entries),
    )


def _authors(obj: dict[str, Any]) -> str | None:
    """JSON Feed 1.1 ``authors`` (a list), else 1.0 ``author`` (one object): the first name."""
    authors = obj.get("authors")
    if not isinstance(authors, list):
        authors = [obj.get("author")]
    return next((_text(a["name"]) for a in authors if isinstance(a, dict) and _text(a.get("name"))), None)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _paragraphs(text: str) -> str:
    return "<p>" + html.escape(text).replace("\n\n", "</p><p>") + "</p>"


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _struct_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        # feedparser's *_parsed are UTC struct_times; timegm avoids the local-time trap of mktime.
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _iso_date(value: Any) -> datetime | None:
    """RFC 3339 (JSON Feed's date format); None for anything unreadable or out of range."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        # Year 1 with a positive offset is before datetime.min in UTC: astimezone overflows.
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


_PERIOD_MINUTES = {"hourly": 60, "daily": 1440, "weekly": 10080, "monthly": 43200, "yearly": 525600}


def _update_period(feed: Any) -> int | None:
    """RSS ``sy:updatePeriod`` / ``sy:updateFrequency`` as minutes between updates."""
    period = _PERIOD_MINUTES.get(str(feed.get("sy_updateperiod", "")).strip().lower())
    if period is None:
        return None
    frequency = _int(feed.get("sy_updatefrequency")) or 1
    return max(1, period // max(1, frequency))
