from __future__ import annotations

import contextlib
import gc
import socket
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.server import FeedServer

if TYPE_CHECKING:
    from aggregator.config import Config
    from aggregator.store.repository import Store


@pytest.fixture(autouse=True)
def collector_pace() -> Iterator[None]:
    """Each test ends with the garbage collector's pace it began with: tests run ``aggregator
    poll`` in this process, which sets a polling process's pace (``aggregator.collector``), and
    the rest of the session must not run at it unawares."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    srv = FeedServer().start()
    yield srv
    srv.stop()


def write_config(
    tmp_path: Path, sources: Sequence[Mapping[str, object]], *, settings: str = "", outputs: str | None = None
) -> Path:
    """A feeds.yaml in tmp_path with a real SQLite file beside it; private networks allowed (127.0.0.1)."""
    values = {
        "data_dir": str(tmp_path / "data"),
        "allow_private_networks": "true",
        "public_url": "http://feeds.test.example",
        "parse_workers": "0",
        "per_host_concurrency": "8",
        "connect_timeout": "2",
        "read_timeout": "2",
        "total_timeout": "5",
    }
    for line in textwrap.dedent(settings).strip().splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    lines = ["settings:"] + [f"  {key}: {value}" for key, value in values.items()]
    lines.append("sources:" if sources else "sources: []")
    for source in sources:
        first = True
        for field, given in source.items():
            rendered = f"[{', '.join(map(str, given))}]" if isinstance(given, list | tuple) else str(given)
            lines.append(f"  {'- ' if first else '  '}{field}: {rendered}")
            first = False
    if outputs is None:
        outputs = """
        outputs:
          - slug: world
            title: World
            max_entries: 10000
        """
    lines += textwrap.dedent(outputs).strip().splitlines()
    path = tmp_path / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


PG_ENV = "AGGREGATOR_TEST_DATABASE_URL"


def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database per test, created through $AGGREGATOR_TEST_DATABASE_URL."""
    import os
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    url = make_url(admin)
    name = f"agg_{uuid.uuid4().hex[:12]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STORES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""The stores a storage test runs on (``database_url``'s parameters)."""


def store_url(kind: str, directory: Path) -> Iterator[str]:
    """The database of a storage test on ``kind`` (one of ``STORES``): a real SQLite file in
    ``directory``, or a fresh PostgreSQL database (``postgres_database``)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'store.db'}"
    else:
        yield from postgres_database()


@pytest.fixture(params=STORES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage test runs on a real SQLite file and on a real PostgreSQL database."""
    yield from store_url(request.param, tmp_path)


@contextlib.contextmanager
def polled_once(
    tmp_path: Path, sources: Sequence[Mapping[str, object]], database_url: str, outputs: str, now: datetime
) -> Iterator[tuple[Config, Store]]:
    """A feeds.yaml of ``sources`` and ``outputs`` on ``database_url`` (a real SQLite file or
    PostgreSQL database), every source polled once at ``now`` through the real pipeline."""
    import asyncio

    from aggregator.config import load_config
    from aggregator.pipeline import Pipeline, poll_once
    from aggregator.store.database import ensure_schema, make_engine
    from aggregator.store.repository import Store

    config = load_config(write_config(tmp_path, sources, settings=f"database: {database_url}", outputs=outputs)).config
    engine = make_engine(database_url)
    ensure_schema(engine)
    store = Store(engine)
    try:
        store.sync_sources(config.source_specs(), now)
        asyncio.run(poll_once(Pipeline(config, store, clock=lambda: now), all_sources=True))
        yield config, store
    finally:
        engine.dispose()


@contextlib.contextmanager
def serving(store: Store, config: Config | None = None, *, revalidate: float = 0) -> Iterator[str]:
    """aggregator's HTTP app in a real uvicorn server on a free 127.0.0.1 port."""
    import uvicorn

    from aggregator.serve import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # revalidate=0 by default: tests publish and read back at once.
    app = create_app(store, config=(lambda: config) if config is not None else None, revalidate=revalidate)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def query_rows(database_url: str, sql: str) -> list[tuple[object, ...]]:
    """The rows of one SQL query on either backend, through a short-lived engine of its own."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


KEYS_OUT_OF_STEP = (
    "select k.item_id, k.story_id, i.story_id from item_match_keys k join items i on i.id = k.item_id"
    " where k.story_id is null or k.story_id <> i.story_id"
)
"""Story-matching key rows that do not name their item's story (``MatchKeyRow.story_id``): none
may, or a lookup by key finds a story the item has left."""


def items_per_source(database_url: str) -> dict[str, int]:
    """How many items each source holds, by source name (a source with none counts 0), counted
    in the items table; and checked against the count the sources table keeps of them
    (``SourceRow.item_count``), which every test counting a poll's items thereby checks too."""
    counts: dict[str, int] = {}
    kept: dict[str, int] = {}
    for name, count, item_count in query_rows(
        database_url,
        "select s.name, count(i.id), s.item_count from sources s left join items i on i.source_id = s.id"
        " group by s.name, s.item_count",
    ):
        assert isinstance(name, str) and isinstance(count, int) and isinstance(item_count, int), (name, count)
        counts[name], kept[name] = count, item_count
    assert kept == counts, "sources.item_count differs from the items stored"
    return counts
