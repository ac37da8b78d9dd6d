"""``decide_poll`` is pure: a claimed source, its fetch result, the parsed document and what the
store said go in, a ``PollPlan`` comes out. No database and no network here: every row of the
table is one kind of poll, and what it must change."""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.poll import RATE_WINDOW, Polled, PollLookups, PollPlan, decide_poll, ingest_plan, items_per_day
from aggregator.records import (
    ClaimedSource,
    FetchResult,
    IngestPlan,
    Item,
    NewItem,
    ParsedFeed,
    SourceToFetch,
    StoredItem,
)
from aggregator.schedule import HostSource, ScheduleSettings, host_needs_check, host_of

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
URL = "https://news.example.com/feed"
SETTINGS = ScheduleSettings(
    default_interval=HOUR,
    min_interval=timedelta(minutes=5),
    max_interval=timedelta(hours=6),
    max_backoff=timedelta(hours=24),
    retire_after=timedelta(days=7),
)


def _source(
    *, errors: int = 0, failing_since: datetime | None = None, rate: float | None = None, source_id: int = 1
) -> ClaimedSource:
    return ClaimedSource(
        fetch=SourceToFetch(source_id, "news", URL),
        body_hash="old",
        error_count=errors,
        interval_seconds=None,
        tags=("world",),
        items_per_day=rate,
        failing_since=failing_since,
    )


def _item(key: str, fingerprint: str = "f1", *, url: str | None = None, at: datetime | None = NOW) -> Item:
    return Item(
        key=key,
        guid=key,
        link=url,
        canonical_url=url,
        title=f"title {key}",
        summary_html="",
        content_html="",
        text="",
        author=None,
        categories=(),
        published_at=at,
        updated_at=None,
        fingerprint=fingerprint,
    )


def _feed(*items: Item, ttl: int | None = None) -> ParsedFeed:
    return ParsedFeed("News", "https://news.example.com/", None, ttl, None, items)


def _ok(status: int = 200, *, cache_control: str | None = None, permanent_url: str | None = None) -> FetchResult:
    body = b"<rss/>" if status == 200 else None
    return FetchResult(1, URL, NOW, status, body, cache_control=cache_control, permanent_url=permanent_url)


def _failed(status: int | None, error: str, *, retryable: bool = True, retry_after: str | None = None) -> FetchResult:
    return FetchResult(1, URL, NOW, status, error=error, retryable=retryable, retry_after=retry_after)


STORED = StoredItem(id=5, key="a", fingerprint="f1", story_id=50, update_count=0)
JOINED = IngestPlan((NewItem(_item("b"), 88, match_reason="joined story 88: same names"),), (), 0)


@dataclass(frozen=True)
class Case:
    id: str
    polled: Polled
    lookups: PollLookups = field(default_factory=PollLookups)
    outcome: str = "unchanged"
    inserts: tuple[tuple[str, int | None], ...] = ()  # (key, story joined)
    updates: tuple[str, ...] = ()
    error_count: int = 0
    reason: str = "interval"  # how the next poll's reason starts
    error: str | None = None  # last_error as recorded


