"""Generators for test feeds in the three XML dialects (and JSON Feed), with realistic items."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape

BASE_TIME = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def item_fields(feed: int, index: int, *, host: str = "news.example.com") -> dict[str, str | datetime]:
    return {
        "id": f"https://{host}/feed{feed}/story{index}",
        "link": f"https://{host}/feed{feed}/story{index}?utm_source=rss",
        "title": f"Feed {feed} story {index}: talks resume in Geneva",
        "summary": f"<p>Story {index} of feed {feed}. Negotiators met again on <b>Tuesday</b>.</p>",
        "date": BASE_TIME - timedelta(hours=index, minutes=feed % 60),
    }


def rss2(feed: int, count: int, *, title: str | None = None, start: int = 0, extra: str = "") -> bytes:
    items = []
    for i in range(start, start + count):
        f = item_fields(feed, i)
        items.append(
            f"<item><title>{escape(str(f['title']))}</title><link>{escape(str(f['link']))}</link>"
            f"<guid isPermaLink='true'>{escape(str(f['id']))}</guid>"
            f"<description>{escape(str(f['summary']))}</description>"
            f"<pubDate>{format_datetime(f['date'])}</pubDate></item>"  # type: ignore[arg-type]
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>{escape(title or f'RSS feed {feed}')}</title><link>https://news.example.com/feed{feed}</link>"
        f"<description>Test feed {feed}</description>{extra}{''.join(items)}</channel></rss>"
    ).encode()


def atom(feed: int, count: int, *, title: str | None = None, start: int = 0) -> bytes:
    entries = []
    for i in range(start, start + count):
        f = item_fields(feed, i)
        stamp = f["date"].isoformat()  # type: ignore[union-attr]
        entries.append(
            f"<entry><id>{escape(str(f['id']))}</id><title>{escape(str(f['title']))}</title>"
            f"<link href='{escape(str(f['link']))}'/><updated>{stamp}</updated>"
            f"<author><name>Reporter {i}</name></author>"
            f"<summary type='html'>{escape(str(f['summary']))}</summary></entry>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        f"<id>urn:test:feed{feed}</id><title>{escape(title or f'Atom feed {feed}')}</title>"
        f"<updated>{BASE_TIME.isoformat()}</updated><link href='https://news.example.com/feed{feed}'/>"
        f"{''.join(entries)}</feed>"
    ).encode()


def rss1(feed: int, count: int, *, title: str | None = None, start: int = 0) -> bytes:
    items, seq = [], []
    for i in range(start, start + count):
        f = item_fields(feed, i)
        about = escape(str(f["id"]))
        seq.append(f"<rdf:li rdf:resource='{about}'/>")
        items.append(
            f"<item rdf:about='{about}'><title>{escape(str(f['title']))}</title><link>{escape(str(f['link']))}</link>"
            f"<description>{escape(str(f['summary']))}</description>"
            f"<dc:date>{f['date'].isoformat()}</dc:date></item>"  # type: ignore[union-attr]
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#' xmlns='http://purl.org/rss/1.0/'"
        " xmlns:dc='http://purl.org/dc/elements/1.1/'>"
        f"<channel rdf:about='https://news.example.com/feed{feed}'><title>{escape(title or f'RDF feed {feed}')}</title>"
        f"<link>https://news.example.com/feed{feed}</link><description>Test</description>"
        f"<items><rdf:Seq>{''.join(seq)}</rdf:Seq></items></channel>{''.join(items)}</rdf:RDF>"
    ).encode()


def json_feed(feed: int, count: int, *, start: int = 0) -> bytes:
    items = []
    for i in range(start, start + count):
        f = item_fields(feed, i)
        items.append(
            {
                "id": f["id"],
                "url": f["link"],
                "title": f["title"],
                "content_html": f["summary"],
                "date_published": f["date"].isoformat(),  # type: ignore[union-attr]
            }
        )
    return json.dumps(
        {"version": "https://jsonfeed.org/version/1.1", "title": f"JSON feed {feed}", "items": items}
    ).encode()


DIALECTS = (rss2, atom, rss1)


def any_dialect(feed: int, count: int, *, title: str | None = None, start: int = 0) -> bytes:
    return DIALECTS[feed % 3](feed, count, title=title, start=start)
