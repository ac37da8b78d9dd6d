"""The foundation's acceptance, checked from outside: CLI, real HTTP server, real SQLite file."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser
import pytest

from aggregator.cli import main
from tests.conftest import write_config
from tests.feedcheck import check_atom
from tests.feeds import any_dialect
from tests.server import FeedServer, Route

FEEDS, ITEMS = 200, 30


@pytest.fixture
def many_feeds(server: FeedServer, tmp_path: Path) -> Path:
    sources = []
    for n in range(FEEDS):
        path = f"/feed/{n}"
        server.add(
            path, Route(body=any_dialect(n, ITEMS), etag=f'"v1-{n}"', last_modified="Fri, 20 Nov 2026 12:00:00 GMT")
        )
        sources.append({"name": f"feed {n}", "url": server.url(path), "tags": ["world"]})
    return write_config(tmp_path, sources)


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_poll_all_stores_every_item_once_then_conditional_requests_get_304(
    many_feeds: Path, server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "data" / "aggregator.db"
    assert main(["--config", str(many_feeds), "poll", "--once", "--all"]) == 0
    assert _count(db, "select count(*) from items") == FEEDS * ITEMS
    assert _count(db, "select count(distinct source_id || '|' || key) from items") == FEEDS * ITEMS
    atom_path = tmp_path / "data" / "feeds" / "world.atom"
    first_bytes = atom_path.read_bytes()
    assert check_atom(first_bytes) == []
    first_ids = [e.id for e in feedparser.parse(first_bytes).entries]
    # Every story once. The feeds' items of one index report one made-up event in the same words
    # ("talks resume in Geneva ... on Tuesday"), which story matching may join: the stories
    # are counted, and every item is in one.
    assert _count(db, "select count(*) from items where story_id is null") == 0
    assert len(first_ids) == _count(db, "select count(distinct story_id) from items")
    assert len(set(first_ids)) == len(first_ids)

    before = len(server.requests)
    assert main(["--config", str(many_feeds), "poll", "--once", "--all"]) == 0
    second = server.requests[before:]
    assert len(second) == FEEDS
    assert all(r.headers.get("if-none-match", "").startswith('"v1-') for r in second)
    assert _count(db, "select count(*) from items") == FEEDS * ITEMS
    assert _count(db, "select count(*) from fetch_log where outcome = 'not_modified'") == FEEDS
    out = capsys.readouterr().out
    assert f"{FEEDS} not modified" in out

    # A rebuild gives the same bytes: no entry id churns, no reader sees "new" entries.
    assert main(["--config", str(many_feeds), "publish"]) == 0
    assert atom_path.read_bytes() == first_bytes


def test_sources_shows_health_and_why_each_source_is_next_polled(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    server.add("/ok", Route(body=any_dialect(0, 3), headers={"Cache-Control": "max-age=7200"}))
    server.add("/broken", Route(status=500))
    config = write_config(
        tmp_path,
        [{"name": "good", "url": server.url("/ok"), "interval": "1h"}, {"name": "bad", "url": server.url("/broken")}],
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "sources", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["good"]["status"] == "ok" and rows["good"]["items"] == 3
    assert rows["good"]["next_poll_reason"] == "Cache-Control max-age 2h"
    assert rows["bad"]["status"] == "failing (500)"
    assert rows["bad"]["error_count"] == 1 and "HTTP 500" in rows["bad"]["last_error"]
    assert rows["bad"]["next_poll_reason"] == "backoff after 1 error"
    assert main(["--config", str(config), "sources"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["SOURCE", "FEED", "TITLE", "STATUS"]
    assert any(line.startswith("bad") and "HTTP 500" in line for line in table)
    # Outputs name a source by its configured name; the feed's own title stays visible here.
    assert rows["good"]["feed_title"] == "RSS feed 0"
    assert any(line.startswith("good") and "RSS feed 0" in line for line in table)


def test_status_page_shows_health_escaped_and_chart(server: FeedServer, tmp_path: Path) -> None:
    import httpx

    from aggregator.config import load_config
    from aggregator.store.database import make_engine
    from aggregator.store.repository import Store
    from tests.conftest import serving

    # Dated today (UTC): the chart counts items on the day their feed dates them.
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    items = "".join(
        f"<item><title>Story {n}</title><link>https://news.example.com/s{n}</link>"
        f"<pubDate>{format_datetime(midnight + timedelta(minutes=n))}</pubDate></item>"
        for n in range(4)
    )
    server.add("/ok", Route(body=f"<rss version='2.0'><channel><title>Today</title>{items}</channel></rss>".encode()))
    server.add("/broken", Route(status=503, headers={"Retry-After": "120"}))
    config = write_config(
        tmp_path,
        [
            {"name": "good", "url": server.url("/ok")},
            {"name": '"<script>alert(1)</script>"', "url": server.url("/broken")},
        ],
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    engine = make_engine(load_config(config).config.settings.database_url)
    try:
        with serving(Store(engine)) as base:
            response = httpx.get(f"{base}/status")
    finally:
        engine.dispose()
    assert response.status_code == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "failing (503)" in page and "Retry-After 2m (503)" in page
    assert page.count("<rect") == 1  # one bar: today's 4 items for "good"
    assert "4 items" in page


def test_a_poll_re_renders_only_what_changed(server: FeedServer, tmp_path: Path) -> None:
    server.add("/f", Route(body=any_dialect(0, 3), etag='"1"'))
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}])
    atom = tmp_path / "data" / "feeds" / "world.atom"
    assert main(["--config", str(config), "poll", "--once"]) == 0
    first = atom.stat().st_mtime_ns
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0  # 304 only
    assert atom.stat().st_mtime_ns == first
    # An edited output is re-rendered by the next poll even with nothing new to fetch.
    config.write_text(config.read_text().replace("title: World", "title: Whole World"))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    assert "<title>Whole World</title>" in atom.read_text()


def test_a_feed_without_guids_linking_every_entry_to_its_site_loses_none(server: FeedServer, tmp_path: Path) -> None:
    # A podcast whose episodes have no guid and all link to its site: each is an item, and the
    # episode that comes first at the next poll is a new item, not an update of the last one.
    def rss(numbers: range) -> bytes:
        items = "".join(
            f"<item><title>Episode {n}</title><link>https://pod.example.com/</link>"
            f"<description>Show notes of episode {n}.</description></item>"
            for n in reversed(numbers)
        )
        return f"<rss version='2.0'><channel><title>Pod</title>{items}</channel></rss>".encode()

    server.add("/pod", Route(body=rss(range(1, 4))))
    config = write_config(tmp_path, [{"name": "Pod", "url": server.url("/pod")}])
    db = tmp_path / "data" / "aggregator.db"
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    server.add("/pod", Route(body=rss(range(1, 5))))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    with sqlite3.connect(db) as conn:
        titles = sorted(title for (title,) in conn.execute("select title from items"))
        updated = conn.execute("select count(*) from items where update_count > 0").fetchone()[0]
    assert titles == [f"Episode {n}" for n in range(1, 5)] and updated == 0


def test_renaming_a_source_keeps_its_items_and_stores_none_twice(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    url = server.add("/f", Route(body=any_dialect(0, 5)))
    db = tmp_path / "data" / "aggregator.db"
    config = write_config(
        tmp_path,
        [{"name": "Good1", "url": url}, {"name": "Other", "url": server.add("/o", Route(body=any_dialect(1, 2)))}],
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    renamed = write_config(tmp_path, [{"name": "NASA", "url": url}])
    capsys.readouterr()
    assert main(["--config", str(renamed), "poll", "--once", "--all"]) == 0
    # Said, since a poll run with another config than the service's stops the service's sources.
    assert capsys.readouterr().err.splitlines()[:2] == [
        f"aggregator: {renamed} does not list 1 source of this database, no longer polled (items stay): 'Other'",
        "aggregator: source 'Good1' is now 'NASA' (the same URL): its items keep it",
    ]
    assert _count(db, "select count(*) from items") == 7
    assert _count(db, "select count(*) from sources") == 2
    capsys.readouterr()
    assert main(["--config", str(renamed), "sources", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["NASA"]["items"] == 5 and rows["NASA"]["in_config"]
    assert not rows["Other"]["in_config"]  # removed, its items kept


def test_outputs_name_a_renamed_source_by_its_new_name_after_a_poll_or_a_publish(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    post, herald = server.add("/p", Route(body=any_dialect(0, 3))), server.add("/h", Route(body=any_dialect(1, 3)))
    outputs = """
        outputs:
          - slug: world
            title: World
          - slug: heralds
            title: Heralds
            sources: [{herald}]
        """

    def config(post_name: str, herald_name: str) -> Path:
        sources = [{"name": post_name, "url": post}, {"name": herald_name, "url": herald}]
        settings = "story_matching: off"
        return write_config(tmp_path, sources, settings=settings, outputs=outputs.format(herald=herald_name))

    def outlets(slug: str) -> list[str]:
        items = json.loads((tmp_path / "data" / "feeds" / f"{slug}.json").read_text())["items"]
        return sorted({item["_aggregator"]["outlet"]["name"] for item in items})

    assert main(["--config", str(config("Post", "Herald")), "poll", "--once"]) == 0
    assert outlets("world") == ["Herald", "Post"] and outlets("heralds") == ["Herald"]
    # A poll with nothing due: no new item touches the world output, which names Post's items.
    assert main(["--config", str(config("Daily Post", "Herald")), "poll", "--once"]) == 0
    assert outlets("world") == ["Daily Post", "Herald"]
    # Publishing before any poll: the output naming the renamed source still finds its items.
    assert main(["--config", str(config("Daily Post", "The Herald")), "publish"]) == 0
    assert outlets("heralds") == ["The Herald"] and outlets("world") == ["Daily Post", "The Herald"]
    assert "source 'Herald' is now 'The Herald'" in capsys.readouterr().err


def test_which_stored_sources_a_config_renames() -> None:
    from aggregator.records import SourceSpec, renamed_sources

    stored = {"Good1": "https://a.example/rss", "Old": "https://b.example/rss", "Twin 1": "https://t.example/rss",
              "Twin 2": "https://t.example/rss", "Kept": "https://k.example/rss"}  # fmt: skip
    specs = [
        SourceSpec("NASA", "https://a.example/rss"),  # Good1's URL, Good1 no longer named: renamed
        SourceSpec("Kept", "https://k.example/rss"),
        SourceSpec("Kept too", "https://k.example/rss"),  # Kept is still named: a second source
        SourceSpec("Twin", "https://t.example/rss"),  # two stored sources left that URL: neither
        SourceSpec("New", "https://n.example/rss"),
        SourceSpec("Old again", "https://b.example/rss"),  # the first new name with a URL takes it
        SourceSpec("Old twice", "https://b.example/rss"),
    ]
    assert renamed_sources(specs, stored) == {"NASA": "Good1", "Old again": "Old"}


def _relative_guids(count: int) -> bytes:
    """A feed whose guids are relative references ("1", "/news/2"): permalinks by RSS's
    default, which feedparser resolves against wherever the feed was fetched from."""
    items = "".join(
        f"<item><title>Report {n}</title><guid>{n if n % 2 else f'/news/{n}'}</guid>"
        f"<description>What happened in part {n}.</description>"
        f"<pubDate>{format_datetime(datetime(2026, 11, 20, 8, tzinfo=UTC) + timedelta(hours=n))}</pubDate></item>"
        for n in range(count, 0, -1)
    )
    return f"<rss version='2.0'><channel><title>Relative</title>{items}</channel></rss>".encode()


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_an_item_with_a_relative_guid_is_stored_once_wherever_its_feed_moves(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    from tests.conftest import query_rows

    elsewhere = FeedServer().start()
    try:
        server.add("/feed", Route(body=_relative_guids(3)))
        config = write_config(
            tmp_path, [{"name": "Rel", "url": server.url("/feed")}], settings=f"database: {database_url}"
        )
        assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
        # The site moves its feed to another host (here: port), with a permanent redirect.
        moved = elsewhere.add("/rss", Route(body=_relative_guids(4)))
        server.add("/feed", Route(status=301, headers={"Location": moved}))
        assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
        rows = query_rows(database_url, "SELECT key, link FROM items ORDER BY title")
    finally:
        elsewhere.stop()
    # One row per report: the three stored first are the same items, the fourth is new.
    assert [key for key, _ in rows] == ["id:1", "id:/news/2", "id:3", "id:/news/4"]
    # The link each guid stands for is resolved, against where the feed is now.
    assert [link for _, link in rows] == [moved.replace("/rss", path) for path in ("/1", "/news/2", "/3", "/news/4")]


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_items_stored_under_resolved_relative_guids_are_found_and_rekeyed(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    from tests.conftest import query_rows

    url = server.add("/feed", Route(body=_relative_guids(3)))
    config = write_config(tmp_path, [{"name": "Rel", "url": url}], settings=f"database: {database_url}")
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    # Earlier releases keyed these items by their guids resolved against the feed's URL.
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE items SET key = 'id:' || link, guid = link"))
    engine.dispose()
    assert query_rows(database_url, "SELECT key FROM items ORDER BY title")[0] == (f"id:{url.replace('/feed', '/1')}",)

    server.add("/feed", Route(body=_relative_guids(4)))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    rows = query_rows(database_url, "SELECT key, guid, update_count FROM items ORDER BY title")
    # Found under the old keys, not stored again; unchanged, and kept under their own keys now.
    assert rows == [("id:1", "1", 0), ("id:/news/2", "/news/2", 0), ("id:3", "3", 0), ("id:/news/4", "/news/4", 0)]
