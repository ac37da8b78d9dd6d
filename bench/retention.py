"""Retention on a large SQLite database, with a poll waiting to write while it runs.

What runs
    A real SQLite file filled through the store's own ingest (``IngestTransaction.insert_items``)
    with ``--days`` days of ``--per-day`` items each from 100 sources: headlines and leads of
    the templated stream (``tests/templated.py``) with their stored story features, lead
    signatures and match keys, one story each, dated through the days. Then two passes of
    ``Store.prune`` with the default retention (90 days) as the daemon's daily job runs them:

    * the first, on the day the oldest items pass 90 days: it deletes the 14-day-old
      story-matching keys of every day before (a database whose keys were never trimmed, as
      one kept with ``retention: null`` before keys were trimmed whatever retention says) and
      the items older than 90 days;
    * the next day's, the steady state: a day of items and of keys.

    During the first, another connection makes a small write every ``--write-every`` seconds
    (``BEGIN IMMEDIATE``, one row updated, commit) with the service's busy timeout, as a
    poll's commit would.

What it prints
    For each pass: what it removed, its wall time, its transactions (how many, the longest,
    their sum: a transaction holds SQLite's only write lock until it ends), and for the first
    the waiting writes: how many, the longest and the median wait, and how many were refused.

Run:  .venv/bin/python bench/retention.py                       (120 days x 1,000 items: ~3 min)
      .venv/bin/python bench/retention.py --days 120 --per-day 8500   (~1M items: ~30 min)
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchsupport import load  # noqa: E402
from dedup import _bench_store, _matching_inputs, _new_items, templated_entries  # noqa: E402

from aggregator import stories  # noqa: E402
from aggregator.store import retention  # noqa: E402
from aggregator.store.database import SQLITE_BUSY_TIMEOUT_MS  # noqa: E402
from aggregator.store.repository import PruneReport, Store  # noqa: E402

KEEP = timedelta(days=90)
POLL = 50  # items per stored poll while filling


def fill(store: Store, start: datetime, days: int, per_day: int) -> int:
    """``days`` x ``per_day`` items through the store's ingest, from 6,000 templated entries
    used over and over under new keys and URLs; how many were stored."""
    base = sorted(templated_entries(events_per_day=1000, days=6, seed=3), key=lambda e: e.published_at)[:6000]
    signed, features, stored = _matching_inputs(base)
    count, polls = 0, max(1, per_day // POLL)
    for day in range(days):
        for poll in range(polls):
            at = start + timedelta(days=day, seconds=poll * 86400 // polls)
            chunk = [base[(count + n) % len(base)] for n in range(POLL)]
            dated = [
                replace(e, id=f"{e.id}-{count + n}", url=f"{e.url}?{count + n}", published_at=at)
                for n, e in enumerate(chunk)
            ]
            plan = _new_items(dated)
            inserts = tuple(
                replace(
                    new, match_signature=signed[e.id].stored, match_features=stored[e.id][0],
                    match_keys=stories.stored_keys(signed[e.id].keys, features[e.id]), match_reason="new story",
                )
                for new, e in zip(plan.inserts, chunk, strict=True)
            )  # fmt: skip
            with store.ingest() as tx:
                tx.insert_items(1 + poll % 100, inserts, at, "bench.example")
            count += POLL
    return count


@contextmanager
def timed_transactions(held: list[float]) -> Iterator[None]:
    """Record how long each of retention's transactions held its session."""
    original = retention.RetentionStore.session

    @contextmanager
    def session(self: retention.RetentionStore) -> Iterator[object]:
        started = time.perf_counter()
        with original(self) as s:
            yield s
        held.append(time.perf_counter() - started)

    retention.RetentionStore.session = session  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        retention.RetentionStore.session = original  # type: ignore[method-assign]


def waiting_writes(path: Path, every: float, done: threading.Event, waits: list[float], refused: list[str]) -> None:
    """A small write every ``every`` seconds until ``done``, each waiting for the lock as the
    service's connections do; how long each waited (or why it was refused)."""
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        while not done.wait(every):
            started = time.perf_counter()
            try:
                connection.execute("BEGIN IMMEDIATE")
                waits.append(time.perf_counter() - started)
                connection.execute("UPDATE sources SET error_count = error_count WHERE id = 1")
                connection.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                refused.append(str(exc))
    finally:
        connection.close()


def report(name: str, result: PruneReport, wall: float, held: list[float]) -> None:
    print(
        f"{name:<10} removed {result.items:,} items, {result.stories:,} stories, {result.match_keys:,} "
        f"story-matching keys in {wall:.1f} s; {len(held)} transactions, longest {max(held) * 1000:.0f} ms, "
        f"sum {sum(held):.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=120, help="days of items (more than 90, for some to expire)")
    parser.add_argument("--per-day", type=int, default=1000, help="items a day")
    parser.add_argument("--write-every", type=float, default=0.1, help="seconds between the waiting writes")
    args = parser.parse_args(argv)
    print(f"command      {' '.join(sys.argv)}  (Python {platform.python_version()}, SQLite {sqlite3.sqlite_version})")
    print(f"machine      load {load()}")
    with tempfile.TemporaryDirectory() as directory:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        engine, store = _bench_store(directory, 100, start)
        started = time.perf_counter()
        count = fill(store, start, args.days, args.per_day)
        mib = (Path(directory) / "aggregator.db").stat().st_size / 2**20
        took = time.perf_counter() - started
        print(f"database     {count:,} items over {args.days} days, {mib:,.0f} MiB, filled in {took:.0f} s")
        first_day = start + timedelta(days=args.days)
        for name, now, writes in (("first pass", first_day, True), ("next day", first_day + timedelta(days=1), False)):
            held: list[float] = []
            waits: list[float] = []
            refused: list[str] = []
            done = threading.Event()
            writer = threading.Thread(
                target=waiting_writes, args=(Path(directory) / "aggregator.db", args.write_every, done, waits, refused)
            )
            if writes:
                writer.start()
            with timed_transactions(held):
                began = time.perf_counter()
                result = store.prune(now, KEEP, set(), fetch_log_keep=timedelta(days=14))
                wall = time.perf_counter() - began
            done.set()
            if writes:
                writer.join()
            report(name, result, wall, held)
            if writes:
                print(
                    f"           waiting writes meanwhile: {len(waits)}, longest wait "
                    f"{max(waits, default=0) * 1000:.0f} ms, median {statistics.median(waits or [0]) * 1000:.1f} ms, "
                    f"refused {len(refused)}" + (f" ({refused[0]})" if refused else "")
                )
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
