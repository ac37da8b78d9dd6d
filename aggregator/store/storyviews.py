"""Stored stories as people look at them: a story's coverage page, ``aggregator story``, and
finding a story by its number, its tag: id or an item's URL.

How a user's reference is read (which form it is, how a URL is canonicalized) is the
caller's business (``cli.resolve_story``); these queries take the plain values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from aggregator.store._sql import StoreBase, chunks
from aggregator.store.models import ItemRow, SourceRow, StoryRow

LARGEST_ID = 2**63 - 1
"""The largest number a story can have (a signed 64-bit integer, on both backends). A larger
one, typed by a user or asked for at ``/stories/<id>``, names no story; the driver would refuse
to send it and fail the command or the request."""


@dataclass(frozen=True)
class CoverageItem:
    """One outlet's item of a story, as the story page lists it."""

    source_name: str
    title: str
    link: str | None
    sort_at: datetime
    dated: bool  # False: the outlet gave no date; sort_at is when we first saw it
    item_id: int
    first_seen_at: datetime
    language: str | None = None  # as its feed declared it
    age_unknown: bool = False  # undated, from its feed's first fetch (``poll.ages_unknown``)


@dataclass(frozen=True)
class StoryCoverage:
    story_id: int
    uid: str
    items: tuple[CoverageItem, ...]  # newest first
    merged_into: int | None = None  # the story this one became (``StoryRow.merged_into``); no items then


@dataclass(frozen=True)
class StoryMemberRow:
    """One item of a story as ``aggregator story`` shows it."""

    item_id: int
    source: str
    title: str
    link: str | None
    sort_at: datetime
    reason: str | None
    first_seen_at: datetime


_BECAME = aliased(StoryRow)
_LIVE = (
    select(func.coalesce(_BECAME.id, StoryRow.id), func.coalesce(_BECAME.uid, StoryRow.uid))
    .select_from(StoryRow)
    .outerjoin(_BECAME, _BECAME.id == StoryRow.merged_into)
)
"""(id, tag: id) of the story a story row's number now leads to, with a ``where`` on the row:
itself, or the story it was merged into."""


class StoryViewStore(StoreBase):
    def story_coverage(self, story_id: int) -> StoryCoverage | None:
        """Every stored item of a story, from every source, newest first; of a merged story,
        none, and the story it became."""
        if not 0 < story_id <= LARGEST_ID:
            return None
        with self.session() as s:
            found = s.execute(select(StoryRow.uid, StoryRow.merged_into).where(StoryRow.id == story_id)).first()
            if found is None:
                return None
            uid, merged_into = found
            if merged_into is not None:
                return StoryCoverage(story_id, uid, (), merged_into)
            rows = s.execute(
                select(
                    SourceRow.name, ItemRow.title, ItemRow.link, ItemRow.sort_at, ItemRow.published_at, ItemRow.id,
                    ItemRow.first_seen_at, ItemRow.language, ItemRow.age_unknown,
                )
                .join(SourceRow, ItemRow.source_id == SourceRow.id)
                .where(ItemRow.story_id == story_id)
                .order_by(ItemRow.sort_at.desc(), ItemRow.id.desc())
            )  # fmt: skip
            items = tuple(
                CoverageItem(
                    r.name,
                    r.title,
                    r.link,
                    r.sort_at,
                    r.published_at is not None,
                    r.id,
                    r.first_seen_at,
                    r.language,
                    bool(r.age_unknown),
                )
                for r in rows
            )
        return StoryCoverage(story_id, uid, items)

    def story_by_id(self, story_id: int) -> tuple[int, str] | None:
        """(id, tag: id) of the story with this number, if there is one: of the story it
        became, if it was merged (``StoryRow.merged_into``)."""
        if not 0 < story_id <= LARGEST_ID:
            return None
        with self.session() as s:
            row = s.execute(_LIVE.where(StoryRow.id == story_id)).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def story_by_uid(self, uid: str) -> tuple[int, str] | None:
        """(id, tag: id) of the story with this tag: id, if there is one: of the story it
        became, if it was merged."""
        with self.session() as s:
            row = s.execute(_LIVE.where(StoryRow.uid == uid)).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def story_by_url(self, canonical_url: str, link: str) -> tuple[int, str] | None:
        """(id, tag: id) of a story with an item at this canonical URL, else of one with an
        item with this link. Asked in that order: ``canonical_url`` is indexed and finds
        nearly every item, while ``link`` is not (no ingest pays for a second URL index for a
        command), and asked together they made SQLite read every item of the database."""
        with self.session() as s:
            for found in (ItemRow.canonical_url == canonical_url, ItemRow.link == link):
                row = s.execute(
                    select(StoryRow.id, StoryRow.uid)
                    .join(ItemRow, ItemRow.story_id == StoryRow.id)
                    .where(found)
                    .limit(1)
                ).first()
                if row is not None:
                    return int(row[0]), str(row[1])
        return None

    def match_reasons(self, item_ids: Iterable[int]) -> dict[int, str]:
        """Why each of these items joined its story (or started one), where it was recorded."""
        found: dict[int, str] = {}
        with self.session() as s:
            for chunk in chunks(sorted(set(item_ids))):
                rows = s.execute(select(ItemRow.id, ItemRow.match_reason).where(ItemRow.id.in_(chunk)))
                found.update((item_id, reason) for item_id, reason in rows if reason)
        return found

    def story_members_detail(self, story_id: int) -> list[StoryMemberRow]:
        """Every item of a story, earliest first, with why it joined (``aggregator story``)."""
        with self.session() as s:
            rows = s.execute(
                select(
                    ItemRow.id, SourceRow.name, ItemRow.title, ItemRow.link, ItemRow.sort_at, ItemRow.match_reason,
                    ItemRow.first_seen_at,
                )
                .join(SourceRow, ItemRow.source_id == SourceRow.id)
                .where(ItemRow.story_id == story_id)
                .order_by(ItemRow.sort_at, ItemRow.id)
            ).all()  # fmt: skip
        return [StoryMemberRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]
