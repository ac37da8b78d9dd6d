"""The foundation's acceptance, checked from outside: CLI, real HTTP server, real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import feedparser
import pytest

from aggregator.cli import main
from tests.conftest import write_config
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
    first_ids = [e.id for e in feedparser.parse(first_bytes).entries]
    assert len(first_ids) == FEEDS * ITEMS  # every story once (no two feeds share a URL here)
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
