"""An editor's corrections of story matching, inside one ingest transaction: items split off a
story they do not belong in, and two stories of one event merged.

Matching links independent reports on names and meaning, and however carefully it weighs them
it will now and then put two events in one story (a reader then misses one of them) or leave
two reports of one event apart. These are the editor's way to put that right
(``aggregator split``, ``aggregator merge``). Each runs in the ingest transaction with story
matching kept out (``StoryLookups.exclude_other_matching``), so that a poll deciding at the
same moment sees the stories either before the edit or after it, never half of it. The
stories an edit touches are marked (``StoryRow.edited_at``) and matching never merges them on
its own afterwards (``StoryLookups.mergeable_stories``). Ids stay: a story keeps its number
and ``tag:`` id through an edit, and a story merged away forwards to the one it joined.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update

from aggregator.store._sql import ByValues, TransactionBase
from aggregator.store.models import EditorialRow, ItemRow, MatchKeyRow, StoryRow

_ITEM_STORIES = ByValues(lambda wanted: select(ItemRow.id, ItemRow.story_id).where(wanted(ItemRow.id)))
# The moved items' keys, their ids as one parameter (``ByValues``): a story merged away may hold
# more items than a statement may have parameters (65,535 on PostgreSQL).
_KEYS_FOLLOW = ByValues(
    lambda wanted: update(MatchKeyRow).where(wanted(MatchKeyRow.item_id)).values(story_id=bindparam("moved_to"))
)


def split_refusal(item_stories: Mapping[int, int], story_sizes: Mapping[int, int]) -> str | None:
    """Why the items named (item id -> its story) cannot be split off their story, or None:
    they must all be of one story, and not the whole of it (``story_sizes``: items per story)."""
    stories = set(item_stories.values())
    if len(stories) > 1:
        held = ", ".join(f"item {i} in story {s}" for i, s in sorted(item_stories.items()))
        return f"the items are in different stories ({held}): split one story's items at a time"
    story = next(iter(stories), None)
    if story is None:
        return "no items named"
    if story_sizes.get(story, 0) <= len(item_stories):
        return f"story {story} holds only these items: there is nothing to split them from"
    return None


def split_key(story_id: int, item_ids: Sequence[int], now: datetime) -> str:
    """The creation key (``StoryRow.key``) of the story ``split_off`` makes of ``item_ids``."""
    return f"split:{story_id}:{min(item_ids)}:{now.isoformat()}"


class StoryEdits(TransactionBase):
    """The reads and writes of an editor's corrections (see the module docstring)."""

    def item_stories(self, item_ids: Sequence[int]) -> dict[int, int]:
        """The story of each of ``item_ids`` that is stored, by item id: the items an editor
        names, and the items a poll updates (``IngestTransaction.update_items``), whose ids go
        as one parameter however many there are (``ByValues``)."""
        found: dict[int, int] = {}
        for statement, params in _ITEM_STORIES.batches(self.c.dialect.name, sorted(set(item_ids))):
            found.update((int(item_id), int(story_id)) for item_id, story_id in self.c.execute(statement, params))
        return found

    def items_at_url(self, canonical_url: str, link: str) -> list[int]:
        """The items whose canonical URL is ``canonical_url``, or else those whose link is
        ``link``: the first is indexed, and finds almost every item a user names by URL."""
        for found in (ItemRow.canonical_url == canonical_url, ItemRow.link == link):
            ids = sorted(self.c.scalars(select(ItemRow.id).where(found)))
            if ids:
                return ids
        return []

    def story_sizes(self, story_ids: Iterable[int]) -> dict[int, int]:
        """How many items each of ``story_ids`` holds (those holding any)."""
        wanted = sorted(set(story_ids))
        rows = self.c.execute(
            select(ItemRow.story_id, func.count()).where(ItemRow.story_id.in_(wanted)).group_by(ItemRow.story_id)
        )
        return {story_id: int(count) for story_id, count in rows}

    def split_off(self, story_id: int, item_ids: Sequence[int], now: datetime, uid: str, key: str) -> int:
        """Move ``item_ids`` (items of ``story_id``, not all of them) into a new story with the
        ``tag:`` id ``uid`` (and creation ``key``); return its number. The story they leave
        keeps its number and id. Its founding URL, if one of theirs, goes with them, so that a
        later item at that URL joins them (``IngestTransaction.stories_by_url``)."""
        moved = sorted(set(item_ids))
        # The moved items' URLs, earliest first: the first is the new story's founding URL.
        urls = [
            url
            for url in self.c.scalars(
                select(ItemRow.canonical_url).where(ItemRow.id.in_(moved)).order_by(ItemRow.sort_at, ItemRow.id)
            )
            if url is not None
        ]
        first_url = urls[0] if urls else None
        founding = self.c.scalar(select(StoryRow.canonical_url).where(StoryRow.id == story_id))
        if founding is not None and founding in urls:
            self.c.execute(update(StoryRow).where(StoryRow.id == story_id).values(canonical_url=None))
        values = {
            "uid": uid, "key": key, "canonical_url": first_url,
            "first_seen_at": now, "updated_at": now, "edited_at": now,
        }  # fmt: skip
        new_id = int(self.c.execute(insert(StoryRow).values(values).returning(StoryRow.id)).scalar_one())
        why = f"; split off story {story_id} into story {new_id} by an editor ({now:%Y-%m-%d %H:%M}Z)"
        taken = self.c.scalars(
            update(ItemRow)
            .where(ItemRow.id.in_(moved), ItemRow.story_id == story_id)
            .values(story_id=new_id, match_reason=func.coalesce(ItemRow.match_reason, "") + why)
            .returning(ItemRow.id)
        ).all()
        self._keys_follow(taken, new_id)
        self.c.execute(update(StoryRow).where(StoryRow.id == story_id).values(edited_at=now, updated_at=now))
        return new_id

    def merge_by_editor(self, story_id: int, into: int, now: datetime) -> None:
        """Merge ``story_id`` into ``into`` (both live stories) as ``merge_stories`` does, and
        mark both edited. An output's pin or block of the merged story becomes the one of the
        story it joined, where that has none: the editor's decision was about the event."""
        why = f"; later merged from story {story_id} into story {into} by an editor ({now:%Y-%m-%d %H:%M}Z)"
        self.merge_stories([(story_id, into)], why)
        taken = select(EditorialRow.slug).where(EditorialRow.story_id == into)
        self.c.execute(
            update(EditorialRow)
            .where(and_(EditorialRow.story_id == story_id, EditorialRow.slug.not_in(taken.scalar_subquery())))
            .values(story_id=into)
        )
        self.c.execute(delete(EditorialRow).where(EditorialRow.story_id == story_id))
        self.c.execute(update(StoryRow).where(StoryRow.id.in_([story_id, into])).values(edited_at=now, updated_at=now))

    def merge_stories(self, merges: Sequence[tuple[int, int]], why: str | None = None) -> None:
        """Merge each story into the other of its pair (story, into): its items join that story,
        and its row stays to forward there (``StoryRow.merged_into``), as do the rows of
        stories merged into it before. For stories ``mergeable_stories`` gave, in the
        transaction that found them so, each pair already its chain's end
        (``stories.merge_targets``), or for an editor's (``merge_by_editor``). ``why``: what
        each moved item's reason gains (None: matching's)."""
        for story, target in merges:
            # Each item's reason says why it started or joined the story it was stored in; say
            # how it came to be in this one (``aggregator story`` shows it).
            merged = why or (
                f"; later merged from story {story} into story {target}: another outlet's report showed them one event"
            )
            moved = self.c.scalars(
                update(ItemRow)
                .where(ItemRow.story_id == story)
                .values(story_id=target, match_reason=func.coalesce(ItemRow.match_reason, "") + merged)
                .returning(ItemRow.id)
            ).all()
            self._keys_follow(moved, target)
            self.c.execute(
                update(StoryRow)
                .where(or_(StoryRow.id == story, StoryRow.merged_into == story))
                .values(merged_into=target)
            )

    def _keys_follow(self, item_ids: Sequence[int], story_id: int) -> None:
        """Give the moved items' match keys their new story (``MatchKeyRow.story_id``). After
        the items' own UPDATE, which locks their rows: on PostgreSQL a worker updating one of
        them meanwhile either committed its new keys before this statement, which then moves
        them too, or waits for this transaction and reads the item's story anew
        (``IngestTransaction.update_items``)."""
        for statement, params in _KEYS_FOLLOW.batches(self.c.dialect.name, sorted(item_ids), moved_to=story_id):
            self.c.execute(statement, params)
