"""Story clustering through the whole pipeline: outlets' feeds in, one World entry per story out.

The labelled items of tests/data/stories (see bench/dedup.py for the figures) are served
as one RSS feed per outlet; after a poll, items must be grouped into stories exactly as
labelled, and the World feed must show each story once with the other outlets related.

These sets were written for the lexical matcher (copies, and same-actor stories hours apart
kept separate), so they run with ``story_matching: lexical``; the semantic engine, which also
links independent reports, is tested through the pipeline in tests/test_stories_v2.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from datetime import datetime
from email.utils import format_datetime
from itertools import combinations
from pathlib import Path
from xml.sax.saxutils import escape

import feedparser
import pytest

from aggregator.cli import main
from tests.conftest import write_config
from tests.feedcheck import check_atom
from tests.server import FeedServer, Route

DATA = Path(__file__).parent / "data" / "stories"
TOPICS = ["quake-hokkaido.json", "ecb.json", "talks.json"]


def _rfc822(iso: str) -> str:
    return format_datetime(datetime.fromisoformat(iso.replace("Z", "+00:00")))


def outlet_feeds(items: list[dict[str, str]]) -> dict[str, bytes]:
    by_outlet: dict[str, list[dict[str, str]]] = defaultdict(list)
    for item in items:
        by_outlet[item["outlet"]].append(item)
    feeds: dict[str, bytes] = {}
    for outlet, entries in by_outlet.items():
        body = "".join(
            f"<item><title>{escape(e['title'])}</title><link>{escape(e['url'])}</link>"
            f"<guid isPermaLink='false'>{escape(e['id'])}</guid><description>{escape(e['summary'])}</description>"
            f"<pubDate>{_rfc822(e['published'])}</pubDate></item>"
            for e in entries
        )
        channel = (
            f"<title>{escape(outlet)}</title><link>https://{len(feeds)}.example/</link><description>d</description>"
        )
        feeds[outlet] = f"<rss version='2.0'><channel>{channel}{body}</channel></rss>".encode()
    return feeds


@pytest.mark.parametrize("topic", TOPICS)
def test_items_are_grouped_into_the_labelled_stories(topic: str, server: FeedServer, tmp_path: Path) -> None:
    items = json.loads((DATA / topic).read_text())["items"]
    sources = []
    for n, (outlet, body) in enumerate(outlet_feeds(items).items()):
        server.add(f"/o{n}", Route(body=body))
        sources.append({"name": f'"{outlet}"', "url": server.url(f"/o{n}")})
    config = write_config(tmp_path, sources, settings="story_matching: lexical")
    assert main(["--config", str(config), "poll", "--once"]) == 0

    with sqlite3.connect(tmp_path / "data" / "aggregator.db") as db:
        story_of = {guid: story for guid, story in db.execute("select guid, story_id from items")}
    label = {item["id"]: item["story"] for item in items}
    assert set(story_of) == set(label)
    wrong = [
        (a, b) for a, b in combinations(sorted(label), 2) if (label[a] == label[b]) != (story_of[a] == story_of[b])
    ]
    assert wrong == []

    atom = (tmp_path / "data" / "feeds" / "world.atom").read_bytes()
    assert check_atom(atom) == []
    entries = feedparser.parse(atom).entries
    assert len(entries) == len(set(label.values()))
    sizes = sorted(len([link for link in e.links if link.rel == "related"]) + 1 for e in entries)
    expected = sorted(len([i for i in items if i["story"] == story]) for story in set(label.values()))
    assert sizes == expected
