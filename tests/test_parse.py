"""Parsing real-world bodies: data files beside their expected outcome, and hostile documents.

Every ``tests/data/ingest/NAME.<ext>`` is parsed and normalized exactly as the parse pool does
(``document_to_feed``) and compared with ``NAME.expected.json``: ``about`` says why the case
exists, ``url`` / ``content_type`` are what the HTTP response said (defaults below), and either
``error`` is the exact one-line ``ParseError`` reason, or ``feed`` and ``items`` list the fields
that must match — every field named is compared, and the number of items must be equal.

The hostile documents (bombs, a million entries, deep nesting) are generated here rather than
stored: they are defined by their size.
"""

from __future__ import annotations

import gzip
import json
import resource
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest

from aggregator.errors import ParseError
from aggregator.parse import MAX_ENTRIES, MAX_GUNZIP_BYTES, check_bounds, parse_document
from aggregator.parseworker import START_METHOD, document_to_feed, init_parse_worker
from aggregator.records import Item

DATA = Path(__file__).parent / "data" / "ingest"
FETCHED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DEFAULT_URL = "https://example.com/feed.xml"
SOURCES = sorted(p for p in DATA.iterdir() if ".expected." not in p.name)


def item_as_json(item: Item) -> dict[str, Any]:
    """An Item in the vocabulary of the expected files (ISO dates, lists, enclosures as triples)."""
    return {
        "key": item.key,
        "guid": item.guid,
        "link": item.link,
        "canonical_url": item.canonical_url,
        "title": item.title,
        "summary_html": item.summary_html,
        "content_html": item.content_html,
        "text": item.text,
        "author": item.author,
        "categories": list(item.categories),
        "published_at": item.published_at.isoformat() if item.published_at else None,
        "updated_at": item.updated_at.isoformat() if item.updated_at else None,
        "language": item.language,
        "enclosures": [[e.url, e.type, e.length] for e in item.enclosures],
    }


def test_every_data_file_has_an_expected_outcome_and_back() -> None:
    expected = {p.name.removesuffix(".expected.json") for p in DATA.glob("*.expected.json")}
    sources = {p.name.rsplit(".", 1)[0] for p in SOURCES}
    assert sources == expected
    assert len(SOURCES) == len(sources), "two data files share a stem"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_document_gives_the_expected_outcome(source: Path) -> None:
    expected = json.loads(source.with_name(source.name.rsplit(".", 1)[0] + ".expected.json").read_text())
    body = source.read_bytes()
    url, content_type = expected.get("url", DEFAULT_URL), expected.get("content_type")
    if "error" in expected:
        with pytest.raises(ParseError) as caught:
            document_to_feed(body, url, content_type, FETCHED_AT)
        assert str(caught.value) == expected["error"]
        return
    feed = document_to_feed(body, url, content_type, FETCHED_AT)
    assert {k: getattr(feed, k) for k in expected["feed"]} == expected["feed"]
    got = [item_as_json(item) for item in feed.items]
    assert len(got) == len(expected["items"]), [g["key"] for g in got]
    for have, want in zip(got, expected["items"], strict=True):
        assert {k: have[k] for k in want} == want


