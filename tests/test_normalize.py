"""Normalization rules, one at a time: canonical URLs, sanitizing, text, identity, dates.

``find_escapes`` is the definition of a sanitizer escape used here and by the corpus sweep
(tests/test_corpus.py). An *escape* is anything in sanitized HTML that a browser could run or
that lets the feed restyle or overlay the page around it:

* an element outside ``ALLOWED_TAGS`` — among them ``script``, ``style``, ``iframe``, ``frame``,
  ``object``, ``embed``, ``form``, ``input``, ``button``, ``svg``, ``math``, ``meta``, ``link``,
  ``base``;
* an attribute outside the allow-list of its element — among them every ``on*`` handler,
  ``style``, ``srcset``, ``formaction``, ``srcdoc``, ``xlink:href``;
* a URL attribute (``href``, ``src``, ``poster``, ``cite``, …) whose scheme is not http, https
  or mailto once the browser has decoded entities and dropped the whitespace and control
  characters it ignores (so ``jav&#x09;ascript:`` is ``javascript:``) — ``javascript:``,
  ``data:``, ``vbscript:`` and the rest.

The HTML is tokenized with ``html.parser`` as a browser would, so ``&lt;script&gt;`` shown as
text is not an escape, and neither is ``alt="<script>"``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Literal

import pytest

from aggregator.normalize import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    ALLOWED_URL_SCHEMES,
    EARLIEST_DATE,
    MAX_HTML_DEPTH,
    canonical_url,
    clamp,
    normalize_entry,
    normalize_feed,
    plain_text,
    sanitize_html,
)
from aggregator.parse import RawEntry, RawFeed
from aggregator.plaintext import html_to_lines, html_to_text

BASE = "https://example.com/news/feed.xml"
FETCHED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
URL_ATTRIBUTES = frozenset(
    {"href", "src", "poster", "cite", "action", "formaction", "background", "data", "longdesc", "ping", "xlink:href"}
)
ADDED_BY_SANITIZER = {"a": {"rel"}}  # link_rel
_IGNORED_IN_URLS = re.compile(r"[\x00-\x20]")


class _EscapeFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.escapes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.escapes.append(f"element <{tag}>")
        allowed = (
            ALLOWED_ATTRIBUTES.get("*", set()) | ALLOWED_ATTRIBUTES.get(tag, set()) | ADDED_BY_SANITIZER.get(tag, set())
        )
        for name, value in attrs:
            if name not in allowed:
                self.escapes.append(f"attribute {name}= on <{tag}>")
            if name in URL_ATTRIBUTES and value:
                scheme = url_scheme(value)
                if scheme and scheme not in ALLOWED_URL_SCHEMES:
                    self.escapes.append(f"{scheme}: URL in {name}= on <{tag}>")

    handle_startendtag = handle_starttag


def url_scheme(url: str) -> str | None:
    """The scheme a browser would see: it ignores whitespace and control characters in it."""
    cleaned = _IGNORED_IN_URLS.sub("", url)
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", cleaned)
    return match.group(1).lower() if match else None


def find_escapes(sanitized: str) -> list[str]:
    """Every escape (see the module docstring) in one piece of sanitized HTML."""
    finder = _EscapeFinder()
    finder.feed(sanitized)
    finder.close()
    return finder.escapes


@pytest.mark.parametrize(
    ("html", "found"),
    [
        ('<p onclick="x()">a</p>', "attribute onclick="),
        ("<script>alert(1)</script>", "element <script>"),
        ('<a href=" jav&#x09;ascript:alert(1)">x</a>', "javascript: URL"),
        ('<img src="DATA:image/png;base64,AAAA">', "data: URL"),
        ('<p style="position:fixed">x</p>', "attribute style="),
        ('<img srcset="javascript:x 1x">', "attribute srcset="),
    ],
)
def test_the_escape_finder_finds_escapes(html: str, found: str) -> None:
    assert any(found in escape for escape in find_escapes(html)), find_escapes(html)


def test_the_escape_finder_does_not_count_text_or_attribute_values() -> None:
    assert (
        find_escapes('<p>&lt;script&gt;alert(1)&lt;/script&gt; javascript:x</p><img src="a.png" alt="<script>">') == []
    )


# --- canonical URLs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://example.com/a?utm_source=rss&utm_medium=feed&id=7", "https://example.com/a?id=7"),
        ("https://example.com/a?fbclid=1&gclid=2&mc_cid=3&_hsenc=4&pk_campaign=5&ref_src=6", "https://example.com/a"),
        ("https://example.com/a?UTM_SOURCE=x&keep=1", "https://example.com/a?keep=1"),
        ("https://example.com/a#section", "https://example.com/a"),
        ("HTTPS://EXAMPLE.com/Path/Case?Q=V", "https://example.com/Path/Case?Q=V"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("https://example.com./a", "https://example.com/a"),
        ("https://user:secret@example.com/a", "https://example.com/a"),
        ("https://Bücher.example/a", "https://xn--bcher-kva.example/a"),
        ("https://[2001:DB8::1]:443/a", "https://[2001:db8::1]/a"),
        ("https://example.com/a?b=1&a=2", "https://example.com/a?b=1&a=2"),
        ("https://example.com/a?q=x%20y", "https://example.com/a?q=x+y"),
        ("ftp://example.com/a", None),
        ("javascript:alert(1)", None),
        ("/relative/path", None),
        ("http://[::1/broken", None),
        ("http://example.com:99999/", None),
    ],
)
def test_canonical_url(url: str, canonical: str | None) -> None:
    assert canonical_url(url) == canonical


def test_canonical_url_is_idempotent() -> None:
    for url in ("https://Example.com:443/a?utm_source=x&b=%2F#f", "http://bücher.example:8080"):
        once = canonical_url(url)
        assert once is not None and canonical_url(once) == once


# --- sanitizing ------------------------------------------------------------------------------------
ATTACKS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<body onload=alert(1)>",
    "<a href='javascript:alert(1)'>x</a>",
    "<a href='&#x6A;avascript:alert(1)'>x</a>",
    "<a href='java\tscript:alert(1)'>x</a>",
    "<a href='  javascript:alert(1)'>x</a>",
    "<a href='vbscript:msgbox(1)'>x</a>",
    "<img src='data:image/svg+xml;base64,PHN2Zz48L3N2Zz4='>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<img srcset='javascript:alert(1) 1x'>",
    "<iframe src='https://evil.example/'></iframe>",
    "<iframe srcdoc='<script>alert(1)</script>'></iframe>",
    "<form action='https://evil.example/'><input name=p><button formaction='javascript:alert(1)'>go</button></form>",
    "<object data='x.swf'></object><embed src='x.swf'>",
    "<style>*{display:none}</style><p style='position:fixed'>x</p>",
    "<svg onload=alert(1)><script>alert(2)</script></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "<base href='javascript:alert(1)//'>",
    "<link rel=stylesheet href='https://evil.example/x.css'>",
    "<video poster='javascript:alert(1)' src='https://example.com/v.mp4'></video>",
    "<blockquote cite='javascript:alert(1)'>q</blockquote>",
    "<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>",
    "<a href='https://example.com/' target=_blank>x</a>",
    '<div><a href="x" onmouseover=alert(1)//">y</a></div>',
    "<img src=`javascript:alert(1)`>",
    "<<img src=x onerror=alert(1)//<",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_sanitize_leaves_no_escape(attack: str) -> None:
    assert find_escapes(sanitize_html(attack, BASE)) == []


def test_sanitize_keeps_what_an_article_needs_and_resolves_relative_urls() -> None:
    html = (
        '<h2>Title</h2><p><a href="../about" title="t">about</a> <img src="img/a.png" alt="a" width="10"></p>'
        '<blockquote cite="/q">q</blockquote><a href="mailto:x@example.com">mail</a><a href="#top">top</a>'
    )
    assert sanitize_html(html, BASE) == (
        '<h2>Title</h2><p><a href="https://example.com/about" title="t" rel="noopener noreferrer nofollow">about</a> '
        '<img src="https://example.com/news/img/a.png" alt="a" width="10"></p>'
        "<blockquote>q</blockquote>"
        '<a href="mailto:x@example.com" rel="noopener noreferrer nofollow">mail</a>'
        '<a href="https://example.com/news/feed.xml#top" rel="noopener noreferrer nofollow">top</a>'
    )


def test_sanitize_survives_a_base_url_nh3_cannot_use() -> None:
    assert sanitize_html('<a href="/x">x</a>', "not a url") == '<a href="/x" rel="noopener noreferrer nofollow">x</a>'


def test_deep_nesting_is_rendered_as_text_and_sloppy_paragraphs_are_not_deep() -> None:
    deep = "<div>" * (MAX_HTML_DEPTH + 1) + "a &amp; b" + "</div>" * (MAX_HTML_DEPTH + 1)
    assert sanitize_html(deep, BASE) == "<p>a &amp; b</p>"
    shallow = "<div>" * MAX_HTML_DEPTH + "x" + "</div>" * MAX_HTML_DEPTH
    assert sanitize_html(shallow, BASE).count("<div>") == MAX_HTML_DEPTH
    sloppy = "<p>para" * 2000 + "<br><img src=a.png>" * 500
    assert sanitize_html(sloppy, BASE).count("<p>") == 2000


def test_sanitize_drops_the_content_of_code_and_chrome_elements() -> None:
    html = "<p>a</p><script>var x</script><style>p{}</style><iframe>frame text</iframe><svg><text>s</text></svg>b"
    assert sanitize_html(html, BASE) == "<p>a</p>b"


# --- text --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sanitized", "text"),
    [
        ("<p>One</p><p>Two</p>", "One Two"),
        ("w<b>or</b>d", "word"),
        ("a<br>b", "a b"),
        ('<img src="x" alt="a > b">after', "after"),
        ("&lt;b&gt; &amp;amp; &eacute;&nbsp;x", "<b> &amp; é x"),
        ("<ul><li>one</li><li>two</li></ul>", "one two"),
        ("  spaced \n\t out  ", "spaced out"),
    ],
)
def test_html_to_text(sanitized: str, text: str) -> None:
    assert html_to_text(sanitized) == text
    # The same words with each block on a line of its own: a newline where blocks meet.
    lines = html_to_lines(sanitized)
    assert " ".join(lines.split()) == text and lines.count("\n") <= sanitized.count("<")


@pytest.mark.parametrize(
    ("sanitized", "lines"),
    [
        ("<p>One</p><p>Two</p>", "One\nTwo"),
        ("a<br>b", "a\nb"),
        ("<ul><li>one</li><li>two</li></ul>", "one\ntwo"),
        ("<p>Wrapped\nin the source</p><p> </p><div><p>Next</p></div>", "Wrapped in the source\nNext"),
        ("<p>A &amp;\nB</p>", "A & B"),
        ("No markup\nat all", "No markup at all"),
    ],
)
def test_html_to_lines_puts_each_block_on_its_own_line(sanitized: str, lines: str) -> None:
    assert html_to_lines(sanitized) == lines


def test_html_to_text_agrees_with_plain_text_on_sanitized_html() -> None:
    html = sanitize_html(
        "<h1>Head</h1><p>Para <a href='/x'>link</a> &amp; <em>more</em></p><ul><li>i</li></ul><script>no</script>",
        BASE,
    )
    assert html_to_text(html) == plain_text(html) == "Head Para link & more i"


def test_plain_text_skips_scripts_in_raw_html() -> None:
    assert plain_text("<b>Bold</b> <script>alert(1)</script>claim &amp; more") == "Bold claim & more"


# --- entries -----------------------------------------------------------------------------------------
def _entry(**fields: object) -> RawEntry:
    defaults: dict[str, object] = {
        "id": None, "link": None, "title": None, "title_is_html": False, "summary": None, "content": None,
        "published": None, "updated": None, "author": None, "categories": (), "enclosures": (), "language": None,
    }  # fmt: skip
    return RawEntry(**{**defaults, **fields})  # type: ignore[arg-type]


def test_identity_prefers_the_guid_then_the_canonical_link_then_a_hash() -> None:
    with_id = normalize_entry(_entry(id="g1", link="https://example.com/a?utm_source=x"), BASE, FETCHED_AT)
    assert with_id.key == "id:g1"
    by_link = normalize_entry(_entry(link="https://example.com/a?utm_source=x", title="t"), BASE, FETCHED_AT)
    assert by_link.key == "url:https://example.com/a"
    by_hash = normalize_entry(_entry(title="t", summary="<p>body</p>"), BASE, FETCHED_AT)
    again = normalize_entry(_entry(title="t", summary="<p>body</p>"), BASE, FETCHED_AT)
    other = normalize_entry(_entry(title="t", summary="<p>other body</p>"), BASE, FETCHED_AT)
    assert by_hash.key.startswith("hash:") and by_hash.key == again.key != other.key


def test_the_fingerprint_moves_with_content_and_not_with_tracking_in_nothing_else() -> None:
    one = normalize_entry(_entry(id="g", title="t", summary="<p>a</p>", updated=FETCHED_AT), BASE, FETCHED_AT)
    later = normalize_entry(
        _entry(id="g", title="t", summary="<p>a</p>", updated=FETCHED_AT - timedelta(days=1)), BASE, FETCHED_AT
    )
    edited = normalize_entry(_entry(id="g", title="t", summary="<p>b</p>"), BASE, FETCHED_AT)
    retitled = normalize_entry(_entry(id="g", title="t2", summary="<p>a</p>"), BASE, FETCHED_AT)
    assert one.fingerprint == later.fingerprint
    assert len({one.fingerprint, edited.fingerprint, retitled.fingerprint}) == 3


def test_only_http_links_and_enclosures_are_kept() -> None:
    item = normalize_entry(
        _entry(
            id="g",
            link="javascript:alert(1)",
            enclosures=(
                ("data:audio/mpeg;base64,AA", "audio/mpeg", 2),
                ("ep.mp3", "audio/mpeg", 3),
                ("http://[x", None, None),
            ),
        ),
        BASE,
        FETCHED_AT,
    )
    assert item.link is None and item.canonical_url is None
    assert [(e.url, e.length) for e in item.enclosures] == [("https://example.com/news/ep.mp3", 3)]


def test_dates_are_utc_and_never_in_the_future() -> None:
    future = FETCHED_AT + timedelta(days=400)
    item = normalize_entry(_entry(id="g", published=future, updated=future), BASE, FETCHED_AT)
    assert item.published_at == item.updated_at == FETCHED_AT
    past = FETCHED_AT - timedelta(hours=3)
    assert clamp(past, FETCHED_AT) == past
    assert clamp(None, FETCHED_AT) is None


@pytest.mark.parametrize("zero", [datetime.min.replace(tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)])
def test_a_date_from_before_the_web_is_no_date(zero: datetime) -> None:
    """An unset clock or a zero timestamp: the item is undated and placed by the document, and
    one dated at the very start of the calendar no longer fails its source (story matching
    reckons days back from each item's date)."""
    item = normalize_entry(_entry(id="g", published=zero, updated=zero), BASE, FETCHED_AT)
    assert item.published_at is None and item.updated_at is None
    assert clamp(EARLIEST_DATE, FETCHED_AT) == EARLIEST_DATE


def test_categories_authors_and_titles_are_clean_text() -> None:
    item = normalize_entry(
        _entry(
            id="g",
            title="  <b>Bold</b>\n title ",
            title_is_html=True,
            author="<a href='x'>Jane</a> Doe",
            categories=("World", " world ", "World", "  ", "Europe\n Union"),
        ),
        BASE,
        FETCHED_AT,
    )
    assert (item.title, item.author, item.categories) == ("Bold title", "Jane Doe", ("World", "world", "Europe Union"))


def test_text_is_stored_composed_so_that_both_unicode_forms_of_an_entry_are_one_item() -> None:
    """An entry written on a Mac may come decomposed (NFD: "e" and a combining accent): it looks
    the same but is other code points, so it was stored beside its composed twin, and escaped
    keyword rules and story matching's names. Identifiers are left as they came: a guid or a
    link is matched byte for byte, and changing it would store an item again under a new key."""
    fields = {
        "title": "Café in São Paulo",
        "summary": "<p>Señor Müller’s crème brûlée</p>",
        "content": "<p>Ελλάδα: Ἀθῆναι, Hà Nội, が</p>",
        "author": "José Núñez",
    }

    def entry(form: Literal["NFC", "NFD"], **more: object) -> RawEntry:
        text = {name: unicodedata.normalize(form, value) for name, value in fields.items()}
        return _entry(**text, categories=(unicodedata.normalize(form, "Política"),), **more)

    composed = normalize_entry(entry("NFC"), BASE, FETCHED_AT)
    decomposed = normalize_entry(entry("NFD"), BASE, FETCHED_AT)
    assert composed.key.startswith("hash:")
    assert decomposed == composed
    assert (decomposed.title, decomposed.author, decomposed.categories) == (
        "Café in São Paulo",
        "José Núñez",
        ("Política",),
    )
    feed = normalize_feed(replace(_feed(), title=unicodedata.normalize("NFD", "Noticias de España")), BASE, FETCHED_AT)
    assert feed.title == "Noticias de España"

    guid, link = unicodedata.normalize("NFD", "tag:café,2026:1"), unicodedata.normalize("NFD", "https://café.example/é")
    by_guid = normalize_entry(entry("NFD", id=guid, link=link), BASE, FETCHED_AT)
    by_link = normalize_entry(entry("NFD", link=link), BASE, FETCHED_AT)
    assert (by_guid.key, by_guid.guid, by_guid.link) == (f"id:{guid}", guid, link)
    assert by_link.key == "url:https://xn--caf-dma.example/" + unicodedata.normalize("NFD", "é")
    assert by_guid.title == "Café in São Paulo"


def _feed(*entries: RawEntry) -> RawFeed:
    """A document of these entries and nothing else."""
    return RawFeed(
        title=None,
        link=None,
        feed_id=None,
        language=None,
        ttl_minutes=None,
        update_period_minutes=None,
        entries=entries,
    )


def test_duplicate_guids_keep_their_first_key_and_get_distinct_ones() -> None:
    """The first item with a guid keeps the plain key it was stored under in earlier polls."""
    raw = _feed(
        _entry(id="same", link="https://example.com/a", title="A"),
        _entry(id="same", link="https://example.com/b", title="B"),
        _entry(id="same", link="https://example.com/a#again", title="A again"),
        _entry(id="same", title="C"),
        _entry(id="same", title="C", summary="different words"),
        _entry(id="same", title="D"),
    )
    keys = [i.key for i in normalize_feed(raw, BASE, FETCHED_AT).items]
    assert keys[:2] == ["id:same", "id:same|https://example.com/b"]
    assert len(keys) == 4 and len(set(keys)) == 4
    assert all(k.startswith("id:same|title:") for k in keys[2:])


def test_a_relative_guid_remembers_its_resolved_key_unless_another_entry_has_it() -> None:
    """Its resolved form is the key earlier releases stored it under (``Item.former_key``), and
    no former key of one entry can be another entry's key: that row is the other entry's."""
    site = "https://example.com/news/"
    raw = _feed(
        _entry(id="1", resolved_id=f"{site}1", title="A"),
        _entry(id=f"{site}1", title="B"),
        _entry(id="2", resolved_id=f"{site}2", title="C", summary="x" * 2000),
        _entry(id="3" * 1500, resolved_id=f"{site}{'3' * 1500}", title="D"),
        _entry(id=f"{site}5", resolved_id=f"{site}5", title="E"),  # resolved to itself: no other key
    )
    items = normalize_feed(raw, BASE, FETCHED_AT).items
    assert items[4].former_key is None
    assert [(i.key, i.guid) for i in items[:3]] == [("id:1", "1"), (f"id:{site}1", f"{site}1"), ("id:2", "2")]
    assert [i.former_key for i in items[:3]] == [None, None, f"id:{site}2"]
    # Past the index's limit both are kept as hashes, each of its own form.
    assert items[3].key.startswith("id-hash:") and (items[3].former_key or "").startswith("id-hash:")
    assert items[3].former_key != items[3].key


def test_a_link_several_entries_share_or_a_front_page_is_no_articles_url() -> None:
    """A podcast linking every episode to its site: no episode has an article URL (which would
    join them all into one story); an entry with its own article link keeps it."""
    raw = _feed(
        _entry(id="ep1", link="https://cast.example/show?utm_source=rss", title="Episode 1"),
        _entry(id="ep2", link="https://cast.example/show", title="Episode 2"),
        _entry(id="ep3", link="https://cast.example/episodes/3", title="Episode 3"),
        _entry(id="ep4", link="https://cast.example", title="Episode 4"),
        _entry(id="ep5", link="https://cast.example/?p=5", title="Episode 5"),
    )
    items = normalize_feed(raw, BASE, FETCHED_AT).items
    assert [i.canonical_url for i in items] == [
        None, None, "https://cast.example/episodes/3", None, "https://cast.example/?p=5"
    ]  # fmt: skip
    assert [i.link for i in items][:2] == ["https://cast.example/show?utm_source=rss", "https://cast.example/show"]


def test_entries_without_guids_sharing_a_link_keep_keys_of_their_own_wherever_they_stand() -> None:
    """A podcast with no guids linking every episode to its site, and a newsletter's issues on
    one page ("entries.php#111"): each entry stays an item of its own, under a key that does not
    move when a new entry comes first."""
    episodes = [
        _entry(link="https://pod.example.com/", title=f"Episode {n}", summary=f"<p>Show {n}</p>") for n in (3, 2, 1)
    ]
    newer = _entry(link="https://pod.example.com/", title="Episode 4", summary="<p>Show 4</p>")
    issues = [_entry(link=f"https://news.example.com/entries.php#{n}", title=f"Issue {n}") for n in (3, 2, 1)]
    first = normalize_feed(_feed(*episodes, *issues), BASE, FETCHED_AT).items
    later = normalize_feed(_feed(newer, *episodes, *issues), BASE, FETCHED_AT).items
    assert len({i.key for i in first}) == 6
    assert [i.key for i in later[1:]] == [i.key for i in first]
    assert [i.key for i in first[3:]] == [f"url:https://news.example.com/entries.php#{n}" for n in (3, 2, 1)]
    alone = normalize_feed(_feed(_entry(link="https://example.com/a", title="A")), BASE, FETCHED_AT).items
    assert alone[0].key == "url:https://example.com/a"  # an article's own link stays its key
    # One entry the document lists twice is one entry: its key and URL do not move with that.
    twice = normalize_feed(_feed(*[_entry(link="https://example.com/a", title="A")] * 2), BASE, FETCHED_AT).items
    assert [(i.key, i.canonical_url) for i in twice] == [("url:https://example.com/a", "https://example.com/a")]


@pytest.mark.parametrize("base", ["javascript:alert(1)//", "data:text/html,x/", "vbscript:x/"])
def test_a_hostile_base_url_cannot_turn_relative_urls_into_scripts(base: str) -> None:
    html = sanitize_html('<a href="x">a</a><img src="/i.png" alt="i">', base)
    assert find_escapes(html) == [] and "script" not in html and "data:" not in html


@pytest.mark.parametrize("base", ["file://attacker.example/share/", "smb://attacker.example/s/", "feed://a.example/x/"])
def test_an_xml_base_in_another_scheme_does_not_carry_relative_urls_into_it(base: str) -> None:
    # nh3 checks the scheme before it resolves against the base: a file: or smb: image would
    # reach every subscriber's reader (found by the security audit, session 47).
    fragment = '<img src="p.png" alt="p"><a href="r.pdf">r</a><a href="//cdn.example/z">z</a>'
    alone = sanitize_html(fragment, base)
    assert not re.search(r'(?:src|href)="(?!https?:|//|[a-z./])', alone) and "attacker" not in alone
    entry = normalize_entry(_entry(id="1", title="t", summary=fragment, summary_base=base), BASE, FETCHED_AT)
    assert 'src="https://example.com/news/p.png"' in entry.summary_html  # against the feed's URL instead
    assert 'href="https://cdn.example/z"' in entry.summary_html
    assert "attacker" not in entry.summary_html and "file:" not in entry.summary_html


def test_whitespace_collapses_exactly_as_the_regex_would() -> None:
    # collapse replaced re.sub(r"\s+", " ", text).strip() for speed; stored texts and story
    # signatures depend on it giving the same result for every kind of whitespace.
    import sys

    from aggregator.plaintext import collapse

    space = re.compile(r"\s")
    odd = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace() or space.match(c)]
    assert "\u00a0" in odd and "\u3000" in odd and "\x1c" in odd
    for c in odd:
        for text in (f"a{c}b", f"{c}a{c}{c}b{c}", c):
            assert collapse(text) == re.sub(r"\s+", " ", text).strip(), hex(ord(c))