CASES = [
    Case(
        "retired: permanent failure",
        Polled(_source(errors=2), _failed(410, "HTTP 410 Gone", retryable=False)),
        outcome="retired",
        error_count=3,
        reason="retired: HTTP 410 Gone",
        error="HTTP 410 Gone",
    ),
    Case(
        "retired: failing longer than retire_after",
        Polled(_source(errors=40, failing_since=NOW - timedelta(days=8)), _failed(500, "HTTP 500")),
        outcome="retired",
        error_count=41,
        reason="retired: no successful poll since 2026-11-12 12:00Z",
        error="no successful poll since 2026-11-12 12:00Z (settings.retire_after: 7d); last error: HTTP 500",
    ),
    Case(
        "error: server error backs off",
        Polled(_source(errors=2, failing_since=NOW - HOUR), _failed(500, "HTTP 500")),
        outcome="error",
        error_count=3,
        reason="backoff after 3 errors",
        error="HTTP 500",
    ),
    Case(
        "error: a body that does not parse",
        Polled(_source(), _ok(), parse_error="not a feed: no <rss> or <feed>", body_hash="new"),
        outcome="error",
        error_count=1,
        reason="backoff after 1 error",
        error="not a feed: no <rss> or <feed>",
    ),
    Case(
        "304: not modified keeps the measured rate",
        Polled(_source(rate=48.0, errors=1), _ok(304)),
        outcome="not_modified",
        reason="adaptive (48.0 items/day)",
    ),
    Case("unchanged: same body as last time", Polled(_source(), _ok(), body_hash="old")),
    Case(
        "unchanged: parsed, every item stored as it is",
        Polled(_source(), _ok(), _feed(_item("a")), body_hash="new"),
        PollLookups(stored={"a": STORED}),
    ),
    Case(
        "unchanged: an item retention deleted does not come back",
        Polled(_source(), _ok(), _feed(_item("gone")), body_hash="new"),
        PollLookups(deleted_keys=frozenset({"gone"})),
    ),
    Case(
        "new: items not stored start stories",
        Polled(_source(), _ok(), _feed(_item("a"), _item("b")), body_hash="new"),
        outcome="new",
        inserts=(("a", None), ("b", None)),
        reason="adaptive (0.3 items/day)",
    ),
    Case(
        "updated: a stored item whose content changed",
        Polled(_source(), _ok(), _feed(_item("a", "f2")), body_hash="new"),
        PollLookups(stored={"a": STORED}, recent_items=14),
        outcome="updated",
        updates=("a",),
        reason="adaptive (2.0 items/day)",
    ),
    Case(
        "joined by URL: a new item whose canonical URL another source carries",
        Polled(_source(), _ok(), _feed(_item("b", url="https://example.org/story")), body_hash="new"),
        PollLookups(stories_by_url={"https://example.org/story": 77}),
        outcome="new",
        inserts=(("b", 77),),
        reason="adaptive (0.1 items/day)",
    ),
    Case(
        "joined by text: story matching's plan is what gets inserted",
        Polled(_source(), _ok(), _feed(_item("b")), body_hash="new"),
        PollLookups(matched=JOINED),
        outcome="new",
        inserts=(("b", 88),),
        reason="adaptive (0.1 items/day)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_what_one_poll_changes(case: Case) -> None:
    plan = decide_poll(case.polled, case.lookups, SETTINGS, NOW, random.Random(1))
    record = plan.record

    assert plan.outcome == record.outcome == case.outcome
    assert [(n.item.key, n.story_id) for n in plan.inserts] == list(case.inserts)
    assert [u.item.key for u in plan.updates] == list(case.updates)
    assert (record.items_new, record.items_updated) == (len(case.inserts), len(case.updates))
    assert record.error_count == case.error_count
    assert record.next_poll_reason.startswith(case.reason), record.next_poll_reason
    assert plan.result.error == case.error
    if case.outcome == "retired":
        assert record.next_poll_at is None
        assert record.retired_reason == case.error
    else:
        assert record.next_poll_at is not None and record.next_poll_at > NOW
    parsed = case.polled.parsed is not None and case.outcome != "error"
    assert record.parsed is parsed
    assert record.body_hash == (case.polled.body_hash if case.outcome not in ("error", "retired") else None)
    assert (record.feed_title == "News") is parsed
    assert not plan.postpone and plan.host_held_until is None
    [line] = plan.log  # one line per poll, at the level its outcome deserves
    level = {"retired": logging.ERROR, "error": logging.WARNING}.get(case.outcome, logging.INFO)
    assert line.level == level
    assert line.extra is not None and line.extra["outcome"] == case.outcome


def test_a_joined_item_keeps_the_reason_story_matching_gave() -> None:
    polled = Polled(_source(), _ok(), _feed(_item("b")), body_hash="new")
    [new] = decide_poll(polled, PollLookups(matched=JOINED), SETTINGS, NOW).inserts
    assert new.match_reason == "joined story 88: same names"


def test_the_plan_story_matching_starts_from_is_the_ingest_decision() -> None:
    parsed = _feed(_item("a", "f2"), _item("b", url="https://example.org/s"), _item("gone"))
    lookups = PollLookups(
        deleted_keys=frozenset({"gone"}), stored={"a": STORED}, stories_by_url={"https://example.org/s": 7}
    )
    plan = ingest_plan(parsed, lookups)
    assert [(n.item.key, n.story_id) for n in plan.inserts] == [("b", 7)]
    assert [u.item.key for u in plan.updates] == ["a"]
    assert ingest_plan(None, lookups) == IngestPlan((), (), 0)


def test_an_item_retention_deleted_under_its_former_key_does_not_come_back() -> None:
    from aggregator.poll import deleted_item_keys, lookup_keys, stored_by_item_key

    moved = replace(_item("id:1"), former_key="id:https://example.org/1")
    assert lookup_keys([moved, _item("id:2")]) == ["id:1", "id:https://example.org/1", "id:2"]
    items = (moved, _item("id:2"))
    gone = deleted_item_keys(items, {"id:https://example.org/1"})
    plan = ingest_plan(_feed(*items), PollLookups(deleted_keys=gone))
    assert [n.item.key for n in plan.inserts] == ["id:2"]
    # Found under its former key, it is that row, and its rekeying reaches the plan the writer applies.
    lookups = PollLookups(stored=stored_by_item_key([moved], {"id:https://example.org/1": STORED}))
    polled = Polled(_source(), _ok(), _feed(moved), body_hash="new")
    assert decide_poll(polled, lookups, SETTINGS, NOW).rekeys == ((STORED.id, "id:1", moved.guid),)
    # Stored under its own key as well: that row wins.
    own = replace(STORED, id=9, key="id:1")
    assert stored_by_item_key([moved], {"id:1": own, "id:https://example.org/1": STORED}) == {"id:1": own}


def test_the_rate_counts_stored_and_new_items_within_the_window() -> None:
    recent = _item("recent", at=NOW - timedelta(days=1))
    old = _item("old", at=NOW - RATE_WINDOW - HOUR)  # published before the window: not counted
    undated = _item("undated", at=None)  # sorts at "now"
    inserts = tuple(NewItem(i, None) for i in (recent, old, undated))
    assert items_per_day(12, inserts, NOW) == 14 / RATE_WINDOW.days
    assert items_per_day(0, (NewItem(old, None),), NOW) is None


def test_a_parsed_document_with_nothing_new_in_the_window_forgets_the_rate() -> None:
    polled = Polled(_source(rate=30.0), _ok(), _feed(_item("a")), body_hash="new")
    plan = decide_poll(polled, PollLookups(stored={"a": STORED}), SETTINGS, NOW, random.Random(1))
    assert plan.record.items_per_day is None
    assert plan.record.next_poll_reason == "interval"


def test_publisher_hints_stretch_the_interval() -> None:
    polled = Polled(_source(), _ok(cache_control="max-age=7200"), _feed(ttl=180), body_hash="new")
    plan = decide_poll(polled, PollLookups(), SETTINGS, NOW, random.Random(1))
    assert plan.record.next_poll_reason == "feed ttl 3h"
    assert plan.record.next_poll_at is not None
    assert NOW + 3 * HOUR <= plan.record.next_poll_at <= NOW + 3.3 * HOUR


@pytest.mark.parametrize(
    ("ttl_minutes", "said"),
    [
        (180, r"next poll 15:\d\d:\d\dZ \(feed ttl 3h\)"),  # the poll's own day: the time says it
        (20 * 60, r"next poll 2026-11-21 08:\d\d:\d\dZ \(feed ttl 20h\)"),  # tomorrow: not "08:00", as if overdue
    ],
)
def test_the_log_line_dates_a_next_poll_on_another_day(ttl_minutes: int, said: str) -> None:
    settings = replace(SETTINGS, max_interval=timedelta(days=2))
    polled = Polled(_source(), _ok(), _feed(ttl=ttl_minutes), body_hash="new")
    (line,) = decide_poll(polled, PollLookups(), settings, NOW, random.Random(1)).log
    assert re.search(said, line.message % line.args), line.message % line.args


def test_a_moved_feed_is_logged_with_its_poll() -> None:
    polled = Polled(_source(), _ok(304, permanent_url="https://new.example.com/feed"))
    moved, line = decide_poll(polled, PollLookups(), SETTINGS, NOW).log
    assert moved.level == logging.WARNING and "moved permanently" in moved.message
    assert moved.args[-1] == "https://new.example.com/feed"
    assert line.level == logging.INFO


# --- a host that throttles us ------------------------------------------------------------


def _throttled(source_id: int = 1) -> Polled:
    source = _source(source_id=source_id)
    result = replace(_failed(429, "HTTP 429", retry_after="3600"), source_id=source_id)
    return Polled(source, result)


def test_a_second_throttled_source_holds_the_rest_of_its_host() -> None:
    host = (
        HostSource(1, NOW - HOUR, 200),  # the polled one, as stored before this poll
        HostSource(2, NOW + HOUR, 429),  # already waiting out a Retry-After
        HostSource(3, NOW + timedelta(minutes=10), 304),  # due before the host is clear
        HostSource(4, NOW + 5 * HOUR, 200),  # due after: left alone
    )
    plan = decide_poll(_throttled(), PollLookups(host_sources=host), SETTINGS, NOW, random.Random(1))

    assert plan.outcome == "error"
    assert set(plan.postpone) == {3}
    assert plan.record.next_poll_at is not None
    assert plan.postpone[3].at >= plan.record.next_poll_at
    assert plan.postpone[3].reason == "host throttled: 2 of its sources got 429/503"
    assert plan.host_held_until == plan.postpone[3].at
    throttling, line = plan.log
    assert throttling.level == logging.WARNING and throttling.args == ("news.example.com", 1)
    assert line.extra is not None and line.extra["outcome"] == "error"


def test_one_throttled_source_is_its_own_business() -> None:
    host = (HostSource(1, NOW - HOUR, 200), HostSource(3, NOW + timedelta(minutes=10), 304))
    plan = decide_poll(_throttled(), PollLookups(host_sources=host), SETTINGS, NOW, random.Random(1))
    assert not plan.postpone and plan.host_held_until is None


def test_a_poll_of_a_held_host_waits_with_it() -> None:
    host = (
        HostSource(1, NOW - HOUR, 200),
        HostSource(2, NOW + 2 * HOUR, 429),
        HostSource(3, NOW + 2 * HOUR, 503),
    )
    polled = Polled(_source(), _ok(304))
    plan = decide_poll(polled, PollLookups(host_sources=host), SETTINGS, NOW, random.Random(1))
    assert plan.outcome == "not_modified"
    assert set(plan.postpone) == {1}
    assert plan.record.next_poll_at == plan.postpone[1].at >= NOW + 2 * HOUR
    assert plan.record.next_poll_reason.startswith("host throttled")
    assert len(plan.log) == 1  # only a throttled poll says the host is throttling us


def test_a_feed_that_moved_to_another_host_leaves_the_old_one() -> None:
    host = (
        HostSource(1, NOW - HOUR, 200),
        HostSource(2, NOW + 2 * HOUR, 429),
        HostSource(3, NOW + 2 * HOUR, 503),
    )
    polled = Polled(_source(), _ok(304, permanent_url="https://elsewhere.example.net/feed"))
    plan = decide_poll(polled, PollLookups(host_sources=host), SETTINGS, NOW, random.Random(1))
    assert not plan.postpone
    assert plan.record.next_poll_reason == "interval"


def test_a_retired_source_moves_nobody() -> None:
    host = (HostSource(2, NOW + HOUR, 429), HostSource(3, NOW + timedelta(minutes=10), 304))
    polled = Polled(_source(), _failed(429, "HTTP 429", retryable=False))
    plan: PollPlan = decide_poll(polled, PollLookups(host_sources=host), SETTINGS, NOW)
    assert plan.outcome == "retired" and not plan.postpone


@pytest.mark.parametrize(
    ("status", "held_until", "needed"),
    [
        (200, None, False),  # the common poll reads nothing more
        (304, NOW - HOUR, False),  # the host's hold has run out
        (None, None, False),  # a connection error says nothing about throttling
        (429, None, True),
        (503, None, True),
        (200, NOW + HOUR, True),  # the host holds us off: this source waits with the others
    ],
)
def test_a_poll_looks_at_its_host_only_when_it_may_be_throttled(
    status: int | None, held_until: datetime | None, needed: bool
) -> None:
    assert host_needs_check(status, held_until, NOW) is needed


def test_the_host_is_the_urls_host_name() -> None:
    assert host_of("https://News.Example.com:8443/feed?x=1") == "news.example.com"
    assert host_of("not a url") == ""


def test_a_source_with_its_own_interval_is_never_adapted() -> None:
    own = SETTINGS.policy(1800)
    assert (own.interval, own.explicit) == (timedelta(minutes=30), True)
    default = SETTINGS.policy(None)
    assert (default.interval, default.explicit) == (HOUR, False)
    polled = Polled(replace(_source(), interval_seconds=1800), _ok(), _feed(_item("a")), body_hash="new")
    plan = decide_poll(polled, PollLookups(recent_items=200), SETTINGS, NOW, random.Random(1))
    assert plan.record.next_poll_reason == "interval"