def test_rejection_reasons_are_one_short_line() -> None:
    bodies = [b"", b"garbage", b"<html><body>hi</body></html>", b"{", b"[1]", b"<?xml version='1.0'?><a/>"]
    bodies.append(b'{"version": "https://jsonfeed.org/version/1.1", "items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    for body in bodies:
        with pytest.raises(ParseError) as caught:
            document_to_feed(body, DEFAULT_URL, None, FETCHED_AT)
        reason = str(caught.value)
        assert reason and "\n" not in reason and len(reason) <= 200, reason


def test_a_body_that_names_a_local_file_is_not_read(tmp_path: Path) -> None:
    """feedparser.parse(bytes) tries open() first: a body '/var/lib/…/private.xml' would be read."""
    secret = tmp_path / "secret.xml"
    secret.write_text(
        "<rss version='2.0'><channel><title>local file</title><item><title>x</title></item></channel></rss>"
    )
    with pytest.raises(ParseError):
        document_to_feed(str(secret).encode(), DEFAULT_URL, "application/rss+xml", FETCHED_AT)


def test_json_feed_is_recognised_by_its_body_whatever_the_content_type() -> None:
    body = b'\xef\xbb\xbf {"version": "https://jsonfeed.org/version/1", "items": [{"id": "1", "title": "t"}]}'
    for content_type in (None, "text/plain", "application/xml", "application/octet-stream"):
        assert [i.key for i in document_to_feed(body, DEFAULT_URL, content_type, FETCHED_AT).items] == ["id:1"]
    rss = b"<rss version='2.0'><channel><title>x</title><item><guid>g</guid></item></channel></rss>"
    assert len(document_to_feed(rss, DEFAULT_URL, "application/json", FETCHED_AT).items) == 1


# --- pathological documents -----------------------------------------------------------------------
def _rss(items: str, head: str = "") -> bytes:
    return f"<?xml version='1.0'?>{head}<rss version='2.0'><channel><title>t</title>{items}</channel></rss>".encode()


def test_a_million_entries_are_refused_before_parsing() -> None:
    body = _rss("<item/>" * 1_000_000)
    with pytest.raises(ParseError, match=f"more than {MAX_ENTRIES} entries"):
        check_bounds(body)
    with pytest.raises(ParseError, match="entries"):
        document_to_feed(body, DEFAULT_URL, None, FETCHED_AT)
    items = ",".join(f'{{"id": "{n}"}}' for n in range(MAX_ENTRIES + 1))
    json_body = f'{{"version": "https://jsonfeed.org/version/1.1", "items": [{items}]}}'.encode()
    with pytest.raises(ParseError, match="entries"):
        document_to_feed(json_body, DEFAULT_URL, None, FETCHED_AT)


def test_the_entry_cap_is_not_hit_by_a_big_ordinary_feed() -> None:
    body = _rss("".join(f"<item><guid>{n}</guid></item>" for n in range(MAX_ENTRIES)))
    assert len(document_to_feed(body, DEFAULT_URL, None, FETCHED_AT).items) == MAX_ENTRIES


@pytest.mark.parametrize("codec", ["utf-8", "utf-16", "utf-32"])
def test_a_quadratic_entity_expansion_is_refused_in_any_encoding(codec: str) -> None:
    """A 100 KB body that feedparser's loose parser would expand to 1 GB."""
    head = f'<!DOCTYPE rss [<!ENTITY a "{"x" * 100_000}">]>'
    text = _rss("<item><title>x</title><description>" + "&a;" * 10_000 + "</description></item>", head).decode()
    body = text.replace("<?xml version='1.0'?>", f"<?xml version='1.0' encoding='{codec}'?>").encode(codec)
    with pytest.raises(ParseError, match="entities would expand"):
        document_to_feed(body, DEFAULT_URL, None, FETCHED_AT)


def test_deeply_nested_html_becomes_text_instead_of_a_quadratic_sanitize() -> None:
    """100,000 nested <div>s would keep nh3 (native code, no signal can stop it) busy for minutes."""
    depth = 100_000
    html = "&lt;div&gt;" * depth + "deep" + "&lt;/div&gt;" * depth
    feed = document_to_feed(
        _rss(f"<item><guid>deep</guid><description>{html}</description></item>"), DEFAULT_URL, None, FETCHED_AT
    )
    assert feed.items[0].summary_html == "<p>deep</p>"


OK_FEED = _rss("<item><guid isPermaLink='false'>ok</guid></item>")


def _deep_xml(depth: int) -> bytes:
    return _rss("<item><guid>deep</guid>" + "<x>" * depth + "</x>" * depth + "</item>")


def test_a_worker_gives_each_document_a_cpu_budget_and_survives_it() -> None:
    """Deep XML nesting is not refused up front (nothing cheap can measure it): the budget stops it.

    The pool is what the pipeline uses (its start method, init_parse_worker as initializer), with a
    budget small enough to keep the test short. The same worker then parses a normal feed:
    the timer and the signal handler were put back.
    """
    with ProcessPoolExecutor(
        1, mp_context=get_context(START_METHOD), initializer=init_parse_worker, initargs=(0.5, None)
    ) as pool:
        slow = pool.submit(document_to_feed, _deep_xml(1_000_000), DEFAULT_URL, None, FETCHED_AT)
        with pytest.raises(ParseError, match=r"gave up after 0\.5 s of CPU"):
            slow.result()
        fine = pool.submit(document_to_feed, OK_FEED, DEFAULT_URL, None, FETCHED_AT)
        assert [i.key for i in fine.result().items] == ["id:ok"]


def _address_space_in_use() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def test_a_worker_turns_running_out_of_memory_into_a_parse_error() -> None:
    """RLIMIT_AS set by the initializer: the allocation fails, the document fails, the worker lives."""
    with ProcessPoolExecutor(1, mp_context=get_context(START_METHOD)) as probe:
        baseline = probe.submit(_address_space_in_use).result()
    limit = baseline + (96 << 20)
    items = "".join(f"<item><guid>{n}</guid><description>{'word ' * 1000}</description></item>" for n in range(9000))
    big = _rss(items)  # 45 MB of text: feedparser alone holds several copies
    with ProcessPoolExecutor(
        1, mp_context=get_context(START_METHOD), initializer=init_parse_worker, initargs=(None, limit)
    ) as pool:
        with pytest.raises(ParseError, match="memory"):
            pool.submit(document_to_feed, big, DEFAULT_URL, None, FETCHED_AT).result()
        fine = pool.submit(document_to_feed, OK_FEED, DEFAULT_URL, None, FETCHED_AT)
        assert [i.key for i in fine.result().items] == ["id:ok"]


def test_parse_document_keeps_the_xml_base_of_each_html_part() -> None:
    raw = parse_document((DATA / "relative-xml-base.xml").read_bytes(), DEFAULT_URL, "application/atom+xml")
    entry = raw.entries[0]
    assert entry.summary_base == "https://blog.example.org/journal/2026/11/"
    assert entry.content_base == "https://static.example.net/posts/1/"
    assert 'src="figure.png"' in (entry.content or "")  # resolved later, by the sanitizer


def test_a_gzip_bomb_in_the_body_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"<rss version='2.0'><channel>" + b" " * (MAX_GUNZIP_BYTES + 1024), mtime=0)
    assert len(bomb) < 100_000
    with pytest.raises(ParseError, match="gzip body expands past"):
        document_to_feed(bomb, DEFAULT_URL, None, FETCHED_AT)
    with pytest.raises(ParseError, match="corrupt gzip body"):
        document_to_feed(bomb[:50], DEFAULT_URL, None, FETCHED_AT)


