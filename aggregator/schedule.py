"""When is a source next due, and why? A pure decision over one poll's outcome.

``next_poll`` answers with a time *and a reason*, so ``aggregator sources`` can show
why each source is polled when it is. The inputs, in order of authority:

1. ``Retry-After`` on 429/503 (seconds or an HTTP date): the server said when; we
   never come earlier and only ever add jitter *after* it. It is bounded like every
   other hint: a server answering "come back next year" gets ``max_backoff`` (24 h by
   default), because a source is never switched off by what one response said;
2. failures: exponential backoff from the source's interval, ±10% jitter, capped at
   ``max_backoff`` — a source is never disabled by errors alone;
3. success: the configured interval, or — when the source has none of its own — an
   adaptive one from the observed publishing rate; then stretched (never shrunk) by
   the publisher's hints: ``Cache-Control: max-age`` / ``s-maxage`` (or ``Expires``),
   RSS ``<ttl>``, ``sy:updatePeriod``. Hints are bounded by ``max_interval``, and like
   Retry-After they are only ever jittered later, never earlier.

Whatever the path, the result is never sooner than ``min_interval`` after now (except
for a source whose own configured interval is shorter: the user asked for it), and
never later than the path's ceiling (``max_backoff`` for failures, ``max_interval`` or
the configured interval, whichever is longer, for successes) — jitter included.

``host_slowdown`` is the one decision that spans sources: a 429/503 delays only its
own URL, but once several sources on one host are waiting out a Retry-After, the host
is rate-limiting *us*, and its other sources wait too instead of each earning a 429.
``host_needs_check`` says when a poll must look at its host's other sources at all, so
the common poll (no throttling anywhere on its host) reads nothing more.

Every number here can come from a stranger's server (``<ttl>99999999999999</ttl>``,
``Retry-After: 1e30``-sized digits), so each is clamped before it meets ``timedelta``
arithmetic: an ``OverflowError`` in this function would fail the whole poll batch.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

JITTER = 0.10
BACKOFF_BASE = 2.0
# No hint, however large, means more than this; keeps timedelta arithmetic in range.
LONGEST_HINT = timedelta(days=3650)
_MAX_BACKOFF_EXPONENT = 64  # 2**64 intervals is past any cap; stops float overflow
_MAX_AGE = re.compile(r"(?:^|[,\s])(s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)
_DIGITS = re.compile(r"^[0-9]+$")  # str.isdigit() also accepts "²" and other non-ASCII digits
THROTTLED_STATUSES = frozenset({429, 503})
HOST_THROTTLE_SOURCES = 2  # "several": the source just throttled and at least one more on its host


@dataclass(frozen=True)
class PollPolicy:
    interval: timedelta  # the source's own interval, or the default
    explicit: bool  # True when the source configured its interval: then no adaptation
    min_interval: timedelta
    max_interval: timedelta
    max_backoff: timedelta


@dataclass(frozen=True)
class ScheduleSettings:
    """The scheduling part of ``settings`` in feeds.yaml, as the poll decision needs it."""

    default_interval: timedelta
    min_interval: timedelta
    max_interval: timedelta
    max_backoff: timedelta
    retire_after: timedelta | None = None

    def policy(self, interval_seconds: int | None) -> PollPolicy:
        """The policy of one source: its own interval, which is then never adapted, or the default."""
        return PollPolicy(
            interval=timedelta(seconds=interval_seconds) if interval_seconds else self.default_interval,
            explicit=interval_seconds is not None,
            min_interval=self.min_interval,
            max_interval=self.max_interval,
            max_backoff=self.max_backoff,
        )


@dataclass(frozen=True)
class PollOutcome:
    """What one poll taught us about the source."""

    ok: bool
    status: int | None = None
    error_count: int = 0  # consecutive failures, including this poll if it failed
    retry_after: str | None = None
    cache_control: str | None = None
    expires: str | None = None
    ttl_minutes: int | None = None
    update_period_minutes: int | None = None
    items_per_day: float | None = None


@dataclass(frozen=True)
class NextPoll:
    at: datetime
    reason: str


def next_poll(policy: PollPolicy, outcome: PollOutcome, now: datetime, rng: random.Random | None = None) -> NextPoll:
    rng = rng or random.Random()
    floor = min(policy.min_interval, policy.interval)
    if outcome.status in (429, 503) and outcome.retry_after:
        asked = retry_after_delay(outcome.retry_after, now)
        if asked is not None:
            wait = max(min(asked, policy.max_backoff), floor)
            # Spread sources that were all told the same date, but only ever later.
            delay = _later_jitter(wait, rng, ceiling=max(policy.max_backoff, wait))
            capped = f", capped at {_human(policy.max_backoff)}" if asked > policy.max_backoff else ""
            return NextPoll(now + delay, f"Retry-After {_human(asked)} ({outcome.status}){capped}")
    if not outcome.ok:
        errors = max(1, outcome.error_count)
        delay = _jitter(backoff_delay(policy, errors), rng, floor=floor, ceiling=policy.max_backoff)
        return NextPoll(now + delay, f"backoff after {errors} error{'s' if errors > 1 else ''}")

    interval, reason = policy.interval, "interval"
    # A source configured slower than max_interval keeps its interval: the bound is on hints.
    ceiling = max(policy.max_interval, policy.interval)
    if not policy.explicit and outcome.items_per_day and outcome.items_per_day > 0:
        # Poll about twice per average gap between items: frequent publishers are fresh,
        # quiet ones are not polled for nothing.
        adaptive = timedelta(seconds=min(86400 / outcome.items_per_day / 2, LONGEST_HINT.total_seconds()))
        adaptive = min(max(adaptive, policy.min_interval), policy.max_interval)
        interval, reason = adaptive, f"adaptive ({outcome.items_per_day:.1f} items/day)"
    hint, hint_reason = _publisher_hint(outcome, now)
    if hint is not None and min(hint, ceiling) > interval:
        capped = f", capped at {_human(ceiling)}" if hint > ceiling else ""
        interval, reason = min(hint, ceiling), hint_reason + capped
        # The publisher said "not before": jitter only later, like Retry-After.
        return NextPoll(now + _later_jitter(max(interval, floor), rng, ceiling=ceiling), reason)
    return NextPoll(now + _jitter(interval, rng, floor=floor, ceiling=ceiling), reason)


@dataclass(frozen=True)
class HostSource:
    """One source on a host, as the host-wide decision sees it."""

    id: int
    next_poll_at: datetime
    last_status: int | None


def host_slowdown(sources: Sequence[HostSource], now: datetime) -> dict[int, NextPoll]:
    """Postpone the rest of a host when several of its sources are waiting out a 429/503.

    ``sources`` are the active sources on one host, their state already including the
    poll just decided. A source counts as throttled while its last answer was 429/503
    and it is not yet due again. With fewer than ``HOST_THROTTLE_SOURCES`` throttled,
    nothing changes: one feed's limit is that feed's business. Otherwise every other
    source due before the latest throttled one is moved to just after it, spread over up
    to ``JITTER`` of the wait so they do not return together, in the order they fell due:
    the one due longest goes first. A host that keeps throttling lets only a few polls
    through between holds, and each hold moves the rest again; in that order every source
    gets its turn within about (sources / polls let through) holds, where a random order
    left some waiting many times longer than the rest. Sources due later keep their time.
    Returns the new schedule of the sources it moves, by id.
    """
    throttled = [s for s in sources if s.last_status in THROTTLED_STATUSES and s.next_poll_at > now]
    if len(throttled) < HOST_THROTTLE_SOURCES:
        return {}
    until = max(s.next_poll_at for s in throttled)
    wait = until - now
    reason = f"host throttled: {len(throttled)} of its sources got 429/503"
    waiting = {s.id for s in throttled}
    moved = sorted(
        (s for s in sources if s.id not in waiting and s.next_poll_at < until), key=lambda s: (s.next_poll_at, s.id)
    )
    step = wait * JITTER / max(len(moved), 1)
    return {s.id: NextPoll(until + step * n, reason) for n, s in enumerate(moved)}


def host_of(url: str) -> str:
    """The host whose sources are throttled together: the URL's host name, lower case."""
    return (urlsplit(url).hostname or "").lower()


