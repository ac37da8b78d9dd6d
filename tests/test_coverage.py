"""``order: coverage``: within max_age, stories carried by more outlets rise, ties by time; and
every entry says how many outlets carry it. Pure first, then through the real pipeline on
SQLite and PostgreSQL, read back from every output format."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser
import pytest

from aggregator.cli import main
from aggregator.config import Output, load_config, parse_config
from aggregator.curate import select
from aggregator.errors import ConfigError
from aggregator.store.database import make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.feedcheck import check_atom, check_json_feed, check_rss
from tests.server import FeedServer, Route
from tests.test_curate import cand

# story -> (hours ago, outlets carrying it within the window)
STORIES = {"wide": (5, 3), "pair-new": (2, 2), "pair-old": (3, 2), "alone": (1, 1)}


def test_coverage_order_ranks_by_outlets_then_time_and_newest_order_by_time() -> None:
    candidates, n = [], 0
    for story, (hours, outlets) in enumerate(STORIES.values(), start=1):
        for outlet in range(outlets):
            n += 1
            candidates.append(cand(n, story=story, source=f"outlet {outlet}", hours=hours + outlet / 10))
    coverage = select(Output(slug="w", title="W", order="coverage", max_age=timedelta(days=1)), candidates)
    assert [(e.lead.story_id, e.outlets) for e in coverage] == [(1, 3), (2, 2), (3, 2), (4, 1)]
    newest = select(Output(slug="w", title="W"), candidates)
    assert [e.lead.story_id for e in newest] == [4, 2, 3, 1]


def test_two_items_of_one_outlet_count_once() -> None:
    entry = select(Output(slug="w", title="W"), [cand(1, story=7, source="A"), cand(2, story=7, source="A")])[0]
    assert entry.outlets == 1


def test_coverage_order_needs_a_window() -> None:
    text = textwrap.dedent(
        """\
        outputs:
          - slug: world
            title: World
            order: coverage
        """
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "feeds.yaml")
    assert caught.value.problems == [
        "feeds.yaml:2: outputs[0]: order: coverage needs max_age (the window in which coverage is compared)"
    ]


def outlet_feed(outlet: int, now: datetime) -> bytes:
    """Outlet ``outlet``'s feed: its item of every story it carries (same link: same story)."""
    items = []
    for story, (hours, outlets) in STORIES.items():
        if outlet < outlets:
            items.append((story, now - timedelta(hours=hours, minutes=outlet)))
    if outlet == 3:  # a fourth outlet carried "alone" 3 days ago: outside max_age, not counted
        items.append(("alone", now - timedelta(days=3)))
    body = "".join(
        f"<item><title>{story} by outlet {outlet}</title><link>https://story.example/{story}</link>"
        f"<guid>o{outlet}-{story}</guid><description>{story}</description>"
        f"<pubDate>{format_datetime(date)}</pubDate></item>"
        for story, date in items
    )
    return (
        f"<?xml version='1.0'?><rss version='2.0'><channel><title>Feed {outlet}</title>"
        f"<link>https://o{outlet}.example/</link><description>d</description>{body}</channel></rss>"
    ).encode()


def test_coverage_order_through_the_pipeline(server: FeedServer, tmp_path: Path, database_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sources = []
    for outlet in range(4):
        server.add(f"/o{outlet}", Route(body=outlet_feed(outlet, now)))
        sources.append({"name": f"Outlet {outlet}", "url": server.url(f"/o{outlet}")})
    outputs = """
    outputs:
      - slug: world
        title: World
        order: coverage
        max_age: 1d
      - slug: latest
        title: Latest
        max_age: 1d
    """
    config = write_config(tmp_path, sources, settings=f"database: {database_url}", outputs=outputs)
    # Polled one at a time, so outlet 0 carried every story first and leads it.
    for outlet in range(4):
        partial = write_config(tmp_path, sources[: outlet + 1], settings=f"database: {database_url}", outputs=outputs)
        assert main(["--config", str(partial), "poll", "--once"]) == 0
    feeds = tmp_path / "data" / "feeds"

    atom = (feeds / "world.atom").read_bytes()
    assert check_atom(atom) == []
    entries = feedparser.parse(atom).entries
    assert [e.link for e in entries] == [
        f"https://story.example/{s}" for s in ("wide", "pair-new", "pair-old", "alone")
    ]
    for entry, outlets in zip(entries, (3, 2, 2, 1), strict=True):
        assert f" · Reported by {outlets} outlet{'s' if outlets > 1 else ''}" in entry.content[0].value
    latest = [e.link for e in feedparser.parse((feeds / "latest.atom").read_bytes()).entries]
    assert latest == [f"https://story.example/{s}" for s in ("alone", "pair-new", "pair-old", "wide")]

    rss = (feeds / "world.rss").read_bytes()
    assert check_rss(rss) == []
    assert ["Reported by 3 outlets" in e.description for e in feedparser.parse(rss).entries] == [1, 0, 0, 0]
    doc = (feeds / "world.json").read_bytes()
    assert check_json_feed(doc) == []
    assert [item["_aggregator"]["outlets"] for item in json.loads(doc)["items"]] == [3, 2, 2, 1]
    page = (feeds / "world.html").read_text()
    assert page.count("Reported by 3 outlets") == 1 and page.count("Reported by 2 outlets") == 2

    # The store ranks stories by outlets within the window, so a small candidate limit still
    # finds the most widely carried story, however old within max_age.
    loaded = load_config(config).config
    engine = make_engine(loaded.settings.database_url)
    try:
        output = loaded.outputs[0]
        assert output.max_age is not None
        chosen = Store(engine).coverage_candidates(None, datetime.now(UTC) - output.max_age, limit=1)
    finally:
        engine.dispose()
    assert sorted(c.source_name for c in chosen) == ["Outlet 0", "Outlet 1", "Outlet 2"]
    assert {c.link for c in chosen} == {"https://story.example/wide"}