# --- undated items: placed by their position in the document, never given a date -------------------
def _doc(*hours: float | None) -> bytes:
    """An RSS document whose items are dated ``hours`` before FETCHED (None: no date), in order."""
    from email.utils import format_datetime

    items = "".join(
        f"<item><title>Item {n}</title><link>https://n.example/{n}</link>"
        + ("" if h is None else f"<pubDate>{format_datetime(FETCHED - timedelta(hours=h))}</pubDate>")
        + "</item>"
        for n, h in enumerate(hours)
    )
    return f"<rss version='2.0'><channel><title>t</title>{items}</channel></rss>".encode()


FETCHED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _placed(*hours: float | None) -> list[datetime]:
    from aggregator.parseworker import document_to_feed

    items = document_to_feed(_doc(*hours), "https://n.example/feed", None, FETCHED).items
    assert [item.published_at is None for item in items] == [h is None for h in hours]  # no invented dates
    return [item.published_at or item.placed_at for item in items]  # type: ignore[misc]


def test_a_feed_without_dates_keeps_its_order_from_first_seen_down() -> None:
    placed = _placed(None, None, None, None)
    assert placed == sorted(placed, reverse=True)  # the document's first item is its newest
    assert placed[0] <= FETCHED and len(set(placed)) == 4


def test_an_undated_item_sits_between_its_dated_neighbours() -> None:
    placed = _placed(2, None, None, 5, None)
    assert placed[0] > placed[1] > placed[2] > placed[3] > placed[4]
    assert FETCHED - timedelta(hours=5) < placed[2] and placed[1] < FETCHED - timedelta(hours=2)


