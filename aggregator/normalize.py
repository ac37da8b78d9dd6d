"""``RawFeed`` → ``ParsedFeed`` of ``Item``s: identity, canonical URLs, UTC dates, safe HTML.

Everything here is a pure function. The rules:

* identity within a source: the entry id/guid, else the canonical link, else a hash of
  title + content (DESIGN.md, decision 4); an id or URL past ``MAX_IDENTITY_BYTES`` counts
  by its hash, or not at all. A guid repeated inside one document for
  different articles is disambiguated (by link, else by title) rather than silently merged;
* canonical URL: lowercase scheme and host (IDNA), no default port, no fragment, no
  tracking parameters — so the same article shared with ``?utm_source=…`` is one URL. It is
  what joins an item to the story of another carrying the same article, so an entry has none
  when its link is no article's (``article_urls``): a site's front page, or a link several
  entries of the document share (a podcast or a link blog pointing every entry at its site);
* links and enclosures are kept only when they are http(s): an entry link is published
  as-is in our outputs, so ``javascript:`` there would be an XSS as real as in the HTML;
* dates: UTC, and a date in the future is clamped to the fetch time, so a feed with a
  broken clock cannot pin itself to the top of every output; one before the web existed
  (``EARLIEST_DATE``: an unset clock, a zero timestamp) is no date. An undated item gets no
  date, only a place in time to sort by (``place_undated``): from where it stands in the
  document between dated neighbours, else from when it was first seen, in document order;
* text: UTF-8 that was decoded as Latin-1 or Windows-1252 before it reached us ("Putinâ€™s",
  "ChÃ¡vez", "Â£200m": a feed declaring the wrong charset, or a CMS that stored it so) is
  decoded again, once, here (``repaired``), so every output, page, archive and embedding
  reads the text as it was written, and a name is not "Putinâ" in one report and "Putin" in
  the next; and it is composed (NFC, ``composed``): one text is one item whichever Unicode
  form its feed wrote it in;
* HTML: sanitized with nh3 (an allow-list; no scripts, handlers, styles, forms, iframes,
  ``javascript:``/``data:`` URLs), relative URLs resolved against the element's
  ``xml:base`` if it is http(s), else the feed URL, plus a plain-text rendering for matching.

Bounds: parse.check_bounds refuses bombs before parsing; here, HTML nested deeper than
``MAX_HTML_DEPTH`` is rendered as text (html5ever, under nh3, is quadratic in nesting
depth: 40,000 nested ``<div>`` take 7 s of uninterruptible native code); the parse worker
process bounds each document's CPU and its own memory (``parseworker``).
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from html.parser import HTMLParser
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import ftfy
import nh3

from aggregator.parse import RawEntry, RawFeed
from aggregator.plaintext import NOT_XML as _NOT_XML
from aggregator.plaintext import collapse as _collapse
from aggregator.plaintext import html_to_text, xml_safe
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
LINK_SCHEMES = frozenset({"http", "https"})

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div", "dl",
        "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
        "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub",
        "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "u", "ul",
        "audio", "video", "source", "picture",
    }
)  # fmt: skip
# ammonia checks the scheme (and resolves relative URLs) of href, src and poster only. So no
# srcset (a list of URLs it passes through unchecked; src is always there too) and no cite
# (unchecked as well, and no browser shows it).
ALLOWED_ATTRIBUTES = {
    "*": {"title", "lang", "dir"},
    "a": {"href", "hreflang"},
    "img": {"src", "alt", "width", "height"},
    "audio": {"src", "controls"},
    "video": {"src", "controls", "poster", "width", "height"},
    "source": {"src", "type"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "time": {"datetime"},
    "del": {"datetime"},
    "ins": {"datetime"},
}
ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"
# Removed with their content, not just unwrapped: their text is code or chrome, not prose.
DROPPED_WITH_CONTENT = frozenset({"script", "style", "template", "noscript", "iframe", "object", "svg", "math"})

# html5ever is quadratic in nesting depth; real feed HTML nests a few dozen deep (Chrome caps at 512).
MAX_HTML_DEPTH = 400
# An id or canonical URL longer than this (UTF-8 bytes) is no usable identity: PostgreSQL
# refuses a btree index entry past ~2.7 KB, and items.key, stories.key and canonical_url are
# indexed. Such an id is keyed by its hash; such a URL is kept as the link but not matched on.
MAX_IDENTITY_BYTES = 1000
# What one entry's fields may hold. Past these they are no article's but an accident or an
# attack, and they would reach every output: lxml (under feedgen) refuses to write a text node
# past 10 MB, which stopped every output's publish behind one such item. HTML is cut before
# it is sanitized (the sanitizer closes what the cut left open); a title, author or category
# is cut at a word, marked "…"; a URL that long is no link.
MAX_HTML_CHARS = 1_000_000
MAX_TITLE_CHARS = 1_000
MAX_NAME_CHARS = 200  # an author, a category
MAX_CATEGORIES = 50
MAX_URL_CHARS = 65_536
# How far apart undated items are placed when nothing bounds them (see place_undated): enough
# to keep document order through every database's timestamp precision.
PLACEMENT_STEP = timedelta(seconds=1)


# --- normalizing ----------------------------------------------------------------------------------
def normalize_feed(raw: RawFeed, feed_url: str, fetched_at: datetime) -> ParsedFeed:
    items: list[Item] = []
    seen: dict[str, Item] = {}
    entries = [normalize_entry(entry, feed_url, fetched_at) for entry in raw.entries]
    articles = _article_url_test(entries)
    for item in entries:
        if item.guid is None and item.canonical_url is not None and not articles(item.canonical_url):
            item = replace(item, key=_key_beyond_link(item))
        previous = seen.get(item.key)
        if previous is not None:
            if previous.fingerprint == item.fingerprint or (
                item.canonical_url is not None and previous.canonical_url == item.canonical_url
            ):
                continue  # the same entry twice in one document: keep the first
            # One guid for two different articles (a CMS bug seen in the wild): tell them apart
            # by link, else by title (stable across edits, unlike the content), so that neither
            # overwrites the other. The first keeps the plain key it was stored under before.
            apart = f"|{item.canonical_url or 'title:' + _hash(item.title)}"
            item = replace(item, key=item.key + apart, former_key=item.former_key and item.former_key + apart)
            if item.key in seen:
                continue
        seen[item.key] = item
        items.append(item)
    # A former key that another entry of the document now has as its own is that entry's row.
    items = [replace(i, former_key=None) if i.former_key is not None and i.former_key in seen else i for i in items]
    return ParsedFeed(
        title=(_title(xml_safe(composed(repaired(raw.title))), raw.title_is_html) or None) if raw.title else None,
        link=_http_url(xml_safe(raw.link), feed_url) if raw.link else None,
        feed_id=xml_safe(raw.feed_id) if raw.feed_id else None,
        ttl_minutes=raw.ttl_minutes,
        update_period_minutes=raw.update_period_minutes,
        items=place_undated(article_urls(items, articles), fetched_at),
        warning=raw.warning,
    )


def article_urls(items: Sequence[Item], article: Callable[[str], bool]) -> list[Item]:
    """The items with a canonical URL only where it is an article's (``article``, from
    ``_article_url_test`` over the whole document): not a site's front page (no path, no query),
    and not a link several entries of the document carry. Such a link is the feed's own (a
    podcast linking every episode to its site, a link blog to its home page): taken for an
    article, it would join every entry, and every other feed linking the site, into one story,
    and a reader would see one episode of a hundred."""
    return [
        replace(item, canonical_url=None) if item.canonical_url and not article(item.canonical_url) else item
        for item in items
    ]


def _article_url_test(items: Sequence[Item]) -> Callable[[str], bool]:
    """Whether a canonical URL is one article's among a document's entries (``article_urls``).
    Entries are counted once however often the document repeats them: a link that one entry
    listed twice carries is still that entry's, and keyed as such (``_key_beyond_link``), as
    it is when the document lists it once."""
    carried = Counter(
        url for url, _ in {(item.canonical_url, item.fingerprint) for item in items if item.canonical_url}
    )

    def article(url: str) -> bool:
        parts = urlsplit(url)
        return carried[url] == 1 and (parts.path not in ("", "/") or bool(parts.query))

    return article


def _key_beyond_link(item: Item) -> str:
    """The key of an entry with no guid whose link is no article's (``article_urls``): its link
    cannot tell it from the document's other entries, and keyed by it, all but the first were
    dropped as repeats, and the entry that came first at the next poll (a new episode) replaced
    the one stored under it. Its link with the fragment the canonical URL drops, where it has
    one ("entries.php#111", a newsletter's issues on one page); else its headline and text, as
    for an entry with no link: the same wherever the entry stands in the document."""
    fragment = urlsplit(item.link or "").fragment
    key = f"url:{item.canonical_url}#{fragment}"
    if fragment and len(key.encode("utf-8", "surrogatepass")) <= MAX_IDENTITY_BYTES:
        return key
    return f"hash:{_hash(item.title, item.text)}"


def place_undated(items: Sequence[Item], fetched_at: datetime) -> tuple[Item, ...]:
    """Give each undated item a ``placed_at``: where it sorts, never a published date.

    A document lists its items in order, usually newest first (oldest first when its dated
    items mostly ascend). An undated run between two dated neighbours is spread evenly between
    their dates; a run above the newest dated item sits just above it (never above genuinely
    newer news from elsewhere); a run below the oldest, or a document with no dates at all,
    steps down by ``PLACEMENT_STEP`` from the nearest bound — the fetch time, i.e. first seen.
    So an all-undated feed keeps its own order, newest first, and its next new item (seen
    later) sorts above the ones before it.
    """
    dates = [item.published_at for item in items if item.published_at is not None]
    if len(dates) == len(items):
        return tuple(items)
    rising = sum(later > earlier for earlier, later in pairwise(dates))
    falling = sum(later < earlier for earlier, later in pairwise(dates))
    newest_first = list(reversed(items)) if rising > falling else list(items)
    placed: dict[int, datetime] = {}
    upper: datetime | None = None  # the date of the newer dated neighbour of the current run
    run: list[int] = []
    for index, item in enumerate([*newest_first, None]):
        lower = None if item is None else item.published_at
        if item is not None and lower is None:
            run.append(index)
            continue
        if run:
            top = upper
            if top is None:  # the run heads the document
                top = fetched_at if lower is None else min(fetched_at, lower + PLACEMENT_STEP * (len(run) + 1))
            for k, position in enumerate(run, start=1):
                if lower is None or lower >= top:
                    placed[position] = top - PLACEMENT_STEP * k
                else:
                    placed[position] = top - (top - lower) * k / (len(run) + 1)
            run = []
        upper = lower
    result = [
        replace(item, placed_at=placed[index]) if index in placed else item for index, item in enumerate(newest_first)
    ]
    return tuple(reversed(result)) if rising > falling else tuple(result)


def normalize_entry(entry: RawEntry, feed_url: str, fetched_at: datetime) -> Item:
    # Repaired before anything else reads the text: a no-break space that was a UTF-8 byte
    # ("Ã\xa0" for "à") would be collapsed to a plain space below. And before _xml_safe: a
    # repair must not be able to bring back a character XML cannot carry.
    # Composed first (``composed``): the text an item is known by, when it has no guid or link,
    # is the composed text as it arrived, whichever form the feed wrote it in.
    received = _composed(entry)
    repaired_entry = _repaired(received)
    entry = _xml_safe(repaired_entry)
    link = _http_url(entry.link, feed_url) if entry.link and len(entry.link) <= MAX_URL_CHARS else None
    canonical = canonical_url(link) if link else None
    if canonical and len(canonical.encode("utf-8", "surrogatepass")) > MAX_IDENTITY_BYTES:
        canonical = None
    title, summary_html, content_html, text = _readable(entry, feed_url)
    fingerprint = _hash(title, content_html or summary_html, link or "")
    if entry.id:
        key = _id_key(entry.id)
    elif canonical:
        key = f"url:{canonical}"
    elif repaired_entry is received:
        key = f"hash:{_hash(title, text)}"
    else:  # known by its text as it arrived: a stored item does not come back as a new one, repaired
        as_received = _readable(_xml_safe(received), feed_url)
        key = f"hash:{_hash(as_received[0], as_received[3])}"
    published = clamp(entry.published or entry.updated, fetched_at)
    updated = clamp(entry.updated, fetched_at)
    enclosures = []
    for url, kind, length in entry.enclosures:
        if len(url) <= MAX_URL_CHARS and (absolute := _http_url(url, feed_url)):
            enclosures.append(Enclosure(absolute, kind and _first_words(kind, MAX_NAME_CHARS), length))
    if (
        entry.thumbnail
        and len(entry.thumbnail) <= MAX_URL_CHARS
        and (thumbnail := _http_url(entry.thumbnail, feed_url))
    ):
        enclosures.append(Enclosure(thumbnail, thumbnail=True))
    return Item(
        key=key,
        guid=entry.id if key.startswith("id:") else None,  # a longer one is kept as its hash
        link=link,
        canonical_url=canonical,
        title=title or _first_words(text) or "(untitled)",
        summary_html=summary_html,
        content_html=content_html,
        text=text,
        author=_author(entry.author),
        categories=_categories(entry.categories),
        published_at=published,
        updated_at=updated,
        fingerprint=fingerprint,
        language=entry.language,
        enclosures=tuple(enclosures),
        former_key=_id_key(entry.resolved_id) if entry.id and entry.resolved_id not in (None, entry.id) else None,
    )


def _id_key(guid: str) -> str:
    """An item's key from its guid / id; a longer one than an index takes is kept as its hash."""
    if len(guid.encode("utf-8", "surrogatepass")) > MAX_IDENTITY_BYTES:
        return f"id-hash:{_hash(guid)}"
    return f"id:{guid}"


def _author(author: str | None) -> str | None:
    """An author's name as plain text, cut at ``MAX_NAME_CHARS``; None when there is none."""
    return (_first_words(plain_text(author[:MAX_HTML_CHARS]), MAX_NAME_CHARS) or None) if author else None


def _categories(categories: Sequence[str]) -> tuple[str, ...]:
    """An entry's categories, whitespace collapsed, each cut at ``MAX_NAME_CHARS``, repeats and
    empty ones left out, at most ``MAX_CATEGORIES``."""
    cut = (_first_words(_collapse(c[:MAX_TITLE_CHARS]), MAX_NAME_CHARS) for c in categories)
    return tuple(dict.fromkeys(c for c in cut if c))[:MAX_CATEGORIES]


def _cut_html(fragment: str) -> str:
    """``fragment`` cut at ``MAX_HTML_CHARS``, before a tag the cut would split."""
    if len(fragment) <= MAX_HTML_CHARS:
        return fragment
    head = fragment[:MAX_HTML_CHARS]
    opened = head.rfind("<")
    return head[:opened] if opened > head.rfind(">") else head


def _readable(entry: RawEntry, feed_url: str) -> tuple[str, str, str, str]:
    """An entry's title, sanitized summary and content (none if it repeats the summary), and
    the plain text matching reads."""
    summary, content = entry.summary and _cut_html(entry.summary), entry.content and _cut_html(entry.content)
    summary_html = sanitize_html(summary, _html_base(entry.summary_base, feed_url)) if summary else ""
    content_html = sanitize_html(content, _html_base(entry.content_base, feed_url)) if content else ""
    if content_html == summary_html:
        content_html = ""
    return (
        _title(entry.title, entry.title_is_html),
        summary_html,
        content_html,
        html_to_text(content_html or summary_html),
    )


def _xml_safe(entry: RawEntry) -> RawEntry:
    changes: dict[str, Any] = {}
    for field in (
        "id", "link", "title", "summary", "content", "author", "language", "summary_base", "content_base", "thumbnail"
    ):  # fmt: skip
        value = getattr(entry, field)
        if value and _NOT_XML.search(value):
            changes[field] = _NOT_XML.sub("", value) or None
    if any(_NOT_XML.search(c) for c in entry.categories):
        changes["categories"] = tuple(_NOT_XML.sub("", c) for c in entry.categories)
    if any(_NOT_XML.search(u + (t or "")) for u, t, _n in entry.enclosures):
        changes["enclosures"] = tuple(
            (_NOT_XML.sub("", u), t and _NOT_XML.sub("", t), n) for u, t, n in entry.enclosures
        )
    return replace(entry, **changes) if changes else entry


# --- mis-decoded text ----------------------------------------------------------------------------
# Windows-1252's printable characters for the bytes 0x80-0x9f ("€", "’", "™", ...), which Latin-1
# shows as C1 controls: a UTF-8 continuation byte misread as Windows-1252 shows as one of these.
_CP1252_SPECIALS = bytes(range(0x80, 0xA0)).decode("cp1252", "ignore")
# What every mis-decoded multi-byte UTF-8 character starts with: its lead byte (0xc2-0xf4) shown as
# Latin-1, then a continuation byte (0x80-0xbf) shown as Latin-1 or Windows-1252. Most text, in
# any script, has no such pair; only text that has one is worth ftfy's far dearer look.
_MAYBE_MISDECODED = re.compile(f"[\xc2-\xf4][\x80-\xbf{_CP1252_SPECIALS}]")
# ftfy's encoding repair and nothing else: no quotes straightened, no entities unescaped (our
# HTML is escaped on purpose), no ligatures, widths, line breaks or normalization changed.
# fix_encoding reads only the encoding options; the others are off too so that this stays
# true should the call ever become fix_text.
_ENCODING_ONLY = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    fix_surrogates=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)


