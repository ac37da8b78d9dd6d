"""Outlets are named as the operator configured them, in every output; the feed's own title
(often a tagline, or shared by mirrors) stays visible in ``aggregator sources`` only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser
import pytest

from aggregator.cli import main
from tests.conftest import write_config
from tests.feedcheck import check_atom, check_json_feed, check_rss
from tests.server import FeedServer, Route

NOW = datetime.now(UTC).replace(microsecond=0)
SHARED = "https://www.ft.example/content/rates-decision"


def feed(title: str, items: list[tuple[str, str, float]]) -> bytes:
    """RSS titled ``title`` with (headline, link, hours ago) items and no authors."""
    body = "".join(
        f"<item><title>{headline}</title><link>{link}</link><guid>{link}</guid><description>{headline}.</description>"
        f"<pubDate>{format_datetime(NOW - timedelta(hours=hours))}</pubDate></item>"
        for headline, link, hours in items
    )
    return (
        f"<?xml version='1.0'?><rss version='2.0'><channel><title>{title}</title><link>https://x.example/</link>"
        f"<description>d</description>{body}</channel></rss>"
    ).encode()


@pytest.fixture
def published(server: FeedServer, tmp_path: Path) -> Path:
    server.add(
        "/ft", Route(body=feed("UK homepage", [("Rates held", SHARED, 1), ("Markets", "https://www.ft.example/m", 2)]))
    )
    server.add("/tpm", Route(body=feed("All TPM News", [("Rates held at FT", SHARED, 0.5)])))
    server.add("/tpm-mirror", Route(body=feed("All TPM News", [("Rates held (mirror)", SHARED, 0.2)])))
    sources = [{"name": "Financial Times", "url": server.url("/ft")}]
    # The FT is polled first, so it carried the shared story first and leads its entry.
    assert main(["--config", str(write_config(tmp_path, sources)), "poll", "--once"]) == 0
    sources += [{"name": "TPM", "url": server.url("/tpm")}, {"name": "TPM mirror", "url": server.url("/tpm-mirror")}]
    assert main(["--config", str(write_config(tmp_path, sources)), "poll", "--once"]) == 0
    return tmp_path / "data" / "feeds"


def test_atom_names_the_outlet_in_source_author_and_also_reported_by(published: Path) -> None:
    body = (published / "world.atom").read_bytes()
    assert check_atom(body) == []
    entries = {e.title: e for e in feedparser.parse(body).entries}
    story = entries["Rates held"]  # Financial Times carried it first: it leads
    assert story.source.title == "Financial Times" and story.author == "Financial Times"
    content = story.content[0].value
    # Said in the text too: most readers show neither atom:source nor, with a byline, the outlet.
    assert "<p>From Financial Times · Reported by 3 outlets. Also reported by:</p><ul><li><a" in content
    assert ">TPM</a>: Rates held at FT</li>" in content and ">TPM mirror</a>: Rates held (mirror)</li>" in content
    assert b"UK homepage" not in body and b"All TPM News" not in body


def test_rss_names_the_outlet_in_source_and_dc_creator(published: Path) -> None:
    body = (published / "world.rss").read_bytes()
    assert check_rss(body) == []
    items = {e.title: e for e in feedparser.parse(body).entries}
    assert items["Rates held"].source.title == "Financial Times"
    assert items["Rates held"].author == "Financial Times"
    assert b"UK homepage" not in body and b"All TPM News" not in body


def test_json_feed_names_the_outlet_in_authors_and_extension(published: Path) -> None:
    body = (published / "world.json").read_bytes()
    assert check_json_feed(body) == []
    items = {item["title"]: item for item in json.loads(body)["items"]}
    assert items["Rates held"]["authors"][0]["name"] == "Financial Times"
    assert items["Rates held"]["_aggregator"]["outlet"]["name"] == "Financial Times"
    assert "UK homepage" not in body.decode() and "All TPM News" not in body.decode()


def test_the_page_names_outlets_and_says_how_many_carry_the_story(published: Path) -> None:
    page = (published / "world.html").read_text()
    assert '<span class="outlet" dir="auto">Financial Times</span>' in page
    assert "Reported by 3 outlets" in page and ">TPM mirror</a>" in page
    assert "Reported by 1 outlet" in page  # "Markets": the FT alone
    assert "UK homepage" not in page and "All TPM News" not in page
