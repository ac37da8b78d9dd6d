"""``schedule.next_poll`` as a pure function: no network, no database, a seeded RNG.

Bounds are checked over many seeded draws rather than one, because a jitter bug (a
sign, a missing clamp) shows only on some draws; and each bound is checked from both
sides, so "the result is always the floor" fails as loudly as "the result is early".
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from aggregator.schedule import (
    JITTER,
    LONGEST_HINT,
    HostSource,
    PollOutcome,
    PollPolicy,
    backoff_delay,
    expires_delay,
    host_slowdown,
    max_age,
    next_poll,
    retry_after_delay,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DRAWS = 300


def policy(
    interval: timedelta = timedelta(minutes=30),
    *,
    explicit: bool = False,
    min_interval: timedelta = timedelta(minutes=5),
    max_interval: timedelta = timedelta(hours=24),
    max_backoff: timedelta = timedelta(hours=24),
) -> PollPolicy:
    return PollPolicy(interval, explicit, min_interval, max_interval, max_backoff)


OK = PollOutcome(ok=True, status=200)


def delays(p: PollPolicy, outcome: PollOutcome, draws: int = DRAWS) -> list[timedelta]:
    return [next_poll(p, outcome, NOW, random.Random(seed)).at - NOW for seed in range(draws)]


def assert_spread(values: list[timedelta], low: timedelta, high: timedelta) -> None:
    """All values in [low, high], and really spread across it (not pinned to one end)."""
    assert min(values) >= low, (min(values), low)
    assert max(values) <= high, (max(values), high)
    assert len(set(values)) > len(values) // 2
    assert max(values) - min(values) >= (high - low) * 0.6


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


# --- success: interval, floor, bounds, jitter --------------------------------------------


def test_configured_interval_with_ten_percent_jitter_either_way() -> None:
    values = delays(policy(HOUR, explicit=True), OK)
    assert_spread(values, HOUR * (1 - JITTER), HOUR * (1 + JITTER))
    assert next_poll(policy(HOUR, explicit=True), OK, NOW, random.Random(1)).reason == "interval"


def test_jitter_never_goes_below_the_floor() -> None:
    five = timedelta(minutes=5)
    values = delays(policy(five, explicit=True, min_interval=five), OK)
    assert min(values) == five  # the draws that would have been earlier are held at the floor
    assert max(values) > five


def test_a_source_may_ask_for_less_than_the_global_floor() -> None:
    two = timedelta(minutes=2)
    values = delays(policy(two, explicit=True, min_interval=timedelta(minutes=5)), OK)
    assert min(values) == two  # its own interval is its floor: never earlier than asked
    assert two < max(values) <= two * (1 + JITTER)


def test_default_seeded_rng_is_reproducible() -> None:
    first = next_poll(policy(), OK, NOW, random.Random(7))
    assert first == next_poll(policy(), OK, NOW, random.Random(7))
    assert isinstance(next_poll(policy(), OK, NOW).at, datetime)  # without an rng too


def test_hints_are_capped_at_max_interval_jitter_included() -> None:
    outcome = PollOutcome(ok=True, status=200, ttl_minutes=48 * 60)
    values = delays(policy(), outcome)
    assert max(values) <= timedelta(hours=24)
    assert min(values) >= timedelta(hours=24) * (1 - JITTER)
    assert next_poll(policy(), outcome, NOW, random.Random(1)).reason == "feed ttl 2d, capped at 1d"


def test_configured_interval_longer_than_max_interval_is_not_shrunk_by_a_hint() -> None:
    two_days = timedelta(days=2)
    outcome = PollOutcome(ok=True, status=200, ttl_minutes=3 * 24 * 60)
    values = delays(policy(two_days, explicit=True), outcome)
    assert min(values) >= two_days * (1 - JITTER)
    assert max(values) <= two_days


def test_plain_interval_at_max_interval_stays_within_it() -> None:
    day = timedelta(hours=24)
    values = delays(policy(day, explicit=True), OK)
    assert_spread(values, day * (1 - JITTER), day)


# --- publisher hints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "expected", "reason"),
    [
        (PollOutcome(ok=True, status=200, cache_control="public, max-age=7200"), 2 * HOUR, "Cache-Control max-age 2h"),
        (PollOutcome(ok=True, status=304, cache_control="max-age=60, s-maxage=10800"), 3 * HOUR, "max-age 3h"),
        (PollOutcome(ok=True, status=200, expires=http_date(NOW + 3 * HOUR)), 3 * HOUR, "Expires in 3h"),
        (PollOutcome(ok=True, status=200, ttl_minutes=120), 2 * HOUR, "feed ttl 2h"),
        (PollOutcome(ok=True, status=200, update_period_minutes=360), 6 * HOUR, "sy:updatePeriod 6h"),
        # The largest hint wins.
        (
            PollOutcome(ok=True, status=200, cache_control="max-age=3600", ttl_minutes=240),
            4 * HOUR,
            "feed ttl 4h",
        ),
    ],
)
def test_publisher_hints_stretch_the_interval_and_are_never_jittered_earlier(
    outcome: PollOutcome, expected: timedelta, reason: str
) -> None:
    values = delays(policy(), outcome)
    assert_spread(values, expected, expected * (1 + JITTER))
    assert reason in next_poll(policy(), outcome, NOW, random.Random(3)).reason


@pytest.mark.parametrize(
    "outcome",
    [
        PollOutcome(ok=True, status=200, cache_control="max-age=60"),  # shorter than the interval
        PollOutcome(ok=True, status=200, cache_control="no-cache, max-age=7200"),
        PollOutcome(ok=True, status=200, cache_control="no-store", expires=http_date(NOW + 3 * HOUR)),
        PollOutcome(ok=True, status=200, expires="0"),  # "already expired"
        PollOutcome(ok=True, status=200, expires="7200"),  # not a date: also "already expired"
        PollOutcome(ok=True, status=200, expires=http_date(NOW - HOUR)),
        PollOutcome(ok=True, status=200, ttl_minutes=0),
    ],
)
def test_hints_never_shrink_the_interval_and_no_cache_gives_none(outcome: PollOutcome) -> None:
    values = delays(policy(), outcome)
    assert_spread(values, timedelta(minutes=27), timedelta(minutes=33))
    assert next_poll(policy(), outcome, NOW, random.Random(3)).reason == "interval"


def test_max_age_beats_expires() -> None:
    outcome = PollOutcome(ok=True, status=200, cache_control="max-age=3600", expires=http_date(NOW + 10 * HOUR))
    decision = next_poll(policy(), outcome, NOW, random.Random(1))
    assert HOUR <= decision.at - NOW <= HOUR * (1 + JITTER)
    assert decision.reason == "Cache-Control max-age 1h"


def test_absurd_hints_are_clamped_not_crashed_on() -> None:
    outcome = PollOutcome(
        ok=True,
        status=200,
        ttl_minutes=10**15,
        update_period_minutes=10**15,
        cache_control="max-age=99999999999999999999",
        expires="Fri, 31 Dec 9999 23:59:59 GMT",
    )
    decision = next_poll(policy(), outcome, NOW, random.Random(1))
    assert timedelta(hours=24) * (1 - JITTER) <= decision.at - NOW <= timedelta(hours=24)


# --- adaptive -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_day", "expected"),
    [
        (48.0, timedelta(minutes=15)),  # half the average gap between items
        (1000.0, timedelta(minutes=5)),  # never below min_interval
        (0.2, timedelta(hours=24)),  # never past max_interval
    ],
)
def test_adaptive_interval_follows_the_publishing_rate(per_day: float, expected: timedelta) -> None:
    outcome = PollOutcome(ok=True, status=200, items_per_day=per_day)
    values = delays(policy(), outcome)
    assert min(values) >= max(expected * (1 - JITTER), timedelta(minutes=5))
    assert max(values) <= expected * (1 + JITTER)
    assert next_poll(policy(), outcome, NOW, random.Random(1)).reason == f"adaptive ({per_day:.1f} items/day)"


def test_a_configured_interval_is_not_adapted() -> None:
    outcome = PollOutcome(ok=True, status=200, items_per_day=1000.0)
    decision = next_poll(policy(HOUR, explicit=True), outcome, NOW, random.Random(1))
    assert decision.reason == "interval"
    assert decision.at - NOW >= HOUR * (1 - JITTER)


# --- Retry-After --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_is_never_earlier_and_jittered_only_later(status: int, form: str) -> None:
    value = "7200" if form == "seconds" else http_date(NOW + 2 * HOUR)
    outcome = PollOutcome(ok=False, status=status, error_count=1, retry_after=value)
    values = delays(policy(), outcome)
    assert_spread(values, 2 * HOUR, 2 * HOUR * (1 + JITTER))
    assert next_poll(policy(), outcome, NOW, random.Random(1)).reason == f"Retry-After 2h ({status})"


def test_retry_after_shorter_than_the_floor_waits_for_the_floor() -> None:
    for value in ("30", http_date(NOW + timedelta(seconds=30)), http_date(NOW - HOUR)):
        outcome = PollOutcome(ok=False, status=429, error_count=1, retry_after=value)
        assert min(delays(policy(), outcome)) >= timedelta(minutes=5)


def test_retry_after_is_bounded_by_max_backoff_and_says_so() -> None:
    outcome = PollOutcome(ok=False, status=503, error_count=1, retry_after=str(7 * 86400))
    values = delays(policy(), outcome)
    assert min(values) == max(values) == timedelta(hours=24)
    assert next_poll(policy(), outcome, NOW, random.Random(1)).reason == "Retry-After 7d (503), capped at 1d"
    huge = PollOutcome(ok=False, status=429, error_count=1, retry_after="9" * 40)
    assert next_poll(policy(), huge, NOW, random.Random(1)).at - NOW == timedelta(hours=24)


@pytest.mark.parametrize(
    ("status", "value"),
    [(500, "7200"), (429, "soon"), (503, ""), (429, None)],
)
def test_retry_after_only_counts_on_429_and_503_and_when_readable(status: int, value: str | None) -> None:
    outcome = PollOutcome(ok=False, status=status, error_count=1, retry_after=value)
    decision = next_poll(policy(), outcome, NOW, random.Random(1))
    assert decision.reason == "backoff after 1 error"
    assert decision.at - NOW <= timedelta(minutes=33)


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(("errors", "multiple"), [(1, 1), (2, 2), (3, 4), (5, 16)])
def test_backoff_doubles_per_consecutive_error(errors: int, multiple: int) -> None:
    p = policy(timedelta(minutes=30))
    expected = timedelta(minutes=30) * multiple
    assert backoff_delay(p, errors) == expected
    outcome = PollOutcome(ok=False, status=500, error_count=errors)
    assert_spread(delays(p, outcome), expected * (1 - JITTER), expected * (1 + JITTER))
    reason = next_poll(p, outcome, NOW, random.Random(1)).reason
    assert reason == f"backoff after {errors} error{'s' if errors > 1 else ''}"


@pytest.mark.parametrize("errors", [7, 40, 2000, 10**9])
def test_backoff_is_capped_spread_below_the_cap_and_never_gives_up(errors: int) -> None:
    p = policy(timedelta(minutes=30), max_backoff=timedelta(hours=24))
    assert backoff_delay(p, errors) == timedelta(hours=24)
    values = delays(p, PollOutcome(ok=False, status=None, error_count=errors))
    assert_spread(values, timedelta(hours=24) * (1 - JITTER), timedelta(hours=24))


def test_backoff_respects_the_floor_and_a_short_configured_interval() -> None:
    p = policy(timedelta(minutes=1), explicit=True, min_interval=timedelta(minutes=5))
    values = delays(p, PollOutcome(ok=False, status=500, error_count=1))
    assert min(values) >= 54 * timedelta(seconds=1)  # the source's own 1 min is its floor
    assert max(values) <= 66 * timedelta(seconds=1)


def test_error_count_zero_on_failure_is_treated_as_the_first_error() -> None:
    decision = next_poll(policy(), PollOutcome(ok=False, status=500, error_count=0), NOW, random.Random(1))
    assert decision.reason == "backoff after 1 error"


# --- the host as a whole -------------------------------------------------------------------


def test_one_throttled_source_does_not_slow_its_host() -> None:
    sources = [HostSource(1, NOW + 2 * HOUR, 429), HostSource(2, NOW + MIN, 304), HostSource(3, NOW, 200)]
    assert host_slowdown(sources, NOW) == {}


def test_several_throttled_sources_hold_back_the_rest_of_the_host() -> None:
    sources = [
        HostSource(1, NOW + HOUR, 429),
        HostSource(2, NOW + 2 * HOUR, 503),
        HostSource(3, NOW + MIN, 304),  # due before the host is clear: moved
        HostSource(4, NOW - MIN, 500),  # overdue: moved
        HostSource(5, NOW + 3 * HOUR, 200),  # due after: left alone
    ]
    moved = host_slowdown(sources, NOW)
    assert set(moved) == {3, 4}
    for decision in moved.values():
        assert NOW + 2 * HOUR <= decision.at <= NOW + 2 * HOUR * (1 + JITTER)
        assert decision.reason == "host throttled: 2 of its sources got 429/503"
    assert moved[4].at < moved[3].at  # due longer, so first once the host is clear: not together


def test_a_host_that_keeps_throttling_gives_every_source_its_turn() -> None:
    """Each hold lets a few polls through, then the host throttles again and the rest are
    moved once more: the sources due longest go first, so none waits much beyond its share."""
    sources, through = 30, 3
    due = {n: NOW - n * MIN for n in range(sources)}  # ids 0..29, all overdue
    last_polled = dict.fromkeys(due, 0)
    now, longest = NOW, 0
    for hold in range(1, 61):
        # Two sources wait out a Retry-After of an hour; the rest go after them in turn.
        host = [HostSource(-1, now + HOUR, 429), HostSource(-2, now + HOUR, 503)]
        host += [HostSource(n, at, 304) for n, at in due.items()]
        for n, decision in host_slowdown(host, now).items():
            due[n] = decision.at
        now += HOUR
        for n in sorted(due, key=lambda n: (due[n], n))[:through]:  # the first let through
            longest = max(longest, hold - last_polled[n])
            last_polled[n], due[n] = hold, now + 30 * MIN  # its interval: due again within the next hold
    longest = max(longest, *(hold - polled for polled in last_polled.values()))  # and still waiting
    assert longest <= sources // through


def test_a_throttle_that_has_run_out_does_not_count() -> None:
    sources = [HostSource(1, NOW - MIN, 429), HostSource(2, NOW + HOUR, 429), HostSource(3, NOW, 304)]
    assert host_slowdown(sources, NOW) == {}


# --- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 120 ", timedelta(seconds=120)),
        ("0", timedelta(0)),
        (http_date(NOW + 90 * MIN), 90 * MIN),
        ("Fri, 20 Nov 2026 13:30:00 GMT", 90 * MIN),
        ("Friday, 20-Nov-26 13:30:00 GMT", 90 * MIN),  # obsolete RFC 850 form, still allowed
        (http_date(NOW - HOUR), timedelta(0)),  # a date in the past means "now"
        ("9" * 40, LONGEST_HINT),
        ("-5", None),
        ("1.5", None),
        ("²", None),  # str.isdigit() says yes; int() would fail
        ("tomorrow", None),
        ("", None),
    ],
)
def test_retry_after_delay(value: str, expected: timedelta | None) -> None:
    assert retry_after_delay(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=600", timedelta(seconds=600)),
        ("public, MAX-AGE=600", timedelta(seconds=600)),
        ('max-age="600"', timedelta(seconds=600)),
        ("max-age=600, s-maxage=60", timedelta(seconds=60)),
        ("private,max-age=0", timedelta(0)),
        ("no-cache", None),
        ("max-age=600, no-store", None),
        ("public", None),
        (None, None),
        ("max-stale=600", None),
    ],
)
def test_max_age(value: str | None, expected: timedelta | None) -> None:
    assert max_age(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(http_date(NOW + HOUR), HOUR), ("0", timedelta(0)), ("-1", timedelta(0)), ("garbage", timedelta(0))],
)
def test_expires_delay(value: str, expected: timedelta) -> None:
    assert expires_delay(value, NOW) == expected
