"""The reader's way in: ``/`` lists every output, ``/opml`` subscribes to all, a story page shows
every outlet's item, and the pages hold up in a real Chromium at a phone's and a desktop's width."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser
import httpx
import pytest
from lxml import etree

from aggregator.cli import resolve_story
from aggregator.config import Config
from aggregator.pipeline import Pipeline, poll_once
from aggregator.store.repository import Store
from tests.browser import CHROMIUM, DESKTOP, PHONE, Browser, layout
from tests.conftest import polled_once, serving
from tests.server import FeedServer, Route

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)  # 2026-W48; W47 and W45 are archived
OUTPUTS = """
outputs:
  - slug: world
    title: World
    subtitle: The day's world news from every outlet
  - slug: science
    title: Science
    subtitle: Research and discoveries
    tags: [science]
"""
SHARED = "https://wire.example/2026/11/20/summitendswithoutadealaftertwodaysoftalks/~r/wire/~3/a1b2c3d4e5f6"


def rss(title: str, items: list[tuple[str, str, datetime]]) -> bytes:
    body = "".join(
        f"<item><title>{headline}</title><link>{link}</link><guid>{link}</guid>"
        f"<description>About {headline}.</description><pubDate>{format_datetime(when)}</pubDate></item>"
        for headline, link, when in items
    )
    return (
        f"<rss version='2.0'><channel><title>{title}</title><link>https://x.example/</link>"
        f"<description>d</description>{body}</channel></rss>"
    ).encode()


@pytest.fixture
def site(server: FeedServer, tmp_path: Path, database_url: str) -> Iterator[tuple[Config, Store]]:
    """Two outlets carrying one story (same article URL) and a failing source, polled at NOW."""
    server.add(
        "/herald",
        Route(
            body=rss(
                "The Herald — all the news that fits, and then some more of it",
                [
                    ("Summit ends without a deal", SHARED, datetime(2026, 11, 20, 8, tzinfo=UTC)),
                    (
                        "Rivers rise across the north",
                        "https://herald.example/rivers",
                        datetime(2026, 11, 4, tzinfo=UTC),
                    ),
                ],
            )
        ),
    )
    server.add(
        "/gazette",
        Route(body=rss("Gazette", [("Talks collapse at summit", SHARED, datetime(2026, 11, 20, 15, tzinfo=UTC))])),
    )
    server.add("/lab", Route(body=rss("Lab", [("A new comet", "https://lab.example/comet", NOW)])))
    sources: list[dict[str, object]] = [
        {"name": "Herald", "url": server.url("/herald")},
        {"name": "Gazette", "url": server.url("/gazette")},
        {"name": "Lab Notes", "url": server.url("/lab"), "tags": ["science"]},
        {"name": "Gone Daily", "url": server.url("/missing")},
    ]
    with polled(tmp_path, sources, database_url) as site:
        yield site


@contextmanager
def polled(tmp_path: Path, sources: list[dict[str, object]], database_url: str) -> Iterator[tuple[Config, Store]]:
    """A feeds.yaml of ``sources`` with the outputs above on the database, every source polled once at NOW."""
    with polled_once(tmp_path, sources, database_url, OUTPUTS, NOW) as site:
        yield site


def test_the_front_door_lists_every_output_with_its_formats_page_and_archives(site: tuple[Config, Store]) -> None:
    config, store = site
    public = config.settings.public_url
    with serving(store, config) as base:
        response = httpx.get(f"{base}/")
        assert response.status_code == 200 and "default-src 'none'" in response.headers["content-security-policy"]
        page = etree.HTML(response.content)
        hrefs = set(page.xpath("//a/@href"))
        for slug, text in (
            ("world", "The day's world news from every outlet"),
            ("science", "Research and discoveries"),
        ):
            section = page.xpath(f"//section[@id='{slug}']")[0]
            assert text in "".join(section.itertext())
            for fmt in ("atom", "rss", "json"):
                assert f"{public}/feeds/{slug}.{fmt}" in hrefs
            assert f"{public}/feeds/{slug}" in hrefs
        # World has archived weeks (W47 and W45), newest first, as pages and as Atom.
        world = page.xpath("//section[@id='world']//div[@class='archives']//a/@href")
        assert world[:2] == [f"{public}/feeds/world/archive/2026-W47", f"{public}/feeds/world/archive/2026-W47.atom"]
        assert f"{public}/feeds/world/archive/2026-W45" in world
        assert f"{public}/opml" in hrefs and f"{public}/status" in hrefs
        again = httpx.get(f"{base}/", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304

        opml = etree.fromstring(httpx.get(f"{base}/opml").content)
        outlines = {o.get("title"): o for o in opml.iter("outline")}
        assert outlines["World"].get("xmlUrl") == f"{public}/feeds/world.atom"
        assert outlines["Science"].get("htmlUrl") == f"{public}/feeds/science"
        assert outlines["Science"].get("description") == "Research and discoveries"

        moved = httpx.get(f"{base}/feeds/")
        assert moved.status_code == 308 and moved.headers["location"] == "/"

        html = etree.HTML(httpx.get(f"{base}/feeds/world").content)
        older = html.xpath("//nav[@id='older']//a/@href")
        assert older == [f"{public}/feeds/world/archive/2026-W47", f"{public}/feeds/world/archive/2026-W45"]


def test_a_story_page_lists_every_outlet_newest_first_and_the_feeds_link_it(site: tuple[Config, Store]) -> None:
    config, store = site
    public = config.settings.public_url
    story_id, _ = resolve_story(store, SHARED)
    story_url = f"{public}/stories/{story_id}"
    with serving(store, config) as base:
        response = httpx.get(f"{base}/stories/{story_id}")
        assert response.status_code == 200
        page = etree.HTML(response.content)
        rows = [
            (
                "".join(li.xpath(".//span[@class='outlet']//text()")),
                "".join(li.xpath(".//h2//text()")).strip(),
                li.xpath(".//time/@datetime")[0],
                li.xpath(".//h2/a/@href")[0],
            )
            for li in page.xpath("//main//li")
        ]
        # The configured names, not the feeds' own titles ("The Herald — all the news …").
        assert rows == [
            ("Gazette", "Talks collapse at summit", "2026-11-20T15:00:00+00:00", SHARED),
            ("Herald", "Summit ends without a deal", "2026-11-20T08:00:00+00:00", SHARED),
        ]
        assert httpx.get(f"{base}/stories/999999").status_code == 404
        assert httpx.get(f"{base}/stories/abc").status_code == 404
        assert httpx.get(f"{base}/stories/99999999999999999999").status_code == 404  # past a 64-bit id

        # The World entry links it: the HTML page, and "Also reported by" in every format.
        html = etree.HTML(httpx.get(f"{base}/feeds/world").content)
        assert story_url in html.xpath("//a[@class='full-coverage']/@href")
        atom = feedparser.parse(httpx.get(f"{base}/feeds/world.atom").content)
        rss = feedparser.parse(httpx.get(f"{base}/feeds/world.rss").content)
        feed = json.loads(httpx.get(f"{base}/feeds/world.json").content)
        for content in (
            next(e.content[0].value for e in atom.entries if e.link == SHARED),
            next(e.description for e in rss.entries if e.link == SHARED),
            next(i["content_html"] for i in feed["items"] if i.get("url") == SHARED),
        ):
            assert "Also reported by" in content and f'href="{story_url}"' in content


@pytest.mark.parametrize(
    ("found_after", "lead"),
    [(timedelta(hours=1), "Talks collapse at summit"), (timedelta(minutes=2), "Summit ends without a deal")],
)
def test_a_story_page_is_headed_by_the_item_that_leads_its_entry(
    server: FeedServer, tmp_path: Path, database_url: str, found_after: timedelta, lead: str
) -> None:
    """The Gazette carries the story first; the Herald's copy, dated earlier, is found later.
    An hour later, the World entry stays led by what readers have had for an hour; two minutes
    later, the two were found together (``curate.FOUND_TOGETHER``, as a first ingest finds a
    backlog), and the earlier report leads. Either way the story page its "full coverage"
    link opens is headed by the entry's lead."""
    server.add(
        "/gazette", body=rss("Gazette", [("Talks collapse at summit", SHARED, datetime(2026, 11, 20, 15, tzinfo=UTC))])
    )
    server.add("/herald", body=rss("Herald", []))
    sources: list[dict[str, object]] = [
        {"name": "Gazette", "url": server.url("/gazette")},
        {"name": "Herald", "url": server.url("/herald")},
    ]
    with polled(tmp_path, sources, database_url) as (config, store):
        server.add(
            "/herald",
            body=rss("Herald", [("Summit ends without a deal", SHARED, datetime(2026, 11, 20, 8, tzinfo=UTC))]),
        )
        later = NOW + found_after
        asyncio.run(poll_once(Pipeline(config, store, clock=lambda: later), all_sources=True))
        story_id, _ = resolve_story(store, SHARED)
        with serving(store, config) as base:
            atom = feedparser.parse(httpx.get(f"{base}/feeds/world.atom").content)
            assert [e.title for e in atom.entries if e.link == SHARED] == [lead]
            page = etree.HTML(httpx.get(f"{base}/stories/{story_id}").content)
            assert "".join(page.xpath("//h1//text()")) == lead
            assert page.xpath("//title/text()") == [f"{lead}: full coverage"]
            # Both outlets listed, newest first, whichever heads the page.
            assert [o for li in page.xpath("//main//li") for o in li.xpath(".//span[@class='outlet']/text()")] == [
                "Gazette",
                "Herald",
            ]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_pages_fit_a_phone_and_a_desktop_in_chromium(site: tuple[Config, Store], tmp_path: Path) -> None:
    """No page scrolls sideways or cuts anything off at 390 px; /status keeps every column.

    Screenshots go to tmp_path, and to $AGGREGATOR_SCREENSHOTS when set (to look at them).
    """
    config, store = site
    story_id, _ = resolve_story(store, SHARED)
    pages = {
        "front": ("/", "section h2, section a, header a"),
        "world": ("/feeds/world", "article h2, article .meta, .also a, nav a"),
        "story": (f"/stories/{story_id}", "li h2, li .meta, li .outlet"),
        "status": ("/status", "tbody td"),
        "archive": ("/feeds/world/archive/2026-W47", "article h2, article .meta, nav a"),
    }
    shots = tmp_path / "shots"
    with serving(store, config) as base, Browser(tmp_path / "profile") as browser:
        for name, (path, selector) in pages.items():
            for width in (PHONE, DESKTOP):
                result = browser.visit(f"{base}{path}", width, layout(selector), shots / f"{name}-{width}.png")
                assert result["width"] == width, (name, result)
                assert result["scrollWidth"] <= width, (name, width, result)
                assert result["cut"] == [], (name, width, result["cut"])
        # Each /status column is on the phone's screen, labelled, for every source.
        script = """[...document.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => {
            const box = td.getBoundingClientRect();
            const label = getComputedStyle(td, '::before').content;
            return [td.dataset.label, box.width > 0 && box.right <= innerWidth, label];
        }))"""
        rows = browser.visit(f"{base}/status", PHONE, script)
        assert len(rows) == 4
        for row in rows:
            assert [label for label, _, _ in row] == [
                "Source", "Status", "Last poll", "Next poll", "Items/day (7 days)", "Errors",
            ]  # fmt: skip
            assert all(visible for _, visible, _ in row), row
            assert all(shown == f'"{label}: "' for label, _, shown in row[1:]), row
        # Each sparkline has a baseline: a source with no items for days shows a flat line, not nothing.
        lines = browser.visit(
            f"{base}/status",
            PHONE,
            "[...document.querySelectorAll('td svg')].map(s => s.querySelectorAll('line').length)",
        )
        assert lines == [1, 1, 1, 1], lines
        headers = browser.visit(f"{base}/status", DESKTOP, layout("thead th"))
        assert headers["cut"] == [] and headers["scrollWidth"] <= DESKTOP
    for png in shots.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep := os.environ.get("AGGREGATOR_SCREENSHOTS"):
        shutil.copytree(shots, keep, dirs_exist_ok=True)