def repaired(text: str) -> str:
    """``text`` with UTF-8 that was decoded as Latin-1 or Windows-1252 decoded again as UTF-8.

    ftfy decides, not a pattern of ours: it weighs the whole text, so "SÃO PAULO" or "café»"
    written on purpose stay as they are, and it knows the lossy and mixed cases a byte-by-byte
    rule gets wrong. It is only asked about text that could be mis-decoded at all.
    """
    return ftfy.fix_encoding(text, _ENCODING_ONLY) if _MAYBE_MISDECODED.search(text) else text


READABLE_FIELDS = ("title", "summary", "content", "author")  # and the categories


def _repaired(entry: RawEntry) -> RawEntry:
    """The entry with its readable text repaired: what readers and story matching see. Ids,
    links and languages are identifiers, matched byte for byte, and are left alone. A repair
    gives the characters the bytes were written in, composed or not: it is composed again."""
    return _with_text(entry, lambda value: composed(repaired(value)))


def _composed(entry: RawEntry) -> RawEntry:
    """The entry with its readable text composed (``composed``); identifiers as they came."""
    return _with_text(entry, composed)


def _with_text(entry: RawEntry, change: Callable[[str], str]) -> RawEntry:
    """The entry with ``change`` applied to the fields readers see, itself when none changed."""
    changes: dict[str, Any] = {}
    for field in READABLE_FIELDS:
        value = getattr(entry, field)
        if value and (changed := change(value)) != value:
            changes[field] = changed
    categories = tuple(change(c) for c in entry.categories)
    if categories != entry.categories:
        changes["categories"] = categories
    return replace(entry, **changes) if changes else entry


