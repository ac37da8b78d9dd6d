"""Bytes → ``RawFeed``: feedparser for RSS/Atom/RDF, our own mapping for JSON Feed.

This stage only extracts; it decides nothing about identity, dates or HTML
safety (that is ``normalize``). It is a pure function of its inputs, so it can run
in a worker process: the result is made of plain dataclasses that pickle cheaply,
never feedparser's dicts.
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import feedparser

from aggregator.errors import ParseError

JSON_FEED_TYPES = ("application/feed+json", "application/json")


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


def parse_document(body: bytes, url: str, content_type: str | None = None) -> RawFeed:
    """Parse one fetched body. Raises ``ParseError`` when it is not a feed at all."""
    if _looks_like_json(body, content_type):
        return _parse_json_feed(body, url)
    headers = {"content-location": url}
    if content_type:
        # feedparser uses the HTTP charset to decode; without it, it sniffs the XML prolog.
        headers["content-type"] = content_type
    try:
        parsed = feedparser.parse(body, response_headers=headers, sanitize_html=False)
    except Exception as exc:  # feedparser raises rarely, but anything from a hostile body stays here
        raise ParseError(f"unreadable feed: {type(exc).__name__}: {exc}") from None
    feed = parsed.get("feed", {})
    entries = parsed.get("entries", [])
    warning = None
    if parsed.get("bozo"):
        problem = parsed.get("bozo_exception")
        warning = f"{type(problem).__name__}: {problem}" if problem else "malformed document"
        if not entries and not feed.get("title") and parsed.get("version", "") == "":
            raise ParseError(f"not a feed ({warning})")
    if not parsed.get("version") and not entries and not feed:
        raise ParseError("not an RSS, Atom, RDF or JSON feed")
    language = feed.get("language")
    return RawFeed(
        title=_text(feed.get("title")),
        link=_text(feed.get("link")),
        feed_id=_text(feed.get("id")),
        language=_text(language),
        ttl_minutes=_int(feed.get("ttl")),
        update_period_minutes=_update_period(feed),
        entries=tuple(_entry(e, language) for e in entries),
        warning=warning,
    )


def _entry(e: Any, feed_language: str | None) -> RawEntry:
    content = None
    for part in e.get("content") or ():
        # Prefer the HTML rendering when a feed offers several (Atom allows text + html).
        if content is None or "html" in (part.get("type") or ""):
            content = part.get("value")
    title_detail = e.get("title_detail") or {}
    enclosures = []
    for enc in e.get("enclosures") or ():
        if href := enc.get("href"):
            enclosures.append((str(href), _text(enc.get("type")), _int(enc.get("length"))))
    return RawEntry(
        id=_text(e.get("id")),
        link=_text(e.get("link")),
        title=_text(e.get("title")),
        title_is_html="html" in (title_detail.get("type") or ""),
        summary=_text(e.get("summary")),
        content=_text(content),
        published=_struct_time(e.get("published_parsed")),
        updated=_struct_time(e.get("updated_parsed")),
        author=_text(e.get("author")),
        categories=tuple(t for t in (_text(tag.get("term")) for tag in e.get("tags") or ()) if t),
        enclosures=tuple(enclosures),
        language=_text((e.get("content") or [{}])[0].get("language")) or _text(feed_language),
    )


def _looks_like_json(body: bytes, content_type: str | None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() in JSON_FEED_TYPES:
        return True
    return body.lstrip()[:1] == b"{"


def _parse_json_feed(body: bytes, url: str) -> RawFeed:
    """JSON Feed 1.0/1.1 (jsonfeed.org) mapped to the same shape feedparser gives us."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or not str(doc.get("version", "")).startswith("https://jsonfeed.org/version/"):
        raise ParseError("JSON document is not a JSON Feed (no jsonfeed.org version)")
    items = doc.get("items")
    if not isinstance(items, list):
        raise ParseError("JSON Feed has no items list")
    language = _text(doc.get("language"))
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        authors = item.get("authors") or ([item["author"]] if isinstance(item.get("author"), dict) else [])
        author = next((_text(a.get("name")) for a in authors if isinstance(a, dict) and a.get("name")), None)
        attachments: list[Any] = item["attachments"] if isinstance(item.get("attachments"), list) else []
        html = _text(item.get("content_html"))
        plain = _text(item.get("content_text"))
        entries.append(
            RawEntry(
                id=_text(item.get("id")),
                link=_text(item.get("url")) or _text(item.get("external_url")),
                title=_text(item.get("title")),
                title_is_html=False,
                summary=_text(item.get("summary")),
                content=html if html is not None else (_escape(plain) if plain is not None else None),
                published=_iso_date(item.get("date_published")),
                updated=_iso_date(item.get("date_modified")),
                author=author,
                categories=tuple(str(t) for t in item.get("tags") or () if isinstance(t, str | int)),
                enclosures=tuple(
                    (str(a["url"]), _text(a.get("mime_type")), _int(a.get("size_in_bytes")))
                    for a in attachments
                    if isinstance(a, dict) and a.get("url")
                ),
                language=_text(item.get("language")) or language,
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


def _escape(text: str) -> str:
    from html import escape

    return "<p>" + escape(text).replace("\n\n", "</p><p>") + "</p>"


def _text(value: Any) -> str | None:
    if value is None:
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
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_PERIOD_MINUTES = {"hourly": 60, "daily": 1440, "weekly": 10080, "monthly": 43200, "yearly": 525600}


def _update_period(feed: Any) -> int | None:
    """RSS ``sy:updatePeriod`` / ``sy:updateFrequency`` as minutes between updates."""
    period = _PERIOD_MINUTES.get(str(feed.get("sy_updateperiod", "")).strip().lower())
    if period is None:
        return None
    frequency = _int(feed.get("sy_updatefrequency")) or 1
    return max(1, period // max(1, frequency))
