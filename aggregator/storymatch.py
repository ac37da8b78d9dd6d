"""Story matching against storage: the reads a poll's new items need, then the pure decision.

``stories.decide`` (semantic) and ``cluster.match`` (lexical) decide; this module looks up what
they decide on, batched per poll inside the poll's transaction: candidate stories by rare names
and lead-copy keys, the stream statistics, and the candidates' first members. What changes
slowly is kept between polls (common terms' counts, decoded members), shared by the writer
threads.

A poll with new items to decide first waits for its turn (``exclude_other_matching``), which it
keeps until its transaction ends: a decision must see every item decided before it, or two
reports of one event committed side by side would each start a story.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from aggregator import cluster, metrics, names, parseworker, stories, storybatch
from aggregator.records import IngestPlan, InsertedItem, Item, NewItem
from aggregator.store.repository import IngestTransaction, MatchCandidate

COUNTS_KEPT = timedelta(minutes=5)
"""How long the writer trusts a common term's story count and the window's number of stories:
both move by a few percent an hour, and a common term only stays or becomes more common."""
STORIES_KEPT_STREAM = timedelta(hours=1)
"""How far the stream may move on (the latest time a poll judges) before the window's number of
stories is counted again, however little wall time passed: a first ingest reads days of backlog
in minutes, and a count taken at its start would make every name look commoner than it is."""
COMMON_TERMS_KEPT = 50_000
STORY_COUNTS_KEPT = 1_000
"""Window story counts kept at once, one per ``STORIES_KEPT_STREAM`` of the stream: a first
ingest's backlog polls each weigh items of many days (``STATS_SPAN``), and come back to the
same days feed after feed."""
STOCK_KEYS_KEPT = 50_000
TERM_SAMPLE = 500
"""Items of the window a term's stories are counted among: enough to tell a common term from a
rare one whatever the window holds (weights reach 0 well below this many stories)."""
DECODED_MEMBERS = 36_000
"""Stored story members whose features the writer keeps decoded, packed (``stories.PackedMember``):
the same stories are candidates poll after poll while their event is in the news, and a first
ingest, whose polls each span days of a feed's backlog, meets the same ones again all through
its run. A miss is cheap, but a first ingest made mostly of misses is not. Packed, a member is
several times smaller than decoded, so this many fit in the memory far fewer decoded ones took."""
STATS_SPAN = stories.STORY_SPAN
"""The longest stretch of a poll's items weighed with one set of stream statistics. A feed's
first fetch can bring a week or more of backlog in one poll; counted over a window stretched
to hold all of it, an event's names look as common as the feed's later days made them (the
leaders of a summit in a dozen stories the week after), and its early reports lose the rare
names they share with other outlets' reports of the same days. A poll of new items in a
running service spans minutes: one stretch, one set of statistics, as before."""
KEPT_PROFILES = 625
"""Stories whose profile (members, centroid, name shares) the writer keeps between polls. A
profile's counts and shares weigh far more than its packed members, so these are bounded on
their own rather than with ``DECODED_MEMBERS``."""
FRESH_KEPT = 2_000
"""New items' decoded features the writer keeps between deciding about them and their
transaction committing (``StoryMatcher.stored``): a commit that fails leaves its items here
until newer ones push them out."""
SETTLED_STORIES = 8_000
"""Stories whose beginning the writer keeps once it has judged them: a story that began more
than ``stories.STORY_SPAN`` before a poll is judged on that alone (``stories.StoryProfile.unread``),
and such stories are most of the candidates rare names reach over ``stories.TERM_WINDOW``. Kept
apart from the members, far fewer of which fit."""


OFF_REASON = "new story: story_matching is off (only a shared URL joins items)"
LEXICAL_NEW_REASON = "new story: its lead copies no recent item's (story_matching: lexical)"


def _by_url(story_id: int | None) -> str | None:
    """The reason of an item that joined ``story_id`` by its URL before any matching (None: it did not)."""
    return None if story_id is None else f"joined story {story_id}: same URL as one of its items"


class StoryMatcher:
    """Joins a poll's new items to stored stories, as the ``story_matching`` setting says. One
    per pipeline: it keeps what the writer threads have decoded and counted."""

    def __init__(self) -> None:
        self._members = _DecodedMembers()
        self._term_counts = _TermCounts()
        self._stock_copy_keys = _Kept[bool](STOCK_KEYS_KEPT)  # lead-copy keys found to be stock phrases
        self._edits = _Edits()

    def match(
        self,
        tx: IngestTransaction,
        plan: IngestPlan,
        now: datetime,
        mode: str,
        signatures: dict[str, cluster.Signed],
        features: dict[str, parseworker.Featurized] | None = None,
        source_id: int | None = None,
    ) -> IngestPlan:
        """Join new items whose URL matched no story to a stored story, as ``story_matching``
        says: "semantic" (``stories``), "lexical" (copied text only) or "off". ``source_id``:
        the polled source, whose own stories only a copy joins (``stories.decide``)."""
        if mode != "off" and any(new.story_id is None for new in plan.inserts):
            started = time.perf_counter()
            tx.exclude_other_matching()  # before any read the decision rests on
            metrics.STORY_TURN_SECONDS.observe(time.perf_counter() - started)
            if mode == "semantic":  # what is kept of a story an editor changed since is not trusted
                self._members.touched(self._edits.since_asked(tx))
        if mode == "off":
            matched = replace(
                plan,
                inserts=tuple(replace(new, match_reason=_by_url(new.story_id) or OFF_REASON) for new in plan.inserts),
            )
        elif mode == "lexical":
            matched = self._match_lexical(tx, plan, now, signatures)
        else:
            matched = self._match_semantic(tx, plan, now, signatures, features or {}, source_id)
        joined = {new.story_id for new in matched.inserts if new.story_id is not None}
        merged = {story for pair in matched.merges for story in pair}
        self._members.touched(joined | merged | {update.stored.story_id for update in matched.updates})
        return matched

    def kept(self) -> dict[str, tuple[int, int]]:
        """What it keeps between polls, per cache: (entries now, the most it keeps; expired
        common terms and stock keys are dropped only once that many are kept). Each is bounded,
        so a service's memory grows while they fill and then levels off; ``bench/soak.py``
        prints them beside the memory, to tell the one from a leak."""
        return {
            **self._members.sizes(),
            **self._term_counts.sizes(),
            "stock copy keys": (len(self._stock_copy_keys), STOCK_KEYS_KEPT),
        }

    def stored(self, inserts: Sequence[NewItem], inserted: Mapping[str, InsertedItem]) -> None:
        """Keep the features decided on of new items now committed (``inserted``: where each
        was stored): they are the members later polls judge stories on, and would otherwise
        be read back and decoded once each. Call it only once the transaction committed: an
        item id a rolled-back transaction used is given to another item."""
        for new in inserts:
            where = inserted.get(new.item.key)
            if where is not None and new.match_features is not None:
                self._members.add(where, new.match_features, new.match_signature)

    def _match_lexical(
        self, tx: IngestTransaction, plan: IngestPlan, now: datetime, signatures: dict[str, cluster.Signed]
    ) -> IngestPlan:
        """Sign every new or changed item (the parse pool did, see ``parseworker``), and join new
        items whose URL matched no story to the stored story whose text they copy, if any."""

        def sign(item: Item) -> cluster.Signed:
            return signatures.get(item.key) or cluster.Signed.of(item.title, item.text)

        signed = [(new, sign(new.item)) for new in plan.inserts]
        unmatched = [(new, s.keys) for new, s in signed if new.story_id is None]
        by_key: dict[int, list[cluster.RecentItem]] = {}
        if unmatched:
            moments = [new.item.published_at or now for new, _ in unmatched]
            wanted = [key for _, keys in unmatched for key in keys]
            window = cluster.DEFAULT_WINDOW
            decoded: dict[int, cluster.RecentItem | None] = {}
            for key, candidates in tx.match_candidates(wanted, min(moments) - window, max(moments) + window).items():
                for candidate in candidates:
                    if candidate.item_id not in decoded:
                        decoded[candidate.item_id] = _recent(candidate)
                    if (stored := decoded[candidate.item_id]) is not None:
                        by_key.setdefault(key, []).append(stored)
        inserts = []
        for new, s in signed:
            story_id, reason = new.story_id, _by_url(new.story_id)
            # Compare only with the stored items that share one of this item's keys.
            recent = list({r.item_id: r for k in s.keys for r in by_key.get(k, ())}.values()) if by_key else []
            if story_id is None and recent:
                found = cluster.match(s.signature, new.item.published_at or now, recent)
                if found is not None:
                    story_id, reason = found.story_id, f"same story as item {found.item_id}: {found.reason}"
            if story_id is None:
                reason = LEXICAL_NEW_REASON
            inserts.append(
                replace(new, story_id=story_id, match_signature=s.stored, match_keys=s.keys, match_reason=reason)
            )
        updates = []
        for update in plan.updates:
            s = sign(update.item)
            updates.append(replace(update, match_signature=s.stored, match_keys=s.keys))
        return replace(plan, inserts=tuple(inserts), updates=tuple(updates))

    def _match_semantic(
        self,
        tx: IngestTransaction,
        plan: IngestPlan,
        now: datetime,
        signatures: dict[str, cluster.Signed],
        features: dict[str, parseworker.Featurized],
        source_id: int | None,
    ) -> IngestPlan:
        """Story matching v2: look up candidate stories (rare names, lead-copy keys), read the
        stream statistics and the candidates' first members, let ``stories.decide`` choose,
        and keep each item's features, keys and reason."""

        def prepare(item: Item) -> tuple[cluster.Signed, str, tuple[str, ...], stories.Features]:
            # Computed here only for an item the parse worker was told is stored as it is, and
            # which the store no longer holds so (another worker changed it since): rare.
            signed = signatures.get(item.key) or cluster.Signed.of(item.title, item.text)
            stored, words = features.get(item.key) or parseworker.featurize(
                item.title, parseworker.feature_text(item), item.language
            )
            return signed, stored, words, stories.Features.loads(stored, signed.signature)

        prepared = [(new, *prepare(new.item)) for new in plan.inserts]
        for _, _, stored, _, feats in prepared:
            self._members.expect(stored, feats)
        lookup = _StoryLookup(tx, now, self._members, self._term_counts, self._stock_copy_keys, source_id)
        decisions = lookup.decide([(new.item, f, w, s.keys) for new, s, _, w, f in prepared if new.story_id is None])
        inserts, merges = [], []
        for new, signed, stored, words, feats in prepared:
            story_id, reason, verdict = new.story_id, None, None
            if story_id is not None:
                reason = _by_url(story_id)
            elif (verdict := decisions.get(new.item.key)) is not None:
                story_id = verdict.decision.story_id if verdict.founder is None else None
                reason = verdict.decision.explain(names.Terms(words), verdict.named)
                if story_id is not None:
                    merges += [(fragment.story_id, story_id) for fragment in verdict.decision.absorbs]
            inserts.append(
                replace(
                    new,
                    story_id=story_id,
                    joins_new=verdict.founder if story_id is None and verdict is not None else None,
                    match_signature=signed.stored,
                    match_keys=stories.stored_keys(signed.keys, feats),
                    match_reason=reason,
                    match_features=stored,
                )
            )
        updates = []
        for update in plan.updates:
            signed, stored, _, feats = prepare(update.item)
            keys = stories.stored_keys(signed.keys, feats)
            updates.append(replace(update, match_signature=signed.stored, match_keys=keys, match_features=stored))
        ends = stories.merge_targets(merges)
        return replace(plan, inserts=tuple(inserts), updates=tuple(updates), merges=tuple(ends.items()))


