"""One poll's new items decided together: a story one of them starts is a candidate for the rest.

``stories.decide`` judges an item against stored stories. Items of one fetch arrive together, so
the second report of an event in a feed would otherwise find no story to join: the first one's
story is not stored yet. ``Batch`` keeps the stories the poll's items start, under provisional
ids, and offers them to the later items like stored ones. Those stories are all one outlet's,
so only a copy joins them: an outlet's own names are no evidence (``stories``). It is pure,
like ``stories``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from aggregator.stories import (
    KEY_MAX_STORIES,
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
    story has no number until it is stored. Found through the same rare keys as stored ones,
    through an index of the terms each new story carries: a feed may bring thousands of items in
    one fetch, and each item looking at every story the earlier ones started made such a poll's
    cost grow with the square of its size. A term more than ``KEY_MAX_STORIES`` of those stories
    carry is no key among them, as a term that many stored stories carry is none among those
    (``TermStats.is_key``): an outlet's own name in every item would reach them all."""

    def __init__(self, stats: TermStats, one_source: bool = True) -> None:
        """``one_source``: the items come from one source, as a poll's do (False: from several,
        or unknown, as in a benchmark mixing outlets in one batch), so its new stories are the
        source's own."""
        self.stats = stats
        """What the next items are weighed with: a backlog poll's stretches each bring their own."""
        self.one_source = one_source
        self.named: dict[int, str] = {}  # provisional id -> how explanations call it
        self._founders: dict[int, str] = {}
        # provisional id -> its profile, extended as members join: what a profile sums and
        # counts is then done once per member, not once per later item that judges it
        self._profiles: dict[int, StoryProfile] = {}
        # term -> the new stories whose judged members carry it (as keys: a set kept in order)
        self._carriers: dict[int, dict[int, None]] = {}
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
        weights: dict[int, float] = {}  # each new story the keys reach, and what they weigh there
        for term in keys:
            carriers = self._carriers.get(term, ())
            if len(carriers) > KEY_MAX_STORIES:
                continue
            weight = self.stats.weight(term)
            for story in carriers:
                weights[story] = weights.get(story, 0.0) + weight
        for story, weight in weights.items():
            if figures != self._figures[story] and named <= self._names[story]:
                continue  # one outlet's series told from one template: another result, another day
            if weight > 0:
                reached[story] = weight
        candidates = [stored[s] if s >= 0 else self._profiles[s] for s in rank_candidates(reached)]
        mine = {s for s in reached if (s < 0 and self.one_source) or s in own}  # the poll's source only
        decision = decide(item, at, candidates, self.stats, copied(reached), mine, one_outlet)
        joined = decision.story_id
        if joined is None:
            new = -(len(self._founders) + 1)
            self._founders[new] = key
            self._profiles[new] = StoryProfile(new, (Member(new, at, item),), at)
            self._index(new, item.terms)
            self._figures[new] = figures
            self._names[new] = named
            self.named[new] = f"the new story of {title or repr(key)} (same poll)"
        elif joined < 0:
            profile = self._profiles[joined]
            if len(profile.members) < REPRESENTATIVES:
                self._profiles[joined] = profile.extended((Member(joined, at, item),))
                self._index(joined, item.terms)
            self._figures[joined] |= figures
            self._names[joined] |= named
            return decision, self._founders[joined]
        return decision, None

    def _index(self, story: int, terms: Iterable[int]) -> None:
        """Index the terms of a new story's judged member (``_carriers``)."""
        for term in terms:
            self._carriers.setdefault(term, {})[story] = None
