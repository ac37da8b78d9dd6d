"""Story matching over a stream held in memory: the lookups and decisions ``storymatch`` makes
against the database, made against dictionaries, for the benchmark and the tests."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta

from aggregator import cluster, stories
from aggregator.stories import Decision, Features, Member, StoryProfile, TermStats


class Stream:
    """Story matching over a stream held in memory: the same lookup and decision the pipeline
    makes with the database, for the benchmark and the tests.

    ``add`` decides an item and records it; items older than ``window`` before the newest are
    forgotten (the database's window leaves them out). Items must come in time order: forgetting
    goes by arrival, so an earlier item after later ones would be weighed against a window that
    still holds items from more than ``window`` before it, or that lost ones inside it. ``add``
    refuses one (ValueError) rather than answer for another stream than the one it was given.
    """

    def __init__(self, window: timedelta = timedelta(days=3)) -> None:
        self.window = window
        self._items: list[tuple[datetime, int, Features, int]] = []  # (at, item id, features, story)
        self._start = 0  # index of the oldest item still in the window
        self._term_stories: dict[int, dict[int, int]] = {}  # term -> story -> items in the window
        self._copy_keys: dict[int, list[int]] = {}  # lead-copy key -> indexes into _items
        self._stories_live: dict[int, int] = {}  # story -> items in the window
        self.members: dict[int, list[Member]] = {}
        self._sources: dict[int, set[object]] = {}  # story -> the sources of its members
        self.first_at: dict[int, datetime] = {}
        self._profiles: dict[int, StoryProfile] = {}
        self._next_story = 1
        self.absorbed: dict[int, int] = {}  # story -> the story it was merged into (``Decision.absorbs``)

    def stats(self) -> TermStats:
        return TermStats(len(self._stories_live), _Counts(self._term_stories))

    def add(
        self, item_id: int, at: datetime, features: Features, story_id: int | None = None, source: object = None
    ) -> tuple[int, Decision]:
        """Decide the item's story (``story_id`` given: it joins that one, e.g. by URL).
        ``source``: where it comes from (its outlet); None: every item is taken for another
        outlet's. ValueError: ``at`` is earlier than an item already added.
        """
        if self._items and at < self._items[-1][0]:
            raise ValueError(f"item {item_id} at {at} comes after one at {self._items[-1][0]}: add in time order")
        self._expire(at)
        decision = Decision(story_id, None, ())
        if story_id is None:
            found = self.reach(at, features)
            stats = self.stats()
            profiles = [self.profile(story) for story in stories.rank_candidates(found)]
            sources = {p.story_id: self._sources[p.story_id] for p in profiles}
            own, one_outlet = stories.own_stories(sources, source), stories.other_outlets_stories(sources, source)
            decision = stories.decide(features, at, profiles, stats, stories.copied(found), own, one_outlet)
            story_id = decision.story_id
            for fragment in decision.absorbs:
                self._absorb(fragment.story_id, decision.story_id)
        if story_id is None:
            story_id = self._next_story
        self._next_story = max(self._next_story, story_id + 1)
        self._record(item_id, at, features, story_id, source)
        return story_id, decision

    def reach(self, at: datetime, features: Features) -> dict[int, float]:
        """The stories an item published at ``at`` reaches through its rare names and lead-copy
        keys, with the weight of what reaches each (``stories.reached``): those ``add`` judges
        the first ``stories.MAX_CANDIDATES`` of (and what the benchmark asks, to tell a story
        an item never reached from one it was judged against). Items older than the window
        before ``at`` are forgotten first, as ``add`` does."""
        self._expire(at)
        stats = self.stats()
        by_copy: dict[int, set[int]] = {}  # lead-copy key -> the stories of the items under it
        if features.signature is not None:
            for key in cluster.band_keys(features.signature):
                hits = self._live(key)
                if len(hits) <= stories.KEY_MAX_STORIES:
                    by_copy[key] = {self._items[index][3] for index in hits}
        return stories.reached(features, stats.keys(features.terms), stats, self._term_stories, by_copy)

    def _record(self, item_id: int, at: datetime, features: Features, story_id: int, source: object) -> None:
        index = len(self._items)
        self._items.append((at, item_id, features, story_id))
        self._stories_live[story_id] = self._stories_live.get(story_id, 0) + 1
        for term in features.terms:
            per_story = self._term_stories.setdefault(term, {})
            per_story[story_id] = per_story.get(story_id, 0) + 1
        if features.signature is not None:
            for key in cluster.band_keys(features.signature):
                self._copy_keys.setdefault(key, []).append(index)
        members = self.members.setdefault(story_id, [])
        if len(members) < stories.REPRESENTATIVES:
            members.append(Member(item_id, at, features))
            self._sources.setdefault(story_id, set()).add(source)
            self._profiles.pop(story_id, None)
        self.first_at[story_id] = min(self.first_at.get(story_id, at), at)

    def story_of(self, story_id: int) -> int:
        """The story a story returned by ``add`` is now: itself, or the one it was merged into."""
        while story_id in self.absorbed:
            story_id = self.absorbed[story_id]
        return story_id

    def _absorb(self, fragment: int, story_id: int | None) -> None:
        """Merge ``fragment`` into ``story_id``: its items become the story's, and the story is
        judged on the first members of both (as storage reads them: earliest first)."""
        assert story_id is not None
        for index in range(self._start, len(self._items)):
            at, item_id, features, story = self._items[index]
            if story == fragment:
                self._items[index] = (at, item_id, features, story_id)
                for term in features.terms:
                    per_story = self._term_stories[term]
                    if moved := per_story.pop(fragment, 0):  # all its items' at the first
                        per_story[story_id] = per_story.get(story_id, 0) + moved
        if fragment in self._stories_live:
            self._stories_live[story_id] = self._stories_live.get(story_id, 0) + self._stories_live.pop(fragment)
        members = [*self.members.get(story_id, ()), *self.members.pop(fragment, ())]
        members.sort(key=lambda m: (m.published_at, m.item_id))
        self.members[story_id] = members[: stories.REPRESENTATIVES]
        self._sources[story_id] = self._sources.get(story_id, set()) | self._sources.pop(fragment, set())
        self.first_at[story_id] = min(self.first_at[story_id], self.first_at.pop(fragment))
        self._profiles.pop(fragment, None)
        self._profiles.pop(story_id, None)
        self.absorbed[fragment] = story_id

    def profile(self, story_id: int) -> StoryProfile:
        """The story as ``decide`` sees it (kept until it gains a representative: its centroid
        and name shares are computed once, as storage would keep them per poll)."""
        found = self._profiles.get(story_id)
        if found is None:
            found = StoryProfile(story_id, tuple(self.members[story_id]), self.first_at[story_id])
            self._profiles[story_id] = found
        return found

    def _live(self, key: int) -> list[int]:
        """The items under a lead-copy key still in the window (forgetting the others)."""
        entries = self._copy_keys.get(key)
        if not entries:
            return []
        if entries[0] < self._start:
            del entries[: bisect.bisect_left(entries, self._start)]
        return entries

    def _expire(self, now: datetime) -> None:
        while self._start < len(self._items) and self._items[self._start][0] < now - self.window:
            _, _, features, story = self._items[self._start]
            for term in features.terms:
                per_story = self._term_stories[term]
                per_story[story] -= 1
                if not per_story[story]:
                    del per_story[story]
                    if not per_story:
                        del self._term_stories[term]
            self._stories_live[story] -= 1
            if not self._stories_live[story]:
                del self._stories_live[story]
            self._start += 1


class _Counts(Mapping[int, int]):
    """Stories per term, read from ``Stream``'s term -> story -> items index."""

    def __init__(self, index: dict[int, dict[int, int]]) -> None:
        self._index = index

    def __getitem__(self, term: int) -> int:
        return len(self._index[term])

    def get(self, term: int, default: int = 0) -> int:  # type: ignore[override]
        found = self._index.get(term)
        return len(found) if found else default

    def __iter__(self) -> Iterator[int]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)
