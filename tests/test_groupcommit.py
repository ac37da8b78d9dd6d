"""Group commit: fetch results share transactions, all or nothing, and one bad result costs only itself.

The batching itself is checked on ``GroupCommit`` alone (plain asyncio, no database); the
rest drives the real ``aggregator`` (in process, or as a process killed with SIGKILL) against
a real HTTP server and a real SQLite file or PostgreSQL database, and reads the state back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aggregator import groupcommit, metrics
from aggregator.cli import main
from aggregator.groupcommit import GroupCommit
from aggregator.store.database import make_engine
from aggregator.store.repository import IngestTransaction, Store
from tests.conftest import items_per_source, query_rows, serving, write_config
from tests.feeds import any_dialect, rss2
from tests.server import FeedServer, Route
from tests.test_daemon import aggregator, free_port, wait_for

ITEMS = 4


def _sample(collector: Any, name: str, labels: dict[str, str] | None = None) -> float:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry.get_sample_value(name, labels or {}) or 0.0


# --- the batching -------------------------------------------------------------------------------
class Recorder:
    """A ``run`` that records its batches and fails the calls whose argument is negative."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, batch: list[int]) -> list[int | Exception]:
        self.batches.append(batch)
        await self.gate.wait()
        return [ValueError(f"bad {n}") if n < 0 else n * 10 for n in batch]


def test_waiting_calls_go_together_bounded_by_count_and_each_gets_its_own_outcome() -> None:
    async def scenario() -> tuple[Recorder, list[Any]]:
        run = Recorder()
        group: GroupCommit[int, int] = GroupCommit(run, slots=1, max_batch=4, max_delay=60)
        run.gate.clear()  # the writer is busy with the first batch until the gate opens
        first = asyncio.ensure_future(group.submit(100))
        calls = [asyncio.ensure_future(group.submit(n)) for n in (1, -2, 3, 4, 5, 6)]
        while len(run.batches) < 1:  # full at four: it goes at once, not after the minute
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(run.batches) == 1  # one slot: the other three wait for it
        # Three are less than a batch, so they wait for the delay: shortened, not to wait a minute.
        group.max_delay = 0
        run.gate.set()
        outcomes = await asyncio.gather(first, *calls, return_exceptions=True)
        return run, outcomes

    run, outcomes = asyncio.run(scenario())
    assert run.batches == [[100, 1, -2, 3], [4, 5, 6]]
    assert outcomes[0] == 1000 and outcomes[1] == 10 and outcomes[3:] == [30, 40, 50, 60]
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "bad -2"


def test_a_call_cancelled_before_its_batch_starts_is_left_out() -> None:
    async def scenario() -> Recorder:
        run = Recorder()
        group: GroupCommit[int, int] = GroupCommit(run, slots=1, max_batch=10, max_delay=0.05)
        kept = asyncio.ensure_future(group.submit(1))
        dropped = asyncio.ensure_future(group.submit(2))
        await asyncio.sleep(0)
        dropped.cancel()
        assert await kept == 10
        return run

    run = asyncio.run(scenario())
    assert run.batches == [[1]]

    # The same GroupCommit on a new event loop (each asyncio.run) starts afresh.

    async def again() -> int:
        return await group_again.submit(3)

    group_again: GroupCommit[int, int] = GroupCommit(Recorder(), slots=1, max_delay=0)
    assert asyncio.run(again()) == 30
    assert asyncio.run(again()) == 30


def test_a_claim_on_the_writer_thread_waits_for_one_batch_at_most() -> None:
    """Batches never queue up on the writer: a claim sent there meanwhile runs after the batch
    in progress (and at most one that was about to start), not after all the waiting results."""
    writer = ThreadPoolExecutor(max_workers=1)
    ran: list[str] = []

    def commit(batch: list[int]) -> list[int | Exception]:
        ran.append("batch")
        time.sleep(0.02)  # a slow transaction, so results pile up behind it
        return list(batch)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()

        async def run(batch: list[int]) -> list[int | Exception]:
            return await loop.run_in_executor(writer, commit, batch)

        group: GroupCommit[int, int] = GroupCommit(run, slots=1, max_batch=4, max_delay=0)
        calls = [asyncio.ensure_future(group.submit(n)) for n in range(40)]
        while not ran:
            await asyncio.sleep(0.001)
        before = len(ran)
        await loop.run_in_executor(writer, ran.append, "claim")
        assert await asyncio.gather(*calls) == list(range(40))
        return before

    try:
        before = asyncio.run(scenario())
    finally:
        writer.shutdown()
    assert ran.count("batch") == 10
    assert ran.index("claim") <= before + 1


# --- one bad result in a batch ------------------------------------------------------------------
BAD_FEED = 99  # rss2(BAD_FEED, …) items link to https://news.example.com/feed99/…


