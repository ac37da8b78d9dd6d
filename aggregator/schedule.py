"""When is a source next due, and why? A pure decision over one poll's outcome.

``next_poll`` answers with a time *and a reason*, so ``aggregator sources`` can show
why each source is polled when it is. The inputs, in order of authority:

1. ``Retry-After`` on 429/503 (seconds or an HTTP date): the server said when; we
   never come earlier, and never add negative jitter to it;
2. failures: exponential backoff from the source's interval, ±10% jitter, capped at
   ``max_backoff`` (24 h by default) — a source is never disabled by errors alone;
3. success: the configured interval, or — when the source has none of its own — an
   adaptive one from the observed publishing rate; then stretched (never shrunk) by
   the publisher's hints: ``Cache-Control: max-age``, ``Expires``, RSS ``<ttl>``,
   ``sy:updatePeriod``. Hints are bounded by ``max_interval``.

Whatever the path, the result is never sooner than ``min_interval`` after now (except
for a source whose own configured interval is shorter: the user asked for it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

JITTER = 0.10
BACKOFF_BASE = 2.0
_MAX_AGE = re.compile(r"(?:^|[,\s])(s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class PollPolicy:
    interval: timedelta  # the source's own interval, or the default
    explicit: bool  # True when the source configured its interval: then no adaptation
    min_interval: timedelta
    max_interval: timedelta
    max_backoff: timedelta


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
        wait = retry_after_delay(outcome.retry_after, now)
        if wait is not None:
            wait = min(max(wait, floor), policy.max_backoff)
            # Spread sources that were all told the same date, but only ever later.
            spread = wait * rng.uniform(0, JITTER)
            return NextPoll(now + wait + spread, f"Retry-After {_human(wait)} ({outcome.status})")
    if not outcome.ok:
        errors = max(1, outcome.error_count)
        delay = min(policy.interval * (BACKOFF_BASE ** (errors - 1)), policy.max_backoff)
        delay = max(_jitter(delay, rng), floor)
        return NextPoll(now + delay, f"backoff after {errors} error{'s' if errors > 1 else ''}")

    interval, reason = policy.interval, "interval"
    if not policy.explicit and outcome.items_per_day:
        # Poll about twice per average gap between items: frequent publishers are fresh,
        # quiet ones are not polled for nothing.
        adaptive = timedelta(days=1) / outcome.items_per_day / 2
        adaptive = min(max(adaptive, policy.min_interval), policy.max_interval)
        interval, reason = adaptive, f"adaptive ({outcome.items_per_day:.1f} items/day)"
    hint, hint_reason = _publisher_hint(outcome, now)
    if hint is not None and hint > interval:
        interval, reason = min(hint, policy.max_interval), hint_reason
    delay = max(_jitter(interval, rng), floor)
    return NextPoll(now + delay, reason)


def backoff_delay(policy: PollPolicy, error_count: int) -> timedelta:
    """The un-jittered delay after ``error_count`` consecutive errors (for display and tests)."""
    return min(policy.interval * (BACKOFF_BASE ** (max(1, error_count) - 1)), policy.max_backoff)


def retry_after_delay(value: str, now: datetime) -> timedelta | None:
    """``Retry-After`` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def max_age(cache_control: str | None) -> timedelta | None:
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return None
    ages = {name.lower(): int(seconds) for name, seconds in _MAX_AGE.findall(cache_control)}
    seconds = ages.get("s-maxage", ages.get("max-age"))
    return timedelta(seconds=seconds) if seconds is not None else None


def _publisher_hint(outcome: PollOutcome, now: datetime) -> tuple[timedelta | None, str]:
    hints: list[tuple[timedelta, str]] = []
    if (age := max_age(outcome.cache_control)) is not None:
        hints.append((age, f"Cache-Control max-age {_human(age)}"))
    elif outcome.expires and (expires := retry_after_delay(outcome.expires, now)) is not None:
        hints.append((expires, f"Expires in {_human(expires)}"))
    if outcome.ttl_minutes:
        ttl = timedelta(minutes=outcome.ttl_minutes)
        hints.append((ttl, f"feed ttl {_human(ttl)}"))
    if outcome.update_period_minutes:
        period = timedelta(minutes=outcome.update_period_minutes)
        hints.append((period, f"sy:updatePeriod {_human(period)}"))
    if not hints:
        return None, ""
    return max(hints, key=lambda h: h[0])


def _jitter(delay: timedelta, rng: random.Random) -> timedelta:
    return delay * (1 + rng.uniform(-JITTER, JITTER))


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