def host_needs_check(status: int | None, held_until: datetime | None, now: datetime) -> bool:
    """Whether a poll must look at the other sources of its host: it was throttled itself, or
    the host throttled an earlier poll and holds us off until ``held_until`` (what this process
    remembers; the postponed times themselves are in the database)."""
    return status in THROTTLED_STATUSES or (held_until is not None and held_until > now)


def backoff_delay(policy: PollPolicy, error_count: int) -> timedelta:
    """The un-jittered delay after ``error_count`` consecutive errors (for display and tests)."""
    exponent = min(max(1, error_count) - 1, _MAX_BACKOFF_EXPONENT)
    # In float seconds: interval * 2**n overflows timedelta after a few dozen errors.
    seconds = policy.interval.total_seconds() * BACKOFF_BASE**exponent
    return min(timedelta(seconds=min(seconds, LONGEST_HINT.total_seconds())), policy.max_backoff)


def retry_after_delay(value: str, now: datetime) -> timedelta | None:
    """``Retry-After`` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if neither."""
    value = value.strip()
    if _DIGITS.match(value):
        return _clamp_seconds(int(value))
    return _until(value, now)


def expires_delay(value: str, now: datetime) -> timedelta:
    """``Expires`` is an HTTP date; anything else (often ``0`` or ``-1``) means already expired (RFC 9111 §5.3)."""
    return _until(value.strip(), now) or timedelta(0)