def test_feedparser_url_joins_are_memoized_and_still_honour_xml_base() -> None:
    import feedparser.mixin

    # The names aggregator.parse wraps: if a feedparser release renames them, this fails
    # instead of the cache silently no longer applying.
    for name in ("make_safe_absolute_uri", "_urljoin"):
        assert hasattr(getattr(feedparser.mixin, name), "cache_info"), name
    doc = (
        b'<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://a.example/news/">'
        b"<title>t</title><id>urn:f</id>"
        b'<entry xml:base="sub/"><id>urn:1</id><title>one</title><link href="one.html"/></entry>'
        b'<entry><id>urn:2</id><title>two</title><link href="two.html"/></entry>'
        b"</feed>"
    )
    for _ in range(2):  # the second parse is served from the cache: same answers
        links = [e.link for e in parse_document(doc, "https://elsewhere.example/feed").entries]
        assert links == ["https://a.example/news/sub/one.html", "https://a.example/news/two.html"]


def test_thumbnails_come_from_media_thumbnail_else_an_image_media_content_else_json_image() -> None:
    from aggregator.parse import parse_document

    media = "xmlns:media='http://search.yahoo.com/mrss/'"
    rss = (
        f"<rss version='2.0' {media}><channel><title>t</title>"
        "<item><title>a</title><media:thumbnail url='https://i.example/a-thumb.jpg'/>"
        "<media:content url='https://i.example/a-big.jpg' type='image/jpeg'/></item>"
        "<item><title>b</title><media:content url='https://i.example/b.mp4' type='video/mp4'/>"
        "<media:content url='https://i.example/b.jpg?w=140' width='140'/></item>"
        "<item><title>c</title><media:content url='https://i.example/c.mp3' medium='audio'/></item>"
        "</channel></rss>"
    ).encode()
    entries = parse_document(rss, "https://i.example/feed", None).entries
    assert [e.thumbnail for e in entries] == ["https://i.example/a-thumb.jpg", "https://i.example/b.jpg?w=140", None]
    json_feed = (
        b'{"version": "https://jsonfeed.org/version/1.1", "items": [{"id": "1", "image": "https://i.example/j.png"}]}'
    )
    assert parse_document(json_feed, "https://i.example/feed.json", None).entries[0].thumbnail == (
        "https://i.example/j.png"
    )


