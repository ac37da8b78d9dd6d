"""One poll's new items decided together: a story one of them starts is a candidate for the rest.

``stories.decide`` judges an item against stored stories. Items of one fetch arrive together, so
the second report of an event in a feed would otherwise find no story to join: the first one's
story is not stored yet. ``Batch`` keeps the stories the poll's items start, under provisional
ids, and offers them to the later items like stored ones. Those stories are all one outlet's,
so only a copy joins them: an outlet's own names are no evidence (``stories``). It is pure,
like ``stories``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from aggregator.stories import (
    REPRESENTATIVES,
    Decision,
    Features,
    Member,
    StoryProfile,
    TermStats,
    copied,
    decide,
    rank_candidates,
)


class Batch:
    """Items decided together, in publication order (one poll's new items): each that starts a
    story becomes a candidate for the later ones, under a provisional negative id, since its
    story has no number until it is stored. Found through the same rare keys as stored ones."""

    def __init__(self, stats: TermStats, one_source: bool = True) -> None:
        """``one_source``: the items come from one source, as a poll's do (False: from several,
        or unknown, as in a benchmark mixing outlets in one batch), so its new stories are the
        source's own."""
        self.stats = stats
        """What the next items are weighed with: a backlog poll's stretches each bring their own."""
        self.one_source = one_source
        self.named: dict[int, str] = {}  # provisional id -> how explanations call it
        self._founders: dict[int, str] = {}
        self._members: dict[int, list[Member]] = {}
        self._carried: dict[int, set[int]] = {}  # the terms of each new story's judged members
        self._figures: dict[int, frozenset[int]] = {}
        self._names: dict[int, frozenset[int]] = {}

    def decide(
        self,
        key: str,
        at: datetime,
        item: Features,
        keys: Sequence[int],
        found: Mapping[int, float],
        stored: Mapping[int, StoryProfile],
        title: str = "",
        figures: frozenset[int] = frozenset(),
        own: Collection[int] = (),
        one_outlet: Collection[int] = (),
    ) -> tuple[Decision, str | None]:
        """The item's decision among the ``stored`` stories ``found`` reached (see
        ``rank_candidates``) and the batch's own new stories, and the key of the batch item whose
        new story it joins (None: a stored story, or a story of its own). ``title`` names the item
        in explanations of later items (its key if empty). ``figures``: the item's terms that are
        figures (``names.figures``). Items of one poll come from one feed: an outlet does not
        report one event twice with other figures each time, but it does publish series from
        one template (results, prices, draws) that differ only there: an item naming nothing
        a story of its poll does not joins it only with the same figures. ``own``: the
        ``stored`` stories whose judged members all come from the poll's source; like the
        batch's own new stories, only a copy joins them (``stories.decide``). ``one_outlet``:
        the ``stored`` stories of one source that may be merged into the story the item joins
        (``stories.decide``); the batch's own new stories never are."""
        reached = dict(found)
        named = item.terms - figures
        for story, carried in self._carried.items():
            if figures != self._figures[story] and named <= self._names[story]:
                continue  # one outlet's series told from one template: another result, another day
            weight = sum(self.stats.weight(t) for t in keys if t in carried)
            if weight > 0:
                reached[story] = weight
        candidates = [
            stored[s] if s >= 0 else StoryProfile(s, tuple(self._members[s]), self._members[s][0].published_at)
            for s in rank_candidates(reached)
        ]
        mine = {s for s in reached if (s < 0 and self.one_source) or s in own}  # the poll's source only
        decision = decide(item, at, candidates, self.stats, copied(reached), mine, one_outlet)
        joined = decision.story_id
        if joined is None:
            new = -(len(self._founders) + 1)
            self._founders[new] = key
            self._members[new] = [Member(new, at, item)]
            self._carried[new] = set(item.terms)
            self._figures[new] = figures
            self._names[new] = named
            self.named[new] = f"the new story of {title or repr(key)} (same poll)"
        elif joined < 0:
            if len(self._members[joined]) < REPRESENTATIVES:
                self._members[joined].append(Member(joined, at, item))
                self._carried[joined] |= item.terms
            self._figures[joined] |= figures
            self._names[joined] |= named
            return decision, self._founders[joined]
        return decision, None