def test_a_batch_with_one_failing_result_commits_the_others(
    server: FeedServer, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    feeds = 6
    sources = [{"name": "bad", "url": server.add("/bad", body=rss2(BAD_FEED, 3))}]
    sources += [{"name": f"news {n}", "url": server.add(f"/news{n}", body=rss2(n, ITEMS))} for n in range(feeds)]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    # Every result in one batch: it goes when all of them wait (or after a minute, which fails the test).
    monkeypatch.setattr(groupcommit, "MAX_BATCH", feeds + 1)
    monkeypatch.setattr(groupcommit, "MAX_DELAY", 60.0)
    real_insert = IngestTransaction.insert_items

    def insert(self: IngestTransaction, source_id: int, new: Any, *args: Any, **kwargs: Any) -> Any:
        inserted = real_insert(self, source_id, new, *args, **kwargs)
        if any(f"/feed{BAD_FEED}/" in (n.item.link or "") for n in new):
            raise ZeroDivisionError("boom in store")  # after its rows went in: they must be rolled back
        return inserted

    monkeypatch.setattr(IngestTransaction, "insert_items", insert)
    retried = _sample(metrics.COMMIT_BATCH_RETRIES, "aggregator_commit_batch_retries_total")
    alone = _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_bucket", {"le": "1.0"})
    committed = _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_count")
    started = time.monotonic()

    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    assert time.monotonic() - started < 50, "the batch went on its delay, not when full"
    counts = items_per_source(database_url)
    assert counts == {"bad": 0, **{f"news {n}": ITEMS for n in range(feeds)}}
    state = query_rows(database_url, "select name, error_count, last_error, lease_owner from sources order by name")
    assert state[0] == ("bad", 1, "ZeroDivisionError: boom in store", None)
    assert all(errors == 0 and error is None and lease is None for _, errors, error, lease in state[1:])
    logged = query_rows(database_url, "select count(*), count(distinct source_id) from fetch_log")
    assert logged == [(feeds + 1, feeds + 1)]  # the bad source's row is its fault record
    # One batch of all seven was tried and rolled back, then each result went alone: six commits of
    # one result (the bad one's fault record is written apart), and no other transaction.
    assert _sample(metrics.COMMIT_BATCH_RETRIES, "aggregator_commit_batch_retries_total") == retried + 1
    assert _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_bucket", {"le": "1.0"}) == alone + feeds
    assert _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_count") == committed + feeds

    # Without the fault the next poll batches everything and commits it whole.
    monkeypatch.setattr(IngestTransaction, "insert_items", real_insert)
    wide = _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_bucket", {"le": "8.0"})
    narrow = _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_bucket", {"le": "4.0"})
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    assert items_per_source(database_url)["bad"] == 3
    # A transaction of 5-8 results: all seven (304s for the six, the bad one's items at last).
    assert _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_bucket", {"le": "8.0"}) - wide == 1
    assert _sample(metrics.COMMIT_BATCH_SIZE, "aggregator_commit_batch_size_bucket", {"le": "4.0"}) == narrow
    assert query_rows(database_url, "select count(*) from sources where lease_owner is not null") == [(0,)]


# --- kill -9 mid-batch --------------------------------------------------------------------------
def _batched(metrics_url: str) -> bool:
    """Whether the daemon has committed a transaction holding more than one fetch result."""
    try:
        body = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return False
    for family in text_string_to_metric_families(body):
        if family.name == "aggregator_commit_batch_size":
            buckets = {s.labels.get("le"): s.value for s in family.samples if s.name.endswith("_bucket")}
            return buckets.get("+Inf", 0) > buckets.get("1.0", 0)
    return False


def test_kill_9_during_a_batched_ingest_loses_nothing_and_duplicates_nothing(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    feeds = 160
    for n in range(feeds):
        server.add(f"/f{n}", Route(body=any_dialect(n, ITEMS), etag=f'"{n}"', delay=0.1))
    sources = [{"name": f"feed {n}", "url": server.url(f"/f{n}")} for n in range(feeds)]
    port = free_port()
    # Lexical matching: the generated items are one template with other numbers, which semantic
    # matching may take as reports of one event, and the count below is of one entry per item.
    settings = (
        f"database: {database_url}\nlisten: 127.0.0.1:{port}\nconcurrency: 8\ntick_seconds: 0.2\n"
        "story_matching: lexical"
    )
    config = write_config(tmp_path, sources, settings=settings)
    daemon = aggregator("--config", str(config), "run", cwd=tmp_path)
    try:
        wait_for(lambda: _batched(f"http://127.0.0.1:{port}/metrics"), timeout=60)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    log = (tmp_path / "daemon.log").read_text()
    per_source = {
        source: n for source, n in query_rows(database_url, "select source_id, count(*) from items group by source_id")
    }
    logged = {row[0] for row in query_rows(database_url, "select distinct source_id from fetch_log")}
    assert 0 < len(logged) < feeds, f"the kill must land mid-ingest for this test to mean anything\n{log}"
    # A fetch result is whole or absent: every logged source has all its items, no other has any.
    assert set(per_source) == logged
    assert set(per_source.values()) == {ITEMS}
    # The uncommitted ones were not marked fetched either: no validators, no body hash, still leased.
    unfinished = query_rows(
        database_url, "select count(*) from sources where etag is not null or body_hash is not null"
    )
    assert unfinished == [(len(logged),)]

    # A re-poll (the dead daemon's leases are released: same host, its pid is gone) finishes the
    # job: every item once, and the served feed holds exactly them.
    finished = aggregator("--config", str(config), "poll", "--once", "--all", cwd=tmp_path)
    assert finished.wait(timeout=120) == 0, (tmp_path / "daemon.log").read_text()
    assert query_rows(database_url, "select count(*), count(distinct source_id || ':' || key) from items") == [
        (feeds * ITEMS, feeds * ITEMS)
    ]
    assert query_rows(database_url, "select count(*) from sources where lease_owner is not null") == [(0,)]
    engine = make_engine(database_url)
    try:
        with serving(Store(engine)) as base:
            response = httpx.get(f"{base}/feeds/world.atom", timeout=10)
    finally:
        engine.dispose()
    assert response.status_code == 200
    entries = feedparser.parse(response.content).entries
    assert len(entries) == feeds * ITEMS
    assert len({e.link for e in entries}) == feeds * ITEMS
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
