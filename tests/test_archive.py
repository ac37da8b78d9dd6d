"""RFC 5005 archives: a reader walks prev-archive links back week by week and misses nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import feedparser
import httpx
from lxml import etree

from aggregator.archive import Week
from aggregator.cli import main
from aggregator.config import load_config
from aggregator.store.database import make_engine
from aggregator.store.repository import Store
from tests.conftest import serving, write_config
from tests.feedcheck import check_atom
from tests.server import FeedServer, Route

DATES = {
    "a": datetime(2026, 11, 20, 9, tzinfo=UTC),  # 2026-W47
    "b": datetime(2026, 11, 19, 9, tzinfo=UTC),  # 2026-W47
    "c": datetime(2026, 11, 12, 9, tzinfo=UTC),  # 2026-W46
    "d": datetime(2026, 11, 4, 9, tzinfo=UTC),  # 2026-W45
}


def feed() -> bytes:
    items = "".join(
        f"<item><title>Story {key}</title><link>https://n.example/{key}</link><guid>https://n.example/{key}</guid>"
        f"<description>Body {key}</description><pubDate>{format_datetime(when)}</pubDate></item>"
        for key, when in DATES.items()
    )
    return f"<rss version='2.0'><channel><title>N</title><link>https://n.example/</link><description>d</description>{items}</channel></rss>".encode()


def test_walking_back_the_archive_finds_every_week(server: FeedServer, tmp_path: Path) -> None:
    server.add("/f", Route(body=feed()))
    config_path = write_config(tmp_path, [{"name": "n", "url": server.url("/f")}])
    assert main(["--config", str(config_path), "poll", "--once"]) == 0
    config = load_config(config_path).config
    public = config.settings.public_url
    current = feedparser.parse((tmp_path / "data" / "feeds" / "world.atom").read_bytes())
    prev = [link.href for link in current.feed.links if link.rel == "prev-archive"]
    assert prev == [f"{public}/feeds/world/archive/2026-W46.atom"]  # the week before the newest entry

    engine = make_engine(config.settings.database_url)
    seen: dict[str, list[str]] = {}
    try:
        with serving(Store(engine), config) as base:
            url: str | None = f"{public}/feeds/world/archive/2026-W47.atom"
            while url:
                response = httpx.get(url.replace(public, base))
                assert response.status_code == 200, url
                assert check_atom(response.content) == []
                root = etree.fromstring(response.content)
                assert root.find("{http://purl.org/syndication/history/1.0}archive") is not None
                parsed = feedparser.parse(response.content)
                week = url.rsplit("/", 1)[1].removesuffix(".atom")
                seen[week] = sorted(e.title for e in parsed.entries)
                links = {link.rel: link.href for link in parsed.feed.links}
                assert links["current"] == f"{public}/feeds/world.atom"
                assert links["self"] == url
                again = httpx.get(url.replace(public, base), headers={"If-None-Match": response.headers["etag"]})
                assert again.status_code == 304
                url = links.get("prev-archive")
            assert httpx.get(f"{base}/feeds/world/archive/2999-W01.atom").status_code == 404
            assert httpx.get(f"{base}/feeds/world/archive/last-week.atom").status_code == 404
            assert httpx.get(f"{base}/feeds/nope/archive/2026-W46.atom").status_code == 404
    finally:
        engine.dispose()
    assert seen == {"2026-W47": ["Story a", "Story b"], "2026-W46": ["Story c"], "2026-W45": ["Story d"]}


def test_weeks() -> None:
    week = Week.of(datetime(2026, 1, 1, tzinfo=UTC))
    assert str(week) == "2026-W01" and week.start == datetime(2025, 12, 29, tzinfo=UTC)
    assert str(week.shift(-1)) == "2025-W52"
    assert Week.parse("2025-W53") is None and Week.parse("2026-W53") == Week(2026, 53)