def composed(text: str) -> str:
    """``text`` in Unicode's composed form (NFC). A feed written on a Mac, or by software that
    decomposes, writes "é" as "e" and a combining accent: the same to a reader, other code
    points to everything that compares text. Stored so, the item was one apart from its composed
    twin (its fingerprint, and its key when known by its text, are hashes of the text), and
    keyword rules and story matching's names missed it. Canonical composition only: full-width
    letters, ligatures and the like stay as written (NFKC would change what readers see)."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def _title(title: str | None, is_html: bool) -> str:
    """A title as plain text. feedparser hands plain-text titles back unescaped already."""
    if not title:
        return ""
    title = title[:MAX_HTML_CHARS]  # bounds the work below; the text is cut at a word after it
    return _first_words(plain_text(title) if is_html else _collapse(title), MAX_TITLE_CHARS)


EARLIEST_DATE = datetime(1990, 1, 1, tzinfo=UTC)
"""Before this, a feed's date is no publication date: no feed, nor the web, existed yet. Such
dates are a clock never set or a zero timestamp ("1970-01-01", "0001-01-01"), and one at the
very start of the calendar left no room to reckon back from (story matching weighs the three
days before each item): its whole source failed to ingest."""


def clamp(moment: datetime | None, fetched_at: datetime) -> datetime | None:
    """A date in the future is a lie (or a clock skew); it becomes the fetch time. One before
    ``EARLIEST_DATE`` says nothing: the item is undated (``place_undated``)."""
    if moment is None or moment < EARLIEST_DATE:
        return None
    return min(moment, fetched_at)


def absolute_url(url: str, base: str) -> str:
    """``url`` resolved against ``base``; unchanged when either cannot be parsed."""
    try:
        return urljoin(base, url.strip())
    except ValueError:  # e.g. "http://[::1" — an invalid IPv6 literal
        return url.strip()


def _http_url(url: str, base: str) -> str | None:
    """The absolute form of a link we are willing to publish: http(s) only, else None."""
    absolute = absolute_url(url, base)
    try:
        parts = urlsplit(absolute)
    except ValueError:
        return None
    return absolute if parts.scheme.lower() in LINK_SCHEMES and parts.netloc else None


def canonical_url(url: str) -> str | None:
    """The form of a URL used to recognise the same article: see the module docstring."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in LINK_SCHEMES or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    query = parts.query
    if query:
        query = urlencode(
            [
                (k, v)
                for k, v in parse_qsl(query, keep_blank_values=True)
                if k.lower() not in TRACKING_PARAMS and not k.lower().startswith(TRACKING_PREFIXES)
            ]
        )
    return urlunsplit((scheme, host, parts.path or "/", query, ""))