@pytest.mark.parametrize("content_type", ["application/xml; charset=iso-8859-1", "text/html"])
@pytest.mark.parametrize("codec", ["utf-16", "utf-8-sig"])
def test_a_byte_order_mark_outranks_a_wrong_http_charset(codec: str, content_type: str) -> None:
    # Found by tests/test_ingest_properties.py: a UTF-16 feed served as "charset=utf-8" was refused.
    prolog = "<?xml version='1.0' encoding='utf-16'?>" if codec == "utf-16" else "<?xml version='1.0'?>"
    body = (
        f"{prolog}<rss version='2.0'><channel><title>Café</title>"
        "<item><guid>1</guid><title>Crème brûlée</title></item></channel></rss>"
    ).encode(codec)
    feed = parse_document(body, "https://example.com/feed", content_type)
    assert (feed.title, [e.title for e in feed.entries], feed.warning) == ("Café", ["Crème brûlée"], None)


def test_a_media_description_is_the_text_only_of_an_entry_without_one() -> None:
    """A photo's caption (Media RSS ``media:description``) before or after the item's own
    description is not the item's text; a video's description, in an entry with no other, is."""
    from feedparser.namespaces import mediarss

    # The handlers aggregator.parse replaces: renamed in a feedparser release, this fails.
    for handler in ("_start_media_description", "_end_media_description"):
        assert getattr(mediarss.Namespace, handler).__module__ == "aggregator.parse", handler
    media = "xmlns:media='http://search.yahoo.com/mrss/'"
    doc = (
        f"<rss version='2.0' {media}><channel><title>t</title>"
        "<item><title>after</title><description>The &lt;b&gt;lead&lt;/b&gt;.</description>"
        "<media:content url='https://i.example/a.jpg' medium='image'>"
        "<media:description>Supporters rallied</media:description></media:content></item>"
        "<item><media:content url='https://i.example/b.jpg'><media:title>Photo</media:title>"
        "<media:description>Caption first</media:description></media:content>"
        "<title>before</title><description>Lead before</description></item>"
        "<item><title>video</title><media:group><media:description>Clip &lt; 2 min</media:description>"
        "</media:group></item>"
        "<item><title>html</title><media:group><media:description type='html'>&lt;p&gt;Clip&lt;/p&gt;"
        "</media:description></media:group></item>"
        "</channel></rss>"
    ).encode()
    entries = parse_document(doc, DEFAULT_URL, None).entries
    assert [(e.title, e.summary, e.content) for e in entries] == [
        ("after", "The <b>lead</b>.", None),
        ("before", "Lead before", None),
        ("video", "Clip &lt; 2 min", None),
        ("html", "<p>Clip</p>", None),
    ]


def test_a_relative_guid_is_kept_as_written_and_the_link_it_stands_for_resolved() -> None:
    """An id names an item, wherever its feed is fetched from; the link it stands for is a place."""
    from feedparser.namespaces import _base

    # The handlers aggregator.parse replaces: renamed in a feedparser release, this fails.
    for handler in ("_end_guid", "_end_id"):
        assert getattr(_base.Namespace, handler).__module__ == "aggregator.parse", handler
    rss = (
        "<rss version='2.0'><channel><title>t</title>"
        "<item><title>a</title><guid>12345</guid></item>"
        "<item><title>b</title><guid>/news/b</guid><link>https://other.example/b</link></item>"
        "<item><title>c</title><guid isPermaLink='false'>c-1</guid></item>"
        "<item><title>d</title><guid>https://news.example/d</guid></item>"
        "</channel></rss>"
    )
    feed = parse_document(rss.encode(), "http://news.example/feeds/rss")
    assert [(e.id, e.link, e.resolved_id) for e in feed.entries] == [
        ("12345", "http://news.example/feeds/12345", "http://news.example/feeds/12345"),
        ("/news/b", "https://other.example/b", "http://news.example/news/b"),
        ("c-1", None, None),
        ("https://news.example/d", "https://news.example/d", None),
    ]
    atom = (
        "<feed xmlns='http://www.w3.org/2005/Atom' xml:base='https://base.example/dir/'><title>t</title>"
        "<id>feed-1</id><entry><id>Safetynet</id><title>s</title></entry>"
        "<entry><id>tag:news.example,2026:7</id><title>u</title></entry></feed>"
    )
    feed = parse_document(atom.encode(), "http://news.example/atom")
    # The feed's own id is published (atom:source) and stays resolved, as feedparser gives it.
    assert feed.feed_id == "https://base.example/dir/feed-1"
    assert [(e.id, e.link, e.resolved_id) for e in feed.entries] == [
        ("Safetynet", "https://base.example/dir/Safetynet", "https://base.example/dir/Safetynet"),
        ("tag:news.example,2026:7", "tag:news.example,2026:7", None),
    ]