def test_undated_items_above_the_newest_dated_one_sit_just_above_it_not_at_first_seen() -> None:
    placed = _placed(None, None, 3)
    assert placed[0] > placed[1] > placed[2] == FETCHED - timedelta(hours=3)
    assert placed[0] - placed[2] < timedelta(minutes=1)  # not "now": older news is not news


def test_an_oldest_first_document_is_read_in_its_own_direction() -> None:
    placed = _placed(5, None, 2, None)  # ascending dates: the last item is the newest
    assert placed[3] > placed[2] > placed[1] > placed[0]


def test_an_unspaced_text_is_cut_between_characters_as_readers_see_them() -> None:
    """An untitled Thai item takes its title from its text, which has no space to cut at: the cut
    falls before the consonant whose vowel and tone marks follow it, not between them. A title
    past ``MAX_TITLE_CHARS`` is not cut inside a family emoji made of three joined ones."""
    from aggregator.normalize import MAX_TITLE_CHARS, _first_words

    thai = "ก" * 79 + "ที่นี่"
    assert _first_words(thai) == "ก" * 79 + "…"
    family = "a" * (MAX_TITLE_CHARS - 1) + "👨\u200d👩\u200d👧"
    assert _first_words(family, MAX_TITLE_CHARS) == "a" * (MAX_TITLE_CHARS - 1) + "…"
    flagged = "b" * (MAX_TITLE_CHARS - 1) + "👍🏽 and more"
    assert _first_words(flagged, MAX_TITLE_CHARS) == "b" * (MAX_TITLE_CHARS - 1) + "…"
    assert _first_words("Two words and then some more", 12) == "Two words…"  # at a space, as before
