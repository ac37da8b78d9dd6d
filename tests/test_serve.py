"""The HTTP side, over a real uvicorn server on 127.0.0.1: feeds with validators, gzip, health."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text

from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import serving

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ATOM = b"<?xml version='1.0'?><feed xmlns='http://www.w3.org/2005/Atom'>" + b"<!-- padding -->" * 200 + b"</feed>"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def base_url(store: Store) -> Iterator[str]:
    with serving(store) as url:
        yield url


def test_feed_is_served_with_type_and_validators(store: Store, base_url: str) -> None:
    store.save_published("world", "atom", "application/atom+xml; charset=utf-8", ATOM, '"abc"', NOW)
    response = httpx.get(f"{base_url}/feeds/world.atom", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert response.headers["etag"] == '"abc"'
    assert response.headers["last-modified"] == "Thu, 26 Nov 2026 12:00:00 GMT"
    assert response.content == ATOM


def test_conditional_requests_get_304(store: Store, base_url: str) -> None:
    store.save_published("world", "atom", "application/atom+xml", ATOM, '"abc"', NOW)
    url = f"{base_url}/feeds/world.atom"
    assert httpx.get(url, headers={"If-None-Match": '"abc"'}).status_code == 304
    assert httpx.get(url, headers={"If-None-Match": 'W/"abc", "other"'}).status_code == 304
    assert httpx.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    assert httpx.get(url, headers={"If-Modified-Since": "Thu, 26 Nov 2026 12:00:00 GMT"}).status_code == 304
    assert httpx.get(url, headers={"If-Modified-Since": "Thu, 26 Nov 2026 11:59:59 GMT"}).status_code == 200
    # A new rendering changes the validator: the old one no longer matches.
    store.save_published("world", "atom", "application/atom+xml", ATOM + b" ", '"def"', NOW)
    response = httpx.get(url, headers={"If-None-Match": '"abc"', "Accept-Encoding": "identity"})
    assert response.status_code == 200 and response.headers["etag"] == '"def"'


def test_gzip_has_its_own_etag_and_still_revalidates(store: Store, base_url: str) -> None:
    store.save_published("world", "atom", "application/atom+xml", ATOM, '"abc"', NOW)
    url = f"{base_url}/feeds/world.atom"
    with httpx.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as raw:
        compressed = b"".join(raw.iter_raw())
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["etag"] == '"abc-gz"'
    assert raw.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(compressed) == ATOM
    assert int(raw.headers["content-length"]) == len(compressed) < len(ATOM)
    assert httpx.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": '"abc-gz"'}).status_code == 304


def test_unknown_outputs_and_formats_are_404(store: Store, base_url: str) -> None:
    assert httpx.get(f"{base_url}/feeds/nothing.atom").status_code == 404
    store.save_published("world", "atom", "application/atom+xml", ATOM, '"abc"', NOW)
    assert httpx.get(f"{base_url}/feeds/world.exe").status_code == 404


def test_healthz_reports_the_database(base_url: str) -> None:
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_healthz_reads_the_tables_and_fails_when_they_cannot_be_read(store: Store, base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE item_match_keys"))
        connection.execute(text("DROP TABLE items"))
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "failing" and "items" in response.json()["database"]


def test_metrics_expose_counters_and_database_gauges(base_url: str) -> None:
    from aggregator import metrics

    metrics.POLLS.labels("new").inc()
    response = httpx.get(f"{base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'aggregator_polls_total{outcome="new"}' in text
    assert "aggregator_fetch_duration_seconds_bucket" in text
    assert "aggregator_story_turn_wait_seconds_bucket" in text
    assert "aggregator_items 0.0" in text
    assert "aggregator_scheduler_lag_seconds 0.0" in text


def test_html_page_is_served_with_a_strict_content_security_policy(store: Store, base_url: str) -> None:
    page = b"<!doctype html><title>World</title>"
    store.save_published("world", "html", "text/html; charset=utf-8", page, '"p1"', NOW)
    response = httpx.get(f"{base_url}/feeds/world")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "script-src" not in response.headers["content-security-policy"]
    assert httpx.get(f"{base_url}/feeds/world", headers={"If-None-Match": '"p1"'}).status_code == 304


def test_a_change_within_the_same_second_still_moves_last_modified(store: Store, base_url: str) -> None:
    """Readers that send only If-Modified-Since (newsboat does) must not miss a quick change."""
    store.save_published("world", "atom", "application/atom+xml", ATOM, '"one"', NOW)
    first = httpx.get(f"{base_url}/feeds/world.atom").headers["last-modified"]
    store.save_published("world", "atom", "application/atom+xml", ATOM + b" ", '"two"', NOW)
    response = httpx.get(f"{base_url}/feeds/world.atom", headers={"If-Modified-Since": first})
    assert response.status_code == 200
    assert response.headers["last-modified"] != first


def test_head_and_304_carry_the_validators_but_no_body(store: Store, base_url: str) -> None:
    store.save_published("world", "atom", "application/atom+xml", ATOM, '"abc"', NOW)
    url = f"{base_url}/feeds/world.atom"
    head = httpx.head(url, headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(ATOM)
    assert head.headers["etag"] == '"abc"'
    gzipped_head = httpx.head(url, headers={"Accept-Encoding": "gzip"})
    assert gzipped_head.headers["etag"] == '"abc-gz"' and gzipped_head.headers["content-encoding"] == "gzip"
    assert int(gzipped_head.headers["content-length"]) < len(ATOM)
    for encoding, etag in (("identity", '"abc"'), ("gzip", '"abc-gz"')):
        response = httpx.get(url, headers={"Accept-Encoding": encoding, "If-None-Match": '"abc"'})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == "public, max-age=60"
        assert response.headers["vary"] == "Accept-Encoding"
        assert "content-encoding" not in response.headers


def test_a_busy_server_answers_from_memory_within_the_revalidation_period(store: Store) -> None:
    """Within ``revalidate`` seconds a feed is answered without asking the database; after it, the
    new rendering is seen."""
    store.save_published("world", "atom", "application/atom+xml", ATOM, '"one"', NOW)
    with serving(store, revalidate=3600) as url:
        identity = {"Accept-Encoding": "identity"}
        assert httpx.get(f"{url}/feeds/world.atom", headers=identity).headers["etag"] == '"one"'
        store.save_published("world", "atom", "application/atom+xml", ATOM + b" ", '"two"', NOW)
        assert httpx.get(f"{url}/feeds/world.atom", headers={"If-None-Match": '"one"'}).status_code == 304
    with serving(store, revalidate=3600) as url:
        assert httpx.get(f"{url}/feeds/world.atom", headers=identity).headers["etag"] == '"two"'


def test_other_paths_still_reach_the_router(base_url: str) -> None:
    assert httpx.post(f"{base_url}/feeds/world.atom").status_code == 405
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    assert httpx.get(f"{base_url}/nowhere").status_code == 404


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts connections and never answers: a network
    partition or a hung host, as a client sees it."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/silent"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_database_that_stops_answering_is_reported_not_waited_for(silent_database: str) -> None:
    import subprocess
    import sys
    import time

    from aggregator.serve import HEALTH_DATABASE_SECONDS
    from aggregator.store.database import POSTGRESQL_CONNECT_SECONDS

    # /healthz answers 503 within its bound, however long the query would wait.
    engine = make_engine(f"{silent_database}?connect_timeout=60")
    with serving(Store(engine)) as url:
        started = time.monotonic()
        response = httpx.get(f"{url}/healthz", timeout=30)
        assert time.monotonic() - started < HEALTH_DATABASE_SECONDS + 5
        assert response.status_code == 503
        assert response.json()["database"] == f"no answer within {HEALTH_DATABASE_SECONDS:g} s"
    # A command fails within the connect timeout, with one line, instead of hanging on the connect.
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "sources"],
        env={**__import__("os").environ, "AGGREGATOR_DATABASE_URL": silent_database},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < POSTGRESQL_CONNECT_SECONDS + 15
    assert done.returncode == 2 and done.stderr.startswith("aggregator: cannot reach the database"), done.stderr
    assert done.stderr.count("\n") == 1
