"""``RawFeed`` → ``ParsedFeed`` of ``Item``s: identity, canonical URLs, UTC dates, safe HTML.

Everything here is a pure function. The rules:

* identity within a source: the entry id/guid, else the canonical link, else a hash of
  title + content (DESIGN.md, decision 4). A guid repeated inside one document for
  different links is disambiguated by the link rather than silently merged;
* canonical URL: lowercase scheme and host, no default port, no fragment, no tracking
  parameters — so the same article shared with ``?utm_source=…`` is one URL;
* dates: UTC, and a date in the future is clamped to the fetch time, so a feed with a
  broken clock cannot pin itself to the top of every output;
* HTML: sanitized with nh3 (an allow-list; no scripts, handlers, forms, iframes,
  ``javascript:``/``data:`` URLs), plus a plain-text rendering for matching.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import nh3

from aggregator.parse import RawEntry, RawFeed, parse_document
from aggregator.records import Enclosure, Item, ParsedFeed

TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "gbraid", "wbraid", "yclid", "msclkid", "twclid", "igshid",
        "mc_cid", "mc_eid", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id",
        "ref_src", "ref_url", "cmpid", "ncid", "ocid", "sr_share", "at_medium", "at_campaign",
    }
)  # fmt: skip
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "__twitter", "itm_")
DEFAULT_PORTS = {"http": 80, "https": 443}

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div", "dl",
        "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
        "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub",
        "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "u", "ul",
        "audio", "video", "source", "picture",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "*": {"title", "lang", "dir"},
    "a": {"href", "hreflang"},
    "img": {"src", "alt", "width", "height", "srcset"},
    "audio": {"src", "controls"},
    "video": {"src", "controls", "poster", "width", "height"},
    "source": {"src", "type", "srcset"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "time": {"datetime"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
}
ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})


def document_to_feed(body: bytes, url: str, content_type: str | None, fetched_at: datetime) -> ParsedFeed:
    """Parse and normalize one body; the unit of work sent to the parse process pool."""
    return normalize_feed(parse_document(body, url, content_type), url, fetched_at)


def normalize_feed(raw: RawFeed, feed_url: str, fetched_at: datetime) -> ParsedFeed:
    items: list[Item] = []
    seen: dict[str, Item] = {}
    for entry in raw.entries:
        item = normalize_entry(entry, feed_url, fetched_at)
        previous = seen.get(item.key)
        if previous is not None:
            if previous.fingerprint == item.fingerprint or previous.canonical_url == item.canonical_url:
                continue  # the same entry twice in one document: keep the first
            # One guid for two different articles (a CMS bug seen in the wild): tell them apart
            # by link so neither overwrites the other.
            item = _rekey(item, f"{item.key}|{item.canonical_url or item.fingerprint}")
            if item.key in seen:
                continue
        seen[item.key] = item
        items.append(item)
    return ParsedFeed(
        title=plain_text(raw.title) if raw.title else None,
        link=raw.link,
        feed_id=raw.feed_id,
        ttl_minutes=raw.ttl_minutes,
        update_period_minutes=raw.update_period_minutes,
        items=tuple(items),
        warning=raw.warning,
    )


def _rekey(item: Item, key: str) -> Item:
    from dataclasses import replace

    return replace(item, key=key)


def normalize_entry(entry: RawEntry, feed_url: str, fetched_at: datetime) -> Item:
    link = absolute_url(entry.link, feed_url) if entry.link else None
    canonical = canonical_url(link) if link else None
    summary_html = sanitize_html(entry.summary or "", feed_url)
    content_html = sanitize_html(entry.content, feed_url) if entry.content else ""
    if content_html == summary_html:
        content_html = ""
    # feedparser hands plain-text titles back already unescaped; only an HTML title has markup.
    if entry.title and entry.title_is_html:
        title = plain_text(entry.title)
    else:
        title = _SPACE.sub(" ", entry.title or "").strip()
    text = plain_text(content_html or summary_html)
    fingerprint = _hash(title, content_html or summary_html, link or "")
    if entry.id:
        key = f"id:{entry.id}"
    elif canonical:
        key = f"url:{canonical}"
    else:
        key = f"hash:{_hash(title, text)}"
    published = clamp(entry.published or entry.updated, fetched_at)
    updated = clamp(entry.updated, fetched_at)
    return Item(
        key=key,
        guid=entry.id,
        link=link,
        canonical_url=canonical,
        title=title or _first_words(text) or "(untitled)",
        summary_html=summary_html,
        content_html=content_html,
        text=text,
        author=plain_text(entry.author) if entry.author else None,
        categories=tuple(dict.fromkeys(c.strip() for c in entry.categories if c.strip())),
        published_at=published,
        updated_at=updated,
        fingerprint=fingerprint,
        language=entry.language,
        enclosures=tuple(Enclosure(absolute_url(u, feed_url), t, n) for u, t, n in entry.enclosures if _safe_scheme(u)),
    )


def clamp(moment: datetime | None, fetched_at: datetime) -> datetime | None:
    """A date in the future is a lie (or a clock skew); it becomes the fetch time."""
    if moment is None:
        return None
    return min(moment, fetched_at)


def absolute_url(url: str, base: str) -> str:
    return urljoin(base, url.strip())


def canonical_url(url: str) -> str | None:
    """The form of a URL used to recognise the same article: see the module docstring."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in TRACKING_PARAMS and not k.lower().startswith(TRACKING_PREFIXES)
    ]
    return urlunsplit((scheme, host, parts.path or "/", urlencode(query), ""))


def sanitize_html(fragment: str, base_url: str) -> str:
    cleaned = nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(ALLOWED_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
        clean_content_tags={"script", "style"},
    )
    return cleaned.strip()


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset({"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


_SPACE = re.compile(r"\s+")


def plain_text(fragment: str) -> str:
    """Text without markup or entities, whitespace collapsed: for titles and matching."""
    if "<" not in fragment and "&" not in fragment:
        return _SPACE.sub(" ", fragment).strip()
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    return _SPACE.sub(" ", "".join(extractor.parts)).strip()


def _first_words(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + "…"


def _safe_scheme(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() in ("http", "https", "")


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]
