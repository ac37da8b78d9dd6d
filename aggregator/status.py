"""The read-only ``/status`` page: every source's health and the last week's items per day.

Rendered on request from the database (it is for operators, not subscribers), escaped by
Jinja2 — source names and error messages come from outside — and served with the same
script-forbidding Content-Security-Policy as the output pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jinja2

from aggregator.store.repository import SourceHealth, Store

DAYS = 7
BAR_HEIGHT = 22
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("aggregator", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)


@dataclass(frozen=True)
class StatusRow:
    health: SourceHealth
    status: str
    per_day: list[int]
    heights: list[int]


def source_status(row: SourceHealth) -> str:
    """One word (and the last HTTP status when failing) for a source's state."""
    if row.retired_reason:
        return "retired"
    if not row.in_config:
        return "removed"
    if not row.enabled:
        return "disabled"
    if row.last_polled_at is None:
        return "new"
    if row.error_count:
        return f"failing ({row.last_status})" if row.last_status else "failing"
    return "ok"


def render_status(store: Store, now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC)
    days = [(now - timedelta(days=offset)).strftime("%Y-%m-%d") for offset in range(DAYS - 1, -1, -1)]
    since = datetime.strptime(days[0], "%Y-%m-%d").replace(tzinfo=UTC)
    counts = store.items_per_day(since)
    rows = []
    for health in store.health():
        per_day = [counts.get(health.name, {}).get(day, 0) for day in days]
        top = max(per_day) or 1
        heights = [max(1, round(BAR_HEIGHT * n / top)) if n else 0 for n in per_day]
        rows.append(StatusRow(health, source_status(health), per_day, heights))
    rows.sort(key=lambda r: (not r.status.startswith("failing"), r.health.name.lower()))
    page = _TEMPLATES.get_template("status.html").render(
        rows=rows, days=days, stats=store.stats(now), now=now, when=_when
    )
    return page.encode("utf-8")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "—"
