"""Several workers, one database: every due source fetched exactly once, every story once.

Runs on both backends; on PostgreSQL the claim is FOR UPDATE SKIP LOCKED and the two
workers really overlap (separate threads, event loops, engines and connection pools).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

from sqlalchemy import Engine, text

from aggregator.config import load_config
from aggregator.pipeline import Pipeline, PollSummary, poll_once
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.server import FeedServer, Route
from tests.test_stories_v2 import ORIGINAL, UNRELATED

SOURCES, STORIES = 40, 10


def wire_feed(source: int) -> bytes:
    """Every source carries the same ten wire stories, under its own guids."""
    items = "".join(
        f"<item><title>Wire story {i}</title><guid isPermaLink='false'>src{source}-{i}</guid>"
        f"<link>https://wire.example/story/{i}?utm_medium=feed&amp;utm_source=o{source}</link>"
        f"<description>Body of story {i}</description></item>"
        for i in range(STORIES)
    )
    return f"<rss version='2.0'><channel><title>Outlet {source}</title><link>https://o{source}.example/</link>{items}</channel></rss>".encode()


def two_workers_poll(
    server: FeedServer, tmp_path: Path, database_url: str, feed: Callable[[int], bytes], concurrency: int
) -> tuple[Engine, list[PollSummary]]:
    """Serve ``SOURCES`` feeds (``feed`` gives source n's), and let two workers, each with an
    engine of its own, poll them all at the same moment. The database's engine and the workers'
    summaries; a worker's exception fails the test."""
    sources = []
    for n in range(SOURCES):
        server.add(f"/s{n}", Route(body=feed(n), delay=0.01))
        sources.append({"name": f"outlet {n}", "url": server.url(f"/s{n}")})
    config_path = write_config(tmp_path, sources, settings=f"database: {database_url}\nconcurrency: {concurrency}")
    config = load_config(config_path).config
    engine = make_engine(database_url)
    ensure_schema(engine)
    Store(engine).sync_sources(config.source_specs(), datetime.now(UTC))

    summaries: list[PollSummary] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        own_engine = make_engine(database_url)
        try:
            start.wait()
            pipeline = Pipeline(config, Store(own_engine), owner=name)
            summaries.append(asyncio.run(poll_once(pipeline)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            own_engine.dispose()

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    return engine, summaries


def test_two_workers_share_the_work_without_duplicates(server: FeedServer, tmp_path: Path, database_url: str) -> None:
    engine, summaries = two_workers_poll(server, tmp_path, database_url, wire_feed, 4)
    hits = Counter(r.path for r in server.requests)
    twice = {p: n for p, n in hits.items() if n > 1}
    assert twice == {}, "a source was fetched by both workers"
    assert len(hits) == SOURCES
    assert sum(s.polled for s in summaries) == SOURCES
    assert all(s.polled > 0 for s in summaries), "both workers must have taken a share"
    with engine.connect() as conn:
        items, distinct = conn.execute(
            text("select count(*), count(distinct source_id || ':' || key) from items")
        ).one()
        stories = conn.execute(text("select count(*) from stories")).scalar()
        per_story = conn.execute(text("select count(*) from items group by story_id")).scalars().all()
    engine.dispose()
    assert items == distinct == SOURCES * STORIES
    assert stories == STORIES  # the same canonical URL from 40 outlets is one story
    assert set(per_story) == {SOURCES}


def syndicated_feed(source: int) -> bytes:
    """Two wire reports, each published by every outlet at its own address under its own guid:
    only their text says they are one story."""
    items = "".join(
        f"<item><title>{escape(title)}</title><guid isPermaLink='false'>src{source}-{i}</guid>"
        f"<link>https://o{source}.example/news/{i}</link><description>{escape(lead)}</description></item>"
        for i, (title, lead) in enumerate((ORIGINAL, UNRELATED))
    )
    return f"<rss version='2.0'><channel><title>Outlet {source}</title><link>https://o{source}.example/</link>{items}</channel></rss>".encode()


def test_two_workers_committing_copies_at_once_store_each_story_once(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """Forty outlets carry the same two wire reports at addresses of their own, polled by two
    workers at once, each committing several polls side by side: each report is one story of
    forty items, however the commits interleave (each decides after the ones before it committed)."""
    engine, _ = two_workers_poll(server, tmp_path, database_url, syndicated_feed, 8)
    with engine.connect() as conn:
        per_story = conn.execute(text("select count(*) from items group by story_id")).scalars().all()
    engine.dispose()
    assert sorted(per_story) == [SOURCES, SOURCES]