class _StoryLookup:
    """The reads ``stories.decide`` needs for one poll's new items, batched: term counts over
    ``stories.TERM_WINDOW``, the stories reached through rare names and lead-copy keys, and
    their first members. The decision itself stays pure."""

    def __init__(
        self,
        tx: IngestTransaction,
        now: datetime,
        decoded: _DecodedMembers,
        counts: _TermCounts,
        stock: _Kept[bool],
        source: int | None,
    ) -> None:
        self.tx = tx
        self.now = now
        self.decoded = decoded
        self.counts = counts
        self.stock = stock
        self.source = source

    def decide(
        self, batch_items: list[tuple[Item, stories.Features, tuple[str, ...], tuple[int, ...]]]
    ) -> dict[str, Verdict]:
        """Each item's verdict, in publication order: against the stored stories its keys reach,
        and against the stories earlier items of the same poll are starting (an outlet's copy of
        its own report can arrive in the same fetch). Each stretch of the poll (``STATS_SPAN``)
        is weighed with the stream statistics of its own window. ``batch_items``: each item with
        its features, readable terms and lead-copy keys (``cluster.Signed.keys``)."""
        if not batch_items:
            return {}
        items = sorted(
            ((item, f) for item, f, _, _ in batch_items), key=lambda p: (p[0].published_at or self.now, p[0].key)
        )
        figures = {item.key: names.figures(words) for item, _, words, _ in batch_items}
        tx = self.tx
        moments = [item.published_at or self.now for item, _ in items]
        earliest = min(moments) - stories.TERM_WINDOW
        spans = []  # (items, the statistics of their own window, the stories carrying their rare terms)
        for span in _spans(items, self.now):
            first, last = span[0][0].published_at or self.now, span[-1][0].published_at or self.now
            terms = {t for _, f in span for t in f.terms}
            stats, carriers = self.counts.stats(
                tx, terms, first - stories.TERM_WINDOW, last + stories.STORY_SPAN, until=last
            )
            spans.append((span, stats, carriers))
        keys_of = {item.key: stats.keys(f.terms) for span, stats, _ in spans for item, f in span}
        copy_keys = {k for *_, keys in batch_items for k in keys}  # signed where parsed (``cluster.Signed``)
        window = cluster.DEFAULT_WINDOW
        by_copy, stock = tx.copy_key_stories_bounded(
            sorted(copy_keys - self.stock.fresh(copy_keys).keys()),
            min(moments) - window,
            max(moments) + window,
            stories.KEY_MAX_STORIES,
        )
        self.stock.keep(dict.fromkeys(stock, True))  # a stock phrase, not asked for again
        found_of = {
            item.key: stories.reached(f, keys_of[item.key], stats, carriers, by_copy)
            for span, stats, carriers in spans
            for item, f in span
        }
        stored = {s for found in found_of.values() for s in stories.rank_candidates(found)}
        profiles, own, single = self._profiles(_reached_between(stored, found_of, items, self.now), earliest)
        batch = storybatch.Batch(spans[0][1], one_source=self.source is not None)
        verdicts = {}
        for span, stats, _ in spans:
            batch.stats = stats
            for item, f in span:
                at = item.published_at or self.now
                found = {s: w for s, w in found_of[item.key].items() if s in profiles}
                decision, founder = batch.decide(
                    item.key, at, f, keys_of[item.key], found, profiles, repr(item.title), figures[item.key], own,
                    single,
                )  # fmt: skip
                verdicts[item.key] = Verdict(decision, founder, batch.named)
        return self._mergeable_fragments_only(verdicts)

    def _mergeable_fragments_only(self, verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
        """The verdicts with only the fragments that may be merged left to merge
        (``IngestTransaction.mergeable_stories``: none an editor named), asked for only when a
        decision found any: a fragment is found rarely."""
        proposed = {j.story_id for v in verdicts.values() for j in v.decision.absorbs}
        if not proposed:
            return verdicts
        mergeable = self.tx.mergeable_stories(sorted(proposed))
        return {
            key: replace(
                v,
                decision=replace(v.decision, absorbs=tuple(j for j in v.decision.absorbs if j.story_id in mergeable)),
            )
            for key, v in verdicts.items()
        }

    def _profiles(
        self, between: Mapping[int, tuple[datetime, datetime]], since: datetime
    ) -> tuple[dict[int, stories.StoryProfile], set[int], set[int]]:
        """The candidates' first members: which they are (one light query), then the stored
        features of only those not already decoded (most were, at an earlier poll). ``between``:
        when the earliest and the latest item that may judge each story were published.

        A story that can take none of the poll's items is judged on its beginning and end alone
        (``stories.StoryProfile.unread``), its members not read: one known to have begun more
        than ``stories.STORY_SPAN`` before the earliest item that may judge it, from when it
        was last judged (no query at all), or from its first member from ``since`` on; and one
        whose latest member comes more than that after the latest (a first fetch's backlog
        meets other outlets' later stories).

        With them, the stories whose judged members all come from the polled source
        (``stories.decide``'s ``own``), and those all of whose judged members come from one
        other source (its ``one_outlet``)."""
        profiles = self.decoded.closed({s: at - stories.STORY_SPAN for s, (at, _) in between.items()}, since)
        wanted = sorted(between.keys() - profiles.keys())
        found_refs = self.tx.story_member_refs(wanted, since, stories.REPRESENTATIVES)
        sources = {story: refs.sources for story, refs in found_refs.items()}
        own, single = stories.own_stories(sources, self.source), stories.other_outlets_stories(sources, self.source)
        # The latest member of a story read only in part, which may come after those read
        # (``stories.beyond_span``): one seek each, and most candidates are read whole.
        longer = [s for s, refs in found_refs.items() if len(refs.members) >= stories.REPRESENTATIVES]
        ends = self.tx.story_ends(longer) if longer else {}
        unknown = {}
        for story_id, refs in found_refs.items():
            earliest, latest = between[story_id]
            last = ends.get(story_id)
            if stories.beyond_span(refs.begins, earliest, latest, last):
                profiles[story_id] = stories.StoryProfile.unread(story_id, refs.begins, last)
                if earliest - refs.begins > stories.STORY_SPAN:  # closed to later items as well: kept for ``closed``
                    self.decoded.began(story_id, refs.begins)
            elif (kept := self.decoded.kept(story_id, refs.members, last)) is not None:
                profiles[story_id] = kept
            else:
                unknown[story_id] = refs.members
        missing = [
            m
            for story, members in unknown.items()
            for m, updates in members
            if not self.decoded.knows(m, story, updates)
        ]
        fetched = self.tx.member_features(missing) if missing else {}
        for story_id, members in unknown.items():
            found = self.decoded.profile(story_id, members, fetched, self.tx, ends.get(story_id))
            if found is not None:
                profiles[story_id] = found
        return profiles, own, single


@dataclass(frozen=True)
class Verdict:
    """A new item's decision, and the item of the same poll whose new story it joins, if any."""

    decision: stories.Decision
    founder: str | None
    named: Mapping[int, str]


class _TermCounts:
    """The stream statistics for story matching, read per poll, with what changes slowly kept:
    a common term (carried by more than ``stories.KEY_MAX_STORIES`` stories: weighing little,
    no lookup key) for ``COUNTS_KEPT``, and the number of stories in the window as long, or
    until the stream has moved on ``STORIES_KEPT_STREAM`` since it was counted. Rare terms,
    which a story that is just forming changes, are counted afresh at every poll.
    Counting a common term is what costs (it names thousands of items), so each poll pays
    only for the rare ones."""

    def __init__(self) -> None:
        self._common = _Kept[int](COMMON_TERMS_KEPT)  # term -> stories carrying it
        # stretch of the stream (``_hour``) -> (count, monotonic expiry, for when)
        self._stories: dict[int, tuple[int, float, datetime]] = {}
        self._lock = threading.Lock()

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries kept and the most kept, per kind (``StoryMatcher.kept``)."""
        with self._lock:
            stretches = len(self._stories)
        return {
            "common terms": (len(self._common), COMMON_TERMS_KEPT),
            "window story counts": (stretches, STORY_COUNTS_KEPT),
        }

    def stats(
        self,
        tx: IngestTransaction,
        terms: set[int],
        earliest: datetime,
        latest: datetime,
        until: datetime | None = None,
    ) -> tuple[stories.TermStats, dict[int, frozenset[int]]]:
        """The statistics over ``earliest`` to ``until`` (None: ``latest``), and the stories
        carrying each term counted afresh (the rare ones) over ``earliest`` to ``latest``.

        Stories are looked up further ahead than terms are counted: an item may join a story
        that a report published after it began, but what it shares with the stream is counted
        as of when it was published, as the stream in memory counts it (``storystream``). A
        first ingest stores days of every feed's items before the next feed's, and counting
        the hours after them too made an event's names look as common as its own later
        reports had made them, so that fewer of its reports found each other."""
        counted_until = latest if until is None else until
        now = time.monotonic()
        kept = COUNTS_KEPT.total_seconds()
        known = self._common.fresh(terms)
        with self._lock:
            near = [self._stories.get(_hour(counted_until) + d) for d in (-1, 0, 1)]
        total = next(
            (k[0] for k in near if k is not None and k[1] > now and abs(counted_until - k[2]) <= STORIES_KEPT_STREAM),
            None,
        )
        wanted = [stories.name_key(t) for t in terms if t not in known]
        found = tx.term_stories(wanted, earliest, latest, TERM_SAMPLE, counted_until)
        carriers = {key - stories.NAME_KEY: term.stories for key, term in found.items()}
        if total is None:
            total = tx.stories_in_window(earliest, counted_until)
            with self._lock:  # kept from when it was counted, not from the last poll that used it
                self._stories.pop(_hour(counted_until), None)  # counted again: the newest, not kept in its old place
                self._stories[_hour(counted_until)] = (total, now + kept, counted_until)
                if len(self._stories) > STORY_COUNTS_KEPT:  # the expired ones, then the oldest counted
                    fresh = [(b, k) for b, k in self._stories.items() if k[1] > now]
                    self._stories = dict(fresh[-STORY_COUNTS_KEPT:])
        counted = {key - stories.NAME_KEY: len(term.counted) for key, term in found.items() if term.counted}
        self._common.keep({term: count for term, count in counted.items() if count > stories.KEY_MAX_STORIES})
        return stories.TermStats(total, {**known, **counted}), carriers


EDITS_CLOCK_SKEW = timedelta(hours=1)
"""How far the clock of the process an editor ran ``aggregator split`` or ``merge`` in may be
behind this one's: each poll asks for the edits from that long before it last asked (``_Edits``)."""


class _Edits:
    """Which stories an editor split or merged since this process last asked
    (``StoryRow.edited_at``): a split in another process can take a story's first member
    away, after which the story begins later than this process kept (``_DecodedMembers``
    ``closed``), and reports within ``stories.STORY_SPAN`` of the members left would be refused
    on time alone. Asked inside the matching lock, so an edit committed before a poll decides
    is seen by it. An edit stamped more than ``EDITS_CLOCK_SKEW`` behind this process's clock
    is missed, as all were before: a missed link at worst, never a wrong one."""

    def __init__(self) -> None:
        self._asked: datetime | None = None  # this process's clock when it last asked
        self._seen: dict[int, datetime] = {}  # story -> the edit already acted on
        self._lock = threading.Lock()

    def since_asked(self, tx: IngestTransaction) -> set[int]:
        """The stories edited since the last call; at the first, those of the last
        ``EDITS_CLOCK_SKEW``, of which nothing is kept yet."""
        now = datetime.now(UTC)
        with self._lock:
            since = (self._asked or now) - EDITS_CLOCK_SKEW
        edited = tx.stories_edited_since(since)
        with self._lock:
            fresh = {story for story, at in edited.items() if self._seen.get(story) != at}
            self._seen = {story: at for story, at in (self._seen | edited).items() if at >= since}
            self._asked = max(self._asked or now, now)
        return fresh


Kept = TypeVar("Kept")


class _Kept(Generic[Kept]):
    """What the writer threads found about a term or key and trust for ``COUNTS_KEPT``: that a
    term is common (and its count), that a lead-copy key is a stock phrase. Both stay so while
    the window moves by minutes, and finding out again costs a count at every poll. Expired
    entries are forgotten once more than ``cap`` are kept."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._kept: dict[int, tuple[Kept, float]] = {}  # key -> (value, monotonic expiry)
        self._lock = threading.Lock()

    def fresh(self, keys: Iterable[int]) -> dict[int, Kept]:
        """The values kept, and not expired, for those of ``keys`` that have one."""
        now = time.monotonic()
        with self._lock:
            found = ((key, self._kept.get(key)) for key in keys)
            return {key: hit[0] for key, hit in found if hit is not None and hit[1] > now}

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, values: Mapping[int, Kept]) -> None:
        now = time.monotonic()
        expiry = now + COUNTS_KEPT.total_seconds()
        with self._lock:
            self._kept.update((key, (value, expiry)) for key, value in values.items())
            if len(self._kept) > self._cap:
                self._kept = {key: hit for key, hit in self._kept.items() if hit[1] > now}


Fetched = dict[int, tuple[datetime, str | None, str | None]]
"""Stored members' sort time, features and signature by item id (``member_features``)."""


class _DecodedMembers:
    """Stored story members already decoded, packed (``stories.PackedMember``), by item id,
    story and update count, the most recently used kept (``DECODED_MEMBERS``); and the profiles
    last built from them. Shared by the writer threads."""

    def __init__(self) -> None:
        self._found: OrderedDict[int, tuple[int, int, stories.PackedMember | None]] = OrderedDict()
        # story -> the first stored members (item id, update count) its last profile was built from, and it
        self._profiles: OrderedDict[int, tuple[tuple[tuple[int, int], ...], stories.StoryProfile]] = OrderedDict()
        self._settled: OrderedDict[int, datetime] = OrderedDict()  # story -> when it began, once judged
        self._fresh: OrderedDict[str, stories.Features] = OrderedDict()  # stored form -> decided on, uncommitted
        self._lock = threading.Lock()

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries kept and the most kept, per kind (``StoryMatcher.kept``)."""
        with self._lock:
            return {
                "decoded members": (len(self._found), DECODED_MEMBERS),
                "story profiles": (len(self._profiles), KEPT_PROFILES),
                "settled stories": (len(self._settled), SETTLED_STORIES),
                "uncommitted features": (len(self._fresh), FRESH_KEPT),
            }

    def expect(self, stored: str, features: stories.Features) -> None:
        """Keep a new item's features, by their stored form, until it is committed (``add``)."""
        with self._lock:
            self._fresh[stored] = features
            while len(self._fresh) > FRESH_KEPT:
                self._fresh.popitem(last=False)

    def add(self, where: InsertedItem, stored: str, signature: str | None) -> None:
        """A committed new item's features, kept (``expect``) as the member it now is
        (``signature``: the stored form of theirs)."""
        with self._lock:
            features = self._fresh.pop(stored, None)
        if features is None:
            return
        member = stories.PackedMember(where.item_id, where.sort_at, features, stored, signature)
        with self._lock:
            self._found[where.item_id] = (where.story_id, 0, member)
            while len(self._found) > DECODED_MEMBERS:
                self._found.popitem(last=False)

    def closed(self, before: Mapping[int, datetime], since: datetime) -> dict[int, stories.StoryProfile]:
        """Each story known to have begun before the time ``before`` gives it, by its beginning
        alone (``stories.StoryProfile.unread``): new members of such a story can only move its
        beginning earlier, so it stays closed to later items.
        Only a beginning that reading the story's members from ``since`` on would give again:
        one not older, of a story that took no member and saw no update since it was
        judged (``touched``)."""
        with self._lock:
            known = ((s, self._settled.get(s)) for s in before)
            found = {s: at for s, at in known if at is not None and since <= at < before[s]}
            for story_id in found:
                self._settled.move_to_end(story_id)
        return {s: stories.StoryProfile.unread(s, at) for s, at in found.items()}

    def began(self, story_id: int, at: datetime) -> None:
        """Keep when a story judged on its beginning alone began (``closed``)."""
        with self._lock:
            self._settle(story_id, at)

    def touched(self, story_ids: set[int]) -> None:
        """Forget the profiles kept for ``closed`` of stories a poll adds members to or updates."""
        with self._lock:
            for story_id in story_ids:
                self._settled.pop(story_id, None)

    def knows(self, item_id: int, story_id: int, updates: int) -> bool:
        with self._lock:
            hit = self._found.get(item_id)
        return hit is not None and hit[0] == story_id and hit[1] == updates

    def kept(self, story_id: int, members: list[tuple[int, int]], ends: datetime | None) -> stories.StoryProfile | None:
        """The profile built from the same first stored members (item id, update count), if
        kept: nothing of them is fetched or decoded again (what ``get`` trusts a hit on). Told
        when the story's latest member was published where it may be none of those (``ends``:
        it moves while they stay; None: one of them), and kept so told, with what it computed."""
        with self._lock:
            found = self._profiles.get(story_id)
            if found is None or found[0] != tuple(members):
                return None
            profile = found[1].ending(ends)
            if profile is not found[1]:
                self._profiles[story_id] = (found[0], profile)
            self._profiles.move_to_end(story_id)
            self._settle(story_id, profile.first_at)
            return profile

    def profile(
        self,
        story_id: int,
        members: list[tuple[int, int]],
        fetched: Fetched,
        tx: IngestTransaction,
        ends: datetime | None,
    ) -> stories.StoryProfile | None:
        """The story as ``stories.decide`` judges it, from its first stored members (item id,
        update count) and when its latest was published (``ends``, as ``kept`` takes it), kept
        by those (``kept``): its centroid and name shares are then computed once rather than at
        every poll the story is a candidate in. One profile is kept per story: one that grew
        since is judged on it with the new members added."""
        usable = tuple(m for m in (self.get(item_id, story_id, n, fetched, tx) for item_id, n in members) if m)
        if not usable:
            return None
        with self._lock:
            kept = self._profiles.get(story_id)
        last = kept[1] if kept is not None else None
        if last is not None and len(last.members) < len(usable) and all(map(operator.is_, last.members, usable)):
            found = last.extended(usable[len(last.members) :]).ending(ends)  # the story grew: add what is new
        else:
            found = stories.StoryProfile(story_id, usable, usable[0].published_at, ends)
        with self._lock:
            self._profiles[story_id] = (tuple(members), found)
            self._profiles.move_to_end(story_id)
            self._settle(story_id, found.first_at)
            while len(self._profiles) > KEPT_PROFILES:
                self._profiles.popitem(last=False)
        return found

    def _settle(self, story_id: int, first_at: datetime) -> None:
        """Keep what judging the story needs once it is closed (``closed``); under the lock."""
        self._settled[story_id] = first_at
        self._settled.move_to_end(story_id)
        while len(self._settled) > SETTLED_STORIES:
            self._settled.popitem(last=False)

    def get(
        self, item_id: int, story_id: int, updates: int, fetched: Fetched, tx: IngestTransaction
    ) -> stories.PackedMember | None:
        # A hit must also match the story and the update count: an updated member carries new
        # features, and an item id freed by a rolled-back batch can be given to another item
        # (which then sits in another story, or was updated a different number of times).
        with self._lock:
            hit = self._found.get(item_id)
            if hit is not None and hit[0] == story_id and hit[1] == updates:
                self._found.move_to_end(item_id)
                return hit[2]
        stored = fetched.get(item_id)
        if stored is None:  # decoded when the poll began, dropped by another thread since
            stored = tx.member_features([item_id]).get(item_id)
        decoded = _member(item_id, *stored) if stored is not None else None
        with self._lock:
            self._found[item_id] = (story_id, updates, decoded)
            while len(self._found) > DECODED_MEMBERS:
                self._found.popitem(last=False)
        return decoded


def _hour(moment: datetime) -> int:
    """Which ``STORIES_KEPT_STREAM`` of the stream ``moment`` falls in (a kept count's place)."""
    return int(moment.timestamp() // STORIES_KEPT_STREAM.total_seconds())


def _spans(items: list[tuple[Item, stories.Features]], now: datetime) -> list[list[tuple[Item, stories.Features]]]:
    """The poll's items (in publication order) cut into stretches of at most ``STATS_SPAN``, each
    weighed with its own statistics; one ``storybatch.Batch`` judges them all, so a story an item
    of one stretch starts is still a candidate for the next."""
    spans: list[list[tuple[Item, stories.Features]]] = []
    start: datetime | None = None
    for pair in items:
        at = pair[0].published_at or now
        if start is None or at - start > STATS_SPAN:
            spans.append([])
            start = at
        spans[-1].append(pair)
    return spans


def _reached_between(
    stored: set[int],
    found_of: Mapping[str, Mapping[int, float]],
    items: list[tuple[Item, stories.Features]],
    now: datetime,
) -> dict[int, tuple[datetime, datetime]]:
    """When the earliest and the latest item that may be judged against each ``stored`` story
    were published: any item whose keys reach the story may be (``storybatch.Batch`` ranks what
    it reaches among the stories read), not only those that rank it first. A poll's items can
    span days (a feed's first fetch): a story closed to all of them, or beginning after all of
    them, need not be read."""
    between: dict[int, tuple[datetime, datetime]] = {}
    for item, _ in items:
        at = item.published_at or now
        for story in found_of[item.key].keys() & stored:
            earliest, latest = between.get(story, (at, at))
            between[story] = (min(earliest, at), max(latest, at))
    return between


def _member(
    item_id: int, sort_at: datetime, features: str | None, signature: str | None
) -> stories.PackedMember | None:
    if features is None:
        return None  # stored before story features existed: nothing to compare with
    try:
        loaded = cluster.Signature.loads(signature) if signature else None
        decoded = stories.Features.loads(features, loaded)
        return stories.PackedMember(item_id, sort_at, decoded, features, signature)
    except ValueError:
        return None  # written by another version: it simply cannot match


def _recent(candidate: MatchCandidate) -> cluster.RecentItem | None:
    try:
        signature = cluster.Signature.loads(candidate.signature)
    except ValueError:
        return None  # written by another signature version: it simply cannot match
    return cluster.RecentItem(candidate.story_id, candidate.item_id, candidate.sort_at, signature)