def max_age(cache_control: str | None) -> timedelta | None:
    """The freshness lifetime from Cache-Control; ``s-maxage`` wins, as we serve many readers."""
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return None
    ages = {name.lower(): int(seconds) for name, seconds in _MAX_AGE.findall(cache_control)}
    seconds = ages.get("s-maxage", ages.get("max-age"))
    return _clamp_seconds(seconds) if seconds is not None else None


def _publisher_hint(outcome: PollOutcome, now: datetime) -> tuple[timedelta | None, str]:
    hints: list[tuple[timedelta, str]] = []
    cache_control = (outcome.cache_control or "").lower()
    if (age := max_age(outcome.cache_control)) is not None:
        hints.append((age, f"Cache-Control max-age {_human(age)}"))
    elif outcome.expires and "no-cache" not in cache_control and "no-store" not in cache_control:
        # Expires only counts without max-age (RFC 9111 §5.3) and without no-cache.
        expires = expires_delay(outcome.expires, now)
        hints.append((expires, f"Expires in {_human(expires)}"))
    if outcome.ttl_minutes and outcome.ttl_minutes > 0:
        ttl = _clamp_minutes(outcome.ttl_minutes)
        hints.append((ttl, f"feed ttl {_human(ttl)}"))
    if outcome.update_period_minutes and outcome.update_period_minutes > 0:
        period = _clamp_minutes(outcome.update_period_minutes)
        hints.append((period, f"sy:updatePeriod {_human(period)}"))
    if not hints:
        return None, ""
    return max(hints, key=lambda h: h[0])


def _jitter(delay: timedelta, rng: random.Random, *, floor: timedelta, ceiling: timedelta) -> timedelta:
    """``delay`` ±10%, kept within [floor, ceiling].

    Above the ceiling the draw is reflected back below it rather than clipped, so
    sources that all hit the cap (a long outage) still spread out instead of piling
    onto the same instant.
    """
    jittered = delay * (1 + rng.uniform(-JITTER, JITTER))
    if jittered > ceiling:
        jittered = max(ceiling - (jittered - ceiling), timedelta(0))
    return max(jittered, floor)


def _later_jitter(delay: timedelta, rng: random.Random, *, ceiling: timedelta) -> timedelta:
    """``delay`` plus up to 10%, never beyond ``ceiling`` (but never below ``delay`` either)."""
    return delay + max(min(delay * rng.uniform(0, JITTER), ceiling - delay), timedelta(0))


def _until(value: str, now: datetime) -> timedelta | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return min(max(when - now, timedelta(0)), LONGEST_HINT)


def _clamp_seconds(seconds: int) -> timedelta:
    return timedelta(seconds=min(seconds, int(LONGEST_HINT.total_seconds())))


def _clamp_minutes(minutes: int) -> timedelta:
    return timedelta(minutes=min(minutes, int(LONGEST_HINT.total_seconds()) // 60))


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds}s"


def retirement(failing_since: datetime | None, now: datetime, retire_after: timedelta | None) -> str | None:
    """The reason to retire a source that has failed without a break for ``retire_after``.

    Off unless configured: by default errors alone never switch a source off (backoff
    caps at ``max_backoff`` and the source keeps being tried).
    """
    if retire_after is None or failing_since is None or now - failing_since < retire_after:
        return None
    return f"no successful poll since {failing_since:%Y-%m-%d %H:%M}Z (settings.retire_after: {_human(retire_after)})"
