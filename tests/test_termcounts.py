"""The writer's stream statistics (``storymatch._TermCounts``) keep the window's number of
stories for a while, because counting it reads the whole window. It must be counted again when
that while has passed since it was *counted* (not since the last poll that used it: steady
polling would otherwise keep the first count for ever), and when the stream has moved on by
``STORIES_KEPT_STREAM`` however little wall time passed (a first ingest reads days of backlog in
minutes). The transaction is a stand-in that counts its calls, and the clock is set by hand:
what is tested is when the count is read, over hours, not what the database returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator import stories, storymatch
from aggregator.store.matchkeys import TermCarriers

NOON = datetime(2026, 3, 3, 12, tzinfo=UTC)


class CountingTransaction:
    def __init__(self) -> None:
        self.counted = 0

    def term_stories(self, *_args: object) -> dict[int, frozenset[int]]:
        return {}

    def stories_in_window(self, *_args: object) -> int:
        self.counted += 1
        return 100 * self.counted


def total(counts: storymatch._TermCounts, tx: CountingTransaction, latest: datetime) -> int:
    stats, _ = counts.stats(tx, set(), latest - timedelta(days=3), latest)  # type: ignore[arg-type]
    return stats.stories


def test_the_story_count_is_kept_from_when_it_was_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("aggregator.storymatch.time.monotonic", lambda: clock[0])
    counts, tx = storymatch._TermCounts(), CountingTransaction()
    assert total(counts, tx, NOON) == 100
    kept = storymatch.COUNTS_KEPT.total_seconds()
    for step in range(1, 6):  # polls every fifth of the while keep using it...
        clock[0] += kept / 5 - 1
        assert total(counts, tx, NOON + timedelta(minutes=step)) == 100
    clock[0] += 10
    assert total(counts, tx, NOON + timedelta(minutes=6)) == 200  # ...until the while since counting has passed
    assert tx.counted == 2


def test_the_story_count_is_read_again_when_the_stream_moves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aggregator.storymatch.time.monotonic", lambda: 1000.0)  # a backlog: no wall time passes
    counts, tx = storymatch._TermCounts(), CountingTransaction()
    later = NOON + storymatch.STORIES_KEPT_STREAM
    assert [total(counts, tx, at) for at in (NOON, later - timedelta(minutes=1), later + timedelta(minutes=1))] == [
        100,
        100,
        200,
    ]
    assert total(counts, tx, later + timedelta(minutes=2)) == 200
    assert tx.counted == 2


def test_a_count_is_kept_for_each_stretch_of_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first ingest's backlog polls weigh items of many days each, feed after feed: a day
    counted once is not counted again for the next feed that comes back to it."""
    monkeypatch.setattr("aggregator.storymatch.time.monotonic", lambda: 1000.0)
    counts, tx = storymatch._TermCounts(), CountingTransaction()
    week_on = NOON + timedelta(days=7)
    assert [total(counts, tx, at) for at in (NOON, week_on, NOON + timedelta(minutes=30), week_on)] == [
        100,
        200,
        100,
        200,
    ]
    assert tx.counted == 2


def test_the_counts_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aggregator.storymatch.time.monotonic", lambda: 1000.0)  # none expires
    counts, tx = storymatch._TermCounts(), CountingTransaction()
    days = storymatch.STORY_COUNTS_KEPT + 10
    for day in range(days):
        total(counts, tx, NOON + timedelta(days=day))
    assert len(counts._stories) <= storymatch.STORY_COUNTS_KEPT
    assert total(counts, tx, NOON + timedelta(days=days - 1)) == 100 * days  # the newest is still kept
    assert tx.counted == days


class AheadTransaction:
    """A window in which a term's stories partly begin after the moment it is counted at."""

    def __init__(self) -> None:
        self.windows: list[tuple[datetime, datetime]] = []  # counted over
        self.looked_up: list[tuple[datetime, datetime, int]] = []

    def term_stories(
        self, keys: list[int], earliest: datetime, latest: datetime, sample: int, until: datetime
    ) -> dict[int, TermCarriers]:
        self.windows.append((earliest, until))
        self.looked_up.append((earliest, latest, sample))
        return {key: TermCarriers(frozenset({1, 2, 3}), frozenset({1})) for key in keys}

    def stories_in_window(self, earliest: datetime, latest: datetime) -> int:
        self.windows.append((earliest, latest))
        return 40


def test_terms_are_counted_as_of_the_moment_given_and_stories_looked_up_beyond_it() -> None:
    """An item published at noon is weighed against the stream as it was at noon, as the stream in
    memory weighs it, even where a first ingest has stored the hours after it already; the
    stories of those hours are still looked up, since it may join one of them."""
    tx = AheadTransaction()
    stats, carriers = storymatch._TermCounts().stats(
        tx,  # type: ignore[arg-type]
        {7},
        NOON - timedelta(days=3),
        NOON + timedelta(hours=12),
        until=NOON,
    )
    assert carriers == {7: frozenset({1, 2, 3})}
    assert stats.stories == 40 and stats.weight(7) == stories.TermStats(40, {7: 1}).weight(7)
    assert set(tx.windows) == {(NOON - timedelta(days=3), NOON)}
    assert tx.looked_up == [(NOON - timedelta(days=3), NOON + timedelta(hours=12), storymatch.TERM_SAMPLE)]
