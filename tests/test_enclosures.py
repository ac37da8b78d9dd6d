"""Attachments and preview images survive republishing, in every output format.

Sources served by a real HTTP server: a podcast (RSS ``enclosure`` + ``media:thumbnail``), an
Atom feed with ``link rel="enclosure"`` and two of them, and a JSON Feed with ``attachments``
and ``image``. After a poll through the CLI, the outputs are parsed back with feedparser and
checked: a republished podcast keeps its audio, with type and length.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser

from aggregator.cli import main
from tests.conftest import write_config
from tests.feedcheck import check_atom, check_json_feed, check_rss
from tests.server import FeedServer, Route

NOW = datetime.now(UTC).replace(microsecond=0)
AUDIO = "https://cdn.podcast.example/episodes/42.mp3"
COVER = "https://cdn.podcast.example/episodes/42-cover.jpg"


def podcast() -> bytes:
    return (
        "<?xml version='1.0'?><rss version='2.0' xmlns:media='http://search.yahoo.com/mrss/'><channel>"
        "<title>The Weekly Show - a podcast about everything</title><link>https://podcast.example/</link>"
        "<description>d</description>"
        "<item><title>Episode 42</title><link>https://podcast.example/42</link><guid>ep-42</guid>"
        f"<description>Show notes</description><pubDate>{format_datetime(NOW - timedelta(hours=1))}</pubDate>"
        f"<enclosure url='{AUDIO}' length='48213411' type='audio/mpeg'/>"
        f"<media:thumbnail url='{COVER}' width='300' height='300'/></item>"
        "</channel></rss>"
    ).encode()


def atom_with_two_enclosures() -> bytes:
    return (
        "<?xml version='1.0'?><feed xmlns='http://www.w3.org/2005/Atom'><id>urn:test:video</id>"
        f"<title>Video</title><updated>{NOW.isoformat()}</updated>"
        "<entry><id>urn:test:video:1</id><title>Clip</title><link href='https://video.example/1'/>"
        f"<updated>{(NOW - timedelta(hours=2)).isoformat()}</updated><summary>A clip</summary>"
        "<link rel='enclosure' href='https://video.example/1.mp4' type='video/mp4' length='1000000'/>"
        "<link rel='enclosure' href='https://video.example/1.ogg' type='audio/ogg'/>"
        "</entry></feed>"
    ).encode()


def json_feed() -> bytes:
    item = {
        "id": "j1",
        "url": "https://json.example/1",
        "title": "Photo story",
        "content_html": "<p>Pictures</p>",
        "date_published": (NOW - timedelta(hours=3)).isoformat(),
        "image": "https://json.example/1.jpg",
        "attachments": [{"url": "https://json.example/1.pdf", "mime_type": "application/pdf", "size_in_bytes": 2048}],
    }
    return json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": "Photos", "items": [item]}).encode()


def poll(server: FeedServer, tmp_path: Path) -> Path:
    server.add("/podcast", Route(body=podcast()))
    server.add("/video", Route(body=atom_with_two_enclosures(), content_type="application/atom+xml"))
    server.add("/photos", Route(body=json_feed(), content_type="application/feed+json"))
    config = write_config(
        tmp_path,
        [
            {"name": "Weekly Show", "url": server.url("/podcast")},
            {"name": "Video", "url": server.url("/video")},
            {"name": "Photos", "url": server.url("/photos")},
        ],
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    return tmp_path / "data" / "feeds"


def test_atom_carries_every_enclosure_with_type_and_length_and_the_thumbnail(
    server: FeedServer, tmp_path: Path
) -> None:
    body = (poll(server, tmp_path) / "world.atom").read_bytes()
    assert check_atom(body) == []
    entries = {e.title: e for e in feedparser.parse(body).entries}
    assert [(x.href, x.type, x.length) for x in entries["Episode 42"].enclosures] == [(AUDIO, "audio/mpeg", "48213411")]
    assert entries["Episode 42"].media_thumbnail[0]["url"] == COVER
    assert [(x.href, x.type) for x in entries["Clip"].enclosures] == [
        ("https://video.example/1.mp4", "video/mp4"),
        ("https://video.example/1.ogg", "audio/ogg"),
    ]
    assert [x.href for x in entries["Photo story"].enclosures] == ["https://json.example/1.pdf"]
    assert "media_thumbnail" not in entries["Clip"]


def test_rss_carries_the_first_enclosure_of_each_item(server: FeedServer, tmp_path: Path) -> None:
    body = (poll(server, tmp_path) / "world.rss").read_bytes()
    assert check_rss(body) == []
    parsed = feedparser.parse(body)
    assert parsed.bozo == 0
    items = {e.title: e for e in parsed.entries}
    assert [(x.href, x.type, x.length) for x in items["Episode 42"].enclosures] == [(AUDIO, "audio/mpeg", "48213411")]
    assert items["Episode 42"].media_thumbnail[0]["url"] == COVER
    # RSS allows one per item: the first.
    assert [(x.href, x.length) for x in items["Clip"].enclosures] == [("https://video.example/1.mp4", "1000000")]
    assert body.count(b"<enclosure ") == 3


def test_json_feed_carries_attachments_and_image(server: FeedServer, tmp_path: Path) -> None:
    body = (poll(server, tmp_path) / "world.json").read_bytes()
    assert check_json_feed(body) == []
    items = {item["title"]: item for item in json.loads(body)["items"]}
    assert items["Episode 42"]["attachments"] == [{"url": AUDIO, "mime_type": "audio/mpeg", "size_in_bytes": 48213411}]
    assert items["Episode 42"]["image"] == COVER
    assert items["Clip"]["attachments"][1] == {"url": "https://video.example/1.ogg", "mime_type": "audio/ogg"}
    assert items["Photo story"]["image"] == "https://json.example/1.jpg"
    assert items["Photo story"]["attachments"] == [
        {"url": "https://json.example/1.pdf", "mime_type": "application/pdf", "size_in_bytes": 2048}
    ]


def test_the_page_shows_the_thumbnail_and_a_player_for_audio(server: FeedServer, tmp_path: Path) -> None:
    page = (poll(server, tmp_path) / "world.html").read_text()
    assert f'<img class="thumb" src="{COVER}"' in page
    assert f'<audio controls preload="none" src="{AUDIO}" aria-label="Audio: ' in page
    assert f'<a href="{AUDIO}" rel="noopener noreferrer">Audio<span class="vh">: ' in page
    assert "</a> (audio/mpeg, 48.2 MB)" in page