# --- HTML -----------------------------------------------------------------------------------------
def sanitize_html(fragment: str, base_url: str) -> str:
    """Allow-listed HTML with every relative URL made absolute against ``base_url``, if that is
    an http(s) URL (else they stay relative). nh3 checks a URL's scheme before it resolves it,
    not after: against a ``file:`` or ``smb:`` base, ``<img src="p.png">`` would come out as a
    ``file:`` image, which a reader on Windows fetches over SMB, sending its credentials."""
    if _too_deep(fragment):
        text = plain_text(fragment)
        return f"<p>{html.escape(text, quote=False)}</p>" if text else ""
    return _cleaner(base_url if _is_http(base_url) else "").clean(fragment).strip()


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in LINK_SCHEMES and bool(parts.netloc)


def _html_base(base: str | None, feed_url: str) -> str:
    """What an entry's HTML resolves its relative URLs against: its ``xml:base`` when that is
    an http(s) URL (feedparser takes a base in any of a dozen schemes), else the feed's URL."""
    return base if base and _is_http(base) else feed_url


@lru_cache(maxsize=64)
def _cleaner(base_url: str) -> nh3.Cleaner:
    """One compiled nh3 Cleaner per base URL: building the options costs more than the cleaning itself."""
    options: dict[str, Any] = {
        "tags": set(ALLOWED_TAGS),
        "clean_content_tags": set(DROPPED_WITH_CONTENT),
        "attributes": {k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        "url_schemes": set(ALLOWED_URL_SCHEMES),
        "link_rel": LINK_REL,
        "strip_comments": True,
    }
    if not base_url:
        return nh3.Cleaner(**options)
    try:
        return nh3.Cleaner(url_relative=("rewrite_with_base", base_url), **options)
    except ValueError:  # a base nh3 cannot parse: relative URLs stay relative (they are still safe)
        return nh3.Cleaner(**options)


_TAG_NAME = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
# Elements that cannot nest (void) or that the HTML parser closes by itself when the next one
# opens: an unclosed <p> or <li> per paragraph is sloppy, not deep.
_NOT_NESTING = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
        "wbr", "p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "thead", "tbody", "tfoot",
        "colgroup", "caption", "rt", "rp",
    }
)  # fmt: skip


