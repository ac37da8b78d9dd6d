"""One source's trouble stays its own: regressions and the per-source fault boundary.

Driven from outside where it can be: the ``aggregator`` CLI (``poll --once --all``) against a
real HTTP server and a real database (SQLite file and PostgreSQL), the stored state read back.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from aggregator.cli import main
from tests.conftest import write_config
from tests.feeds import rss2
from tests.server import FeedServer

ITEMS_PER_SOURCE = "select s.name, count(i.id) from sources s left join items i on i.source_id = s.id group by s.name"
STORIES_OF_POD = (
    "select count(distinct story_id) from items i join sources s on s.id = i.source_id where s.name = 'pod'"
)


def _rows(database_url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def shared_link_rss(count: int) -> bytes:
    """A link blog / podcast shape: every entry has its own guid but the same link."""
    items = "".join(
        f"<item><title>Episode {n}</title><link>https://pod.example.com/</link>"
        f"<guid isPermaLink='false'>episode-{n}</guid><description>Show notes {n}</description></item>"
        for n in range(count)
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Pod</title>"
        f"<link>https://pod.example.com/</link>{items}</channel></rss>"
    ).encode()


def poll_all(config: Path) -> int:
    return main(["--config", str(config), "poll", "--once", "--all"])


def test_new_items_sharing_a_link_are_all_stored_and_the_run_goes_on(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """Defect 1: two new items with one link made insert_items compare Items (TypeError), which
    aborted the whole `poll --once --all` run after that source."""
    sources = [{"name": "pod", "url": server.add("/pod", body=shared_link_rss(3))}]
    sources += [{"name": f"news {n}", "url": server.add(f"/news{n}", body=rss2(n, 4))} for n in range(3)]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")

    assert poll_all(config) == 0
    counts = dict(_rows(database_url, ITEMS_PER_SOURCE))
    assert counts == {"pod": 3, "news 0": 4, "news 1": 4, "news 2": 4}
    # The three episodes are one story (one canonical URL), as the story rule says.
    stories = _rows(database_url, STORIES_OF_POD)
    assert stories == [(1,)]
    errors = _rows(database_url, "select name, error_count, last_error from sources where error_count > 0")
    assert errors == []
