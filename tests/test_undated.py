"""Undated items through the real pipeline: true order, no invented dates, a cap on the top.

A feed whose items carry no dates (an opinion column's feed) once filled entries 1-15 of
World with the *last* 15 of its document, in scrambled order, each dated with the moment it
was first seen, and its newest item left out. Served by a real HTTP server, polled by the
CLI into a real database, and read back from the published outputs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser
import httpx
import pytest

from aggregator.cli import main
from aggregator.store.database import make_engine
from aggregator.store.repository import Store
from tests.conftest import query_rows, serving, write_config
from tests.feedcheck import check_atom, check_json_feed, check_rss
from tests.server import FeedServer, Route

COLUMNS = 20


def rss(name: str, items: Sequence[tuple[str, datetime | None]]) -> bytes:
    """An RSS document listing ``items`` (slug, date or None) in the order given."""
    body = "".join(
        f"<item><title>{name} {slug}</title><link>https://{name}.example/{slug}</link>"
        f"<guid>https://{name}.example/{slug}</guid><description>{name} {slug} text</description>"
        + (f"<pubDate>{format_datetime(date)}</pubDate>" if date else "")
        + "</item>"
        for slug, date in items
    )
    return (
        f"<?xml version='1.0'?><rss version='2.0'><channel><title>{name} feed</title>"
        f"<link>https://{name}.example/</link><description>d</description>{body}</channel></rss>"
    ).encode()


def columns() -> bytes:
    """The opinion feed: newest column first, no dates anywhere."""
    return rss("opinion", [(f"column-{n:02d}", None) for n in range(COLUMNS)])


def outputs(**settings: object) -> str:
    lines = "".join(f"\n    {key}: {value}" for key, value in settings.items())
    return f"outputs:\n  - slug: world\n    title: World{lines}\n"


def published(tmp_path: Path, fmt: str) -> bytes:
    return (tmp_path / "data" / "feeds" / f"world.{fmt}").read_bytes()


def test_an_undated_feed_shows_its_newest_items_in_its_own_order(server: FeedServer, tmp_path: Path) -> None:
    server.add("/opinion", Route(body=columns()))
    config = write_config(
        tmp_path, [{"name": "Opinion", "url": server.url("/opinion")}], outputs=outputs(max_entries=15, undated_cap=15)
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    atom = published(tmp_path, "atom")
    assert check_atom(atom) == []
    titles = [e.title for e in feedparser.parse(atom).entries]
    assert titles == [f"opinion column-{n:02d}" for n in range(15)]  # the first 15 of the document, in order


def test_undated_items_are_marked_undated_and_never_above_newer_dated_news(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    server.add("/opinion", Route(body=columns()))
    # A mixed feed: "lead" and "middle" carry no date, between and above dated neighbours.
    mixed = [
        ("lead", None),
        ("two-hours", now - timedelta(hours=2)),
        ("middle", None),
        ("five-hours", now - timedelta(hours=5)),
    ]
    server.add("/mixed", Route(body=rss("mixed", mixed)))
    server.add("/wire", Route(body=rss("wire", [(f"h{n}", now - timedelta(hours=n)) for n in (1, 3, 4, 6)])))
    config = write_config(
        tmp_path,
        [
            {"name": "Opinion", "url": server.url("/opinion")},
            {"name": "Mixed", "url": server.url("/mixed")},
            {"name": "Wire", "url": server.url("/wire")},
        ],
        settings=f"database: {database_url}",
        outputs=outputs(max_entries=30),
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0

    atom = published(tmp_path, "atom")
    assert check_atom(atom) == []
    entries = feedparser.parse(atom).entries
    titles = [e.title for e in entries]
    # The columns came in the opinion feed's first fetch, with no date at all: how old they are
    # nobody can tell, so all of them follow every dated entry, in the feed's order.
    opinion = [f"opinion column-{n:02d}" for n in range(COLUMNS)]
    assert titles[-COLUMNS:] == opinion
    # Everything else by time: an undated item sits just above its newer dated neighbour, and
    # news genuinely newer than that (Wire, 1 h) stays above it although it was seen at the same time.
    assert titles[:-COLUMNS] == [
        "wire h1", "mixed lead", "mixed two-hours", "wire h3", "mixed middle", "wire h4", "mixed five-hours", "wire h6"
    ]  # fmt: skip
    undated = {"mixed lead", "mixed middle", *opinion}
    for entry in entries:
        assert ("published" in entry) == (entry.title not in undated), entry.title
    first_seen = datetime.fromisoformat(next(e for e in entries if e.title == "mixed lead").updated)
    assert abs(first_seen - datetime.now(UTC)) < timedelta(minutes=10)  # updated = when first seen

    rss_body = published(tmp_path, "rss")
    assert check_rss(rss_body) == []
    for item in feedparser.parse(rss_body).entries:
        assert ("published" in item) == (item.title not in undated), item.title
    doc = json.loads(published(tmp_path, "json"))
    assert check_json_feed(published(tmp_path, "json")) == []
    for item in doc["items"]:
        assert ("date_published" in item) == (item["title"] not in undated)
        assert item["_aggregator"]["dated"] == (item["title"] not in undated)
        assert item["_aggregator"]["age_unknown"] == (item["title"] in opinion)
        assert "date_modified" in item
    page = published(tmp_path, "html").decode()
    assert page.count("undated · first seen") == 2  # mixed: placed between its dated items
    assert page.count("undated · age unknown: in its feed when first read") == COLUMNS


def test_the_undated_cap_is_reported_by_items(server: FeedServer, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # The feed was empty when first read: the columns it lists next appeared since, so they
    # rank by when they were first seen, up to the cap.
    server.add("/opinion", Route(body=rss("opinion", [])))
    config = write_config(
        tmp_path, [{"name": "Opinion", "url": server.url("/opinion")}], outputs=outputs(undated_cap=2)
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    server.add("/opinion", Route(body=columns()))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    db = tmp_path / "data" / "aggregator.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from items where published_at is null").fetchone()[0] == COLUMNS
    capsys.readouterr()
    assert main(["--config", str(config), "items", "world", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum("over the undated cap of 2" in row["reason"] for row in rows) == COLUMNS - 2
    assert all(row["published_at"] is None for row in rows)  # no invented date here either


def opinion_and_wire(
    server: FeedServer, tmp_path: Path, database_url: str, opinion: list[tuple[str, None]], **settings: object
) -> Path:
    """A feeds.yaml of an undated opinion feed listing ``opinion`` and a wire dated 1 and 2 hours
    ago, with a World output of ``settings``."""
    now = datetime.now(UTC).replace(microsecond=0)
    server.add("/opinion", Route(body=rss("opinion", opinion)))
    server.add("/wire", Route(body=rss("wire", [(f"h{n}", now - timedelta(hours=n)) for n in (1, 2)])))
    return write_config(
        tmp_path,
        [{"name": "Opinion", "url": server.url("/opinion")}, {"name": "Wire", "url": server.url("/wire")}],
        settings=f"database: {database_url}",
        outputs=outputs(**settings),
    )


def test_many_undated_items_do_not_crowd_dated_news_out_of_the_candidates(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    # 2 entries read 110 candidates (publisher.CANDIDATE_FACTOR): 150 undated items would be all of them.
    opinion = [(f"column-{n:03d}", None) for n in range(150)]
    config = opinion_and_wire(server, tmp_path, database_url, opinion, max_entries=2, undated_cap=0)
    assert main(["--config", str(config), "poll", "--once"]) == 0
    titles = [e.title for e in feedparser.parse(published(tmp_path, "atom")).entries]
    assert titles == ["wire h1", "wire h2"]


def test_a_first_fetchs_undated_items_follow_the_dated_news_and_later_ones_rank_as_new(
    server: FeedServer, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # What an undated feed holds when it is first read may be years old: placed at "now", it
    # once went above every dated report (a first poll of a corpus of feeds put such items at
    # the top of World). An item that appears in it later appeared since the last poll.
    config = opinion_and_wire(server, tmp_path, database_url, [(f"column-{n}", None) for n in range(5)], max_entries=20)
    assert main(["--config", str(config), "poll", "--once"]) == 0
    columns = [f"opinion column-{n}" for n in range(5)]
    assert [e.title for e in feedparser.parse(published(tmp_path, "atom")).entries] == ["wire h1", "wire h2", *columns]
    capsys.readouterr()
    assert main(["--config", str(config), "items", "world", "--json"]) == 0
    reasons = {row["title"]: row["reason"] for row in json.loads(capsys.readouterr().out)}
    for title in columns:
        assert "after the dated entries (undated, in its feed's first fetch: its age is unknown)" in reasons[title]

    # The next column appears: first seen now, it is the newest entry of all.
    later = [("column-new", None), *[(f"column-{n}", None) for n in range(5)]]
    server.add("/opinion", Route(body=rss("opinion", later)))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    atom = published(tmp_path, "atom")
    assert check_atom(atom) == []
    titles = [e.title for e in feedparser.parse(atom).entries]
    assert titles == ["opinion column-new", "wire h1", "wire h2", *columns]

    # Each one's story page says which it is.
    rows = query_rows(database_url, "select title, story_id from items where title like 'opinion %'")
    stories = {str(title): story for title, story in rows}
    engine = make_engine(database_url)
    try:
        with serving(Store(engine)) as base:
            pages = {n: httpx.get(f"{base}/stories/{stories[f'opinion column-{n}']}").text for n in ("0", "new")}
    finally:
        engine.dispose()
    assert "(undated; age unknown: in its feed when first read)" in pages["0"]
    assert "(undated; first seen)" in pages["new"] and "age unknown" not in pages["new"]


def test_only_a_first_document_with_no_dates_at_all_has_items_of_unknown_age() -> None:
    from aggregator.poll import ages_unknown
    from aggregator.records import ClaimedSource, ParsedFeed, SourceToFetch
    from tests.test_store import item

    dated = item("d")
    undated = [replace(item(key), published_at=None) for key in ("a", "b")]

    def parsed(*items: object) -> ParsedFeed:
        return ParsedFeed("t", None, None, None, None, tuple(items))  # type: ignore[arg-type]

    first = ClaimedSource(SourceToFetch(1, "s", "http://127.0.0.1/"), None, 0, None, ())
    read_before = replace(first, body_hash="0" * 64)
    assert ages_unknown(first, parsed(*undated))
    assert not ages_unknown(read_before, parsed(*undated))  # they appeared since the last poll
    assert not ages_unknown(first, parsed(undated[0], dated, undated[1]))  # placed between dates
    assert not ages_unknown(first, parsed())
    assert not ages_unknown(first, None)