def _too_deep(fragment: str) -> bool:
    """True if the tags in ``fragment`` nest deeper than ``MAX_HTML_DEPTH`` (approximately)."""
    if fragment.count("<") <= MAX_HTML_DEPTH:
        return False
    depth = 0
    for match in _TAG_NAME.finditer(fragment):
        if match.group(2).lower() in _NOT_NESTING:
            continue
        if match.group(1):
            depth = max(0, depth - 1)
        else:
            depth += 1
            if depth > MAX_HTML_DEPTH:
                return True
    return False


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset({"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, _attrs: list[tuple[str, str | None]]) -> None:
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


def plain_text(fragment: str) -> str:
    """Text of any HTML (untrusted, unsanitized) without markup or entities, whitespace collapsed."""
    if "<" not in fragment and "&" not in fragment:
        return _collapse(fragment)
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    return _collapse("".join(extractor.parts))


def _first_words(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters at most, before the word the cut would split. A text
    with no space before the cut (Chinese, Thai) is cut between two characters as a reader sees
    them: never before a mark, a joiner or a modifier that belongs to the character before it
    (the Thai vowel and tone marks of "ที่", a family emoji joined by ZWJs)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if " " in head:
        return head.rsplit(" ", 1)[0] + "…"
    end = limit
    while end > 1 and _joins_previous(text, end):
        end -= 1
    return text[:end] + "…"


def _joins_previous(text: str, at: int) -> bool:
    """Whether ``text[at]`` belongs to one visible character with ``text[at - 1]``."""
    char, before = text[at], text[at - 1]
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or char in "\u200d\u200c" or before == "\u200d"
        or "\ufe00" <= char <= "\ufe0f" or "\U0001f3fb" <= char <= "\U0001f3ff" or "\U000e0020" <= char <= "\U000e007f"
    )  # fmt: skip


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]
