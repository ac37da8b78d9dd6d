"""Archived feeds (RFC 5005 §4): every week of an output as stable Atom documents.

A feed reader that was away longer than the subscription feed's window follows
``prev-archive`` links back page by page and misses nothing. Pages are ISO weeks of the
items' dates, so a page's address never changes and, once its week is over, neither
(in practice) does its content. Each page applies the output's rules but not its
``max_entries`` or per-source cap: an archive is complete. A week with more items than one
document holds (``ARCHIVE_MAX_ENTRIES``) is several pages (``Page``), oldest items first:
``2026-W47``, then ``2026-W47-2`` and on, each linking the one before.

A week is archived once it is over (``first_open_week``), rendered once and stored
(``ArchiveRow``, a row per page) and written beside the feeds: it never changes
afterwards, so a page's ``prev-archive`` link is the page before it that has entries (weeks
without any are skipped) and it carries no ``next-archive`` (that page is not known yet when
it freezes). The subscription feed links the newest archived page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aggregator.config import Output

ARCHIVE_MAX_ENTRIES = 5000
"""Items one archive document holds: a busier week takes several (``Page``). A reader
fetches a document whole, and one of 5,000 entries is about 10 MB of Atom."""
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_PAGE = re.compile(r"^(?P<week>\d{4}-W\d{2})(?:-(?P<part>[2-9]|[1-9]\d{1,5}))?$")


@dataclass(frozen=True, order=True)
class Week:
    year: int
    week: int

    @classmethod
    def of(cls, moment: datetime) -> Week:
        iso = moment.astimezone(UTC).isocalendar()
        return cls(iso.year, iso.week)

    @classmethod
    def parse(cls, label: str) -> Week | None:
        match = _WEEK.match(label)
        if not match:
            return None
        try:
            date.fromisocalendar(int(match.group(1)), int(match.group(2)), 1)
        except ValueError:
            return None
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def start(self) -> datetime:
        return datetime.combine(date.fromisocalendar(self.year, self.week, 1), datetime.min.time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=7)

    @property
    def days(self) -> str:
        """Its Monday to Sunday for people, in English as the pages are: "16–22 November 2026",
        "30 November – 6 December 2026", "29 December 2025 – 4 January 2026". Month names are
        spelled here, not by strftime, which would follow the server's locale."""
        first, last = self.start.date(), self.start.date() + timedelta(days=6)
        if first.year != last.year:
            return f"{_day(first, year=True)} – {_day(last, year=True)}"
        if first.month != last.month:
            return f"{_day(first)} – {_day(last, year=True)}"
        return f"{first.day}–{_day(last, year=True)}"

    def __str__(self) -> str:
        return f"{self.year}-W{self.week:02d}"


_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def _day(day: date, *, year: bool = False) -> str:
    return f"{day.day} {_MONTHS[day.month - 1]}" + (f" {day.year}" if year else "")


@dataclass(frozen=True, order=True)
class Page:
    """One archive document of an output: its week's items, or, in a week with more than
    ``ARCHIVE_MAX_ENTRIES``, the ``part``-th run of them from the oldest. The first part's
    label is the week's ("2026-W47"), so a week that fits one document has the address it
    always had; later parts add their number ("2026-W47-2"). Pages sort as the chain runs."""

    week: Week
    part: int = 1

    @classmethod
    def parse(cls, label: str) -> Page | None:
        """The page a label names; None for anything else (a part is never written "-1")."""
        match = _PAGE.match(label)
        week = Week.parse(match.group("week")) if match else None
        if match is None or week is None:
            return None
        return cls(week, int(match.group("part") or 1))

    @classmethod
    def of(cls, label: str) -> Page:
        """The page a stored label names: ``parse`` for labels this code wrote, which are
        never anything else (ValueError if one is)."""
        page = cls.parse(label)
        if page is None:
            raise ValueError(f"not an archive page label: {label!r}")
        return page

    @property
    def following(self) -> Page:
        """The same week's next page."""
        return Page(self.week, self.part + 1)

    def __str__(self) -> str:
        return str(self.week) if self.part == 1 else f"{self.week}-{self.part}"

    @property
    def title(self) -> str:
        """How a page says which it is: "2026-W47", "2026-W47, part 2"."""
        return str(self.week) if self.part == 1 else f"{self.week}, part {self.part}"

    @property
    def dated_title(self) -> str:
        """How a page names itself to people: its title and its week's days, "2026-W47, 16–22
        November 2026" (an ISO week number alone makes a reader count weeks). The Atom
        documents keep ``title``: frozen archives already carry it."""
        return f"{self.title}, {self.week.days}"


def archive_url(public_url: str, slug: str, week: Page | Week | str) -> str:
    return f"{public_url}/feeds/{slug}/archive/{week}.atom"


def archive_output(output: Output) -> Output:
    """The output's rules, without the limits that make sense only for the current window."""
    return output.model_copy(update={"max_entries": ARCHIVE_MAX_ENTRIES, "per_source_cap": None, "max_age": None})


# A week is archived (and frozen) one day after it ends: polling intervals are capped at a
# day, so by then the items dated inside it have normally been fetched.
ARCHIVE_GRACE = timedelta(days=1)


def first_open_week(now: datetime) -> Week:
    """The oldest week that is not complete at ``now``: it and later weeks are not archived yet."""
    return Week.of(now - ARCHIVE_GRACE)


def archive_page_url(public_url: str, slug: str, week: Page | Week | str) -> str:
    """The archive week as an HTML page (``<week>.html`` on disk, so nginx's ``$uri.html`` finds it)."""
    return f"{public_url}/feeds/{slug}/archive/{week}"


def archive_dir(output_dir: Path, slug: str) -> Path:
    """Where an output's archive files go, mirroring their URLs under ``/feeds/``."""
    return output_dir / slug / "archive"
