"""Story matching through storage keeps what it read between polls (``storymatch``): what it kept
must never make a verdict or its explanation differ from what reading the stories afresh gives.

Real SQLite file and real PostgreSQL, the real model; the texts are ``test_stories_v2``'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest

from aggregator import cluster, metrics, stories, storymatch
from aggregator.config import parse_config
from aggregator.records import IngestPlan, Item, NewItem
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import IngestTransaction, Store
from aggregator.storymatch import StoryMatcher, _DecodedMembers
from tests.test_stories_v2 import (
    BLAZE_ALONE,
    FIRE_ALONE,
    FOLLOW_UP,
    NOON,
    ORIGINAL,
    REWRITE,
    STORE_CONFIG,
    THIRD,
    UNRELATED,
)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated database (SQLite file or PostgreSQL) with the test config's sources."""
    engine = make_engine(database_url)
    ensure_schema(engine)
    found = Store(engine)
    found.sync_sources(parse_config(STORE_CONFIG).source_specs(), NOON)
    yield found
    engine.dispose()


def plan_of(entries: list[tuple[str, tuple[str, str], datetime]]) -> IngestPlan:
    items = [
        Item(key, key, None, None, title, "", "", text, None, (), at, None, key) for key, (title, text), at in entries
    ]
    return IngestPlan(tuple(NewItem(item, None) for item in items), (), 0)


def test_a_closed_story_is_explained_from_its_members_as_stored_now(store: Store) -> None:
    """A story that took a member after the matcher last judged it is, once closed, judged on
    its members as they are stored now, as by a matcher that kept nothing; and the beginning then
    kept for it gives the same explanation at the next poll. The member here is dated before the
    story's first, so the story now begins earlier than when it was judged."""
    matcher = StoryMatcher()

    def ingest(source_id: int, plan: IngestPlan) -> dict[str, NewItem]:
        with store.ingest() as tx:
            matched = matcher.match(tx, plan, NOON, "semantic", {}, {})
            tx.insert_items(source_id, matched.inserts, NOON, "news.example.org")
        return {new.item.key: new for new in matched.inserts}

    ingest(1, plan_of([("w1", ORIGINAL, NOON), ("w2", UNRELATED, NOON)]))
    # The rewrite is judged against the one-member story, then joins it: the story changed.
    joined = ingest(2, plan_of([("h1", REWRITE, NOON - timedelta(hours=3))]))["h1"].story_id
    assert joined is not None

    plan = plan_of([("f1", FOLLOW_UP, NOON + timedelta(hours=26))])
    for _ in range(2):  # first the story is read afresh, then the profile kept for it answers
        with store.ingest() as tx:  # (nothing inserted: both polls meet the same stored stories)
            kept = matcher.match(tx, plan, NOON, "semantic", {}, {}).inserts[0]
            fresh = StoryMatcher().match(tx, plan, NOON, "semantic", {}, {}).inserts[0]
        assert kept.story_id is None  # a day later: a story of its own
        assert f"story {joined}: +29.0 h from the story's first item" in (kept.match_reason or "")  # a near miss
        assert kept.match_reason == fresh.match_reason


@pytest.mark.parametrize("texts", [[ORIGINAL], [ORIGINAL, REWRITE, THIRD, FOLLOW_UP, UNRELATED]])
def test_a_closed_story_is_kept_as_its_beginning_and_explained_alike_kept_or_read_afresh(
    texts: list[tuple[str, str]],
) -> None:
    """What the matcher keeps of a story once it is closed is its beginning, not its members;
    a story refused on time alone is explained the same whether it was kept or read afresh."""
    members = _DecodedMembers()
    stored = {}
    for number, text in enumerate(texts, 1):
        signed = cluster.Signed.of(*text)
        stored[number] = (NOON + timedelta(hours=number), stories.features_of(*text)[0].dumps(), signed.stored)
    profile = members.profile(7, [(n, 0) for n in stored], stored, None, max(at for at, _, _ in stored.values()))  # type: ignore[arg-type]
    assert profile is not None and len(profile.members) == len(texts)
    closed = members.closed({7: NOON + timedelta(days=1)}, NOON)[7]
    assert closed.first_at == profile.first_at == NOON + timedelta(hours=1) and not closed.members
    assert members.closed({7: NOON + timedelta(hours=1)}, NOON) == {}  # not closed to an item that early
    assert members.closed({7: NOON + timedelta(days=1)}, NOON + timedelta(hours=2)) == {}  # nor read from later on
    late, item = NOON + timedelta(days=2), stories.features_of(*FOLLOW_UP)[0]
    stats = stories.TermStats(10)
    kept, fresh = (stories.judge(item, late, p, stats) for p in (closed, profile))
    assert not kept.joins and kept.cosine is None and kept == fresh
    assert kept.reason() == fresh.reason() == f"+47.0 h from the story's first item: {kept.why_not}"
    members.touched({7})
    assert members.closed({7: NOON + timedelta(days=1)}, NOON) == {}  # it took a member: read again


def test_a_story_closed_to_a_polls_late_item_stays_open_to_its_early_one(store: Store) -> None:
    """A feed's first fetch spans days: a story kept as closed for a late item is still read in
    full for an earlier item of the same poll, which joins it."""
    matcher = StoryMatcher()
    with store.ingest() as tx:
        first = matcher.match(tx, plan_of([("w1", ORIGINAL, NOON), ("w2", UNRELATED, NOON)]), NOON, "semantic", {}, {})
        tx.insert_items(1, first.inserts, NOON, "news.example.org")
        story = tx.stored_items(1, ["w1"])["w1"].story_id
    late = ("f1", FOLLOW_UP, NOON + timedelta(hours=26))
    with store.ingest() as tx:  # the story is judged, and kept, as closed to the follow-up
        assert f"story {story}: +26.0 h from the story's first item" in (
            matcher.match(tx, plan_of([late]), NOON, "semantic", {}, {}).inserts[0].match_reason or ""
        )
    plan = plan_of([("h1", REWRITE, NOON + timedelta(hours=2)), late])
    with store.ingest() as tx:
        kept = {new.item.key: new for new in matcher.match(tx, plan, NOON, "semantic", {}, {}).inserts}
        fresh = {new.item.key: new for new in StoryMatcher().match(tx, plan, NOON, "semantic", {}, {}).inserts}
    assert kept["h1"].story_id == story  # the rewrite two hours after the original joins it
    assert kept["f1"].story_id is None
    assert [n.match_reason for n in kept.values()] == [n.match_reason for n in fresh.values()]


def members_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the stored members whose features matching reads from now on, as it reads them."""
    read_back: list[int] = []
    real_member_features = IngestTransaction.member_features

    def member_features(self: IngestTransaction, item_ids: Sequence[int]) -> Any:
        read_back.extend(item_ids)
        return real_member_features(self, item_ids)

    monkeypatch.setattr(IngestTransaction, "member_features", member_features)
    return read_back


def fresh_fetch(store: Store, *entries: tuple[str, tuple[str, str], datetime]) -> dict[str, NewItem]:
    """One poll of ``entries`` decided by a matcher that kept nothing: whatever it judges on, it
    reads; nothing is stored."""
    with store.ingest() as tx:
        plan = StoryMatcher().match(tx, plan_of(list(entries)), NOON, "semantic", {}, {})
    return {new.item.key: new for new in plan.inserts}


def test_a_story_beginning_long_after_a_polls_items_is_not_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A feed's first fetch brings days of backlog, and other outlets' later stories are already
    stored: a story beginning more than ``STORY_SPAN`` after every item of the poll that reaches
    it is judged on its first member's time alone, its members' features not read; while one
    item of the poll comes within that span of it, it is read and judged in full."""
    with store.ingest() as tx:
        later = StoryMatcher().match(
            tx, plan_of([("f1", FOLLOW_UP, NOON + timedelta(hours=20))]), NOON, "semantic", {}, {}
        )
        tx.insert_items(1, later.inserts, NOON, "news.example.org")
        stored = tx.stored_items(1, ["f1"])["f1"]
    read_back = members_read(monkeypatch)

    backlog = [("h1", REWRITE, NOON), ("u1", UNRELATED, NOON + timedelta(hours=10))]  # the poll's days
    early = fresh_fetch(store, *backlog)["h1"]
    assert early.story_id is None and read_back == []
    refused = f"story {stored.story_id}: -20.0 h from the story's first item: more than 12 h apart"
    assert refused in (early.match_reason or "")  # found, and refused on the time alone
    both = fresh_fetch(store, *backlog, ("h2", REWRITE, NOON + timedelta(hours=9)))  # 11 h before the story
    assert read_back == [stored.id]
    assert both["h1"].story_id is None and refused in (both["h1"].match_reason or "")  # read or not, alike


def test_a_story_beginning_long_before_a_polls_items_is_not_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rare names reach stories of the last days, most of them begun long before the items
    judged: a story beginning more than ``STORY_SPAN`` before every item of the poll that
    reaches it is judged on its beginning alone, its members' features not read, by a matcher
    that kept nothing of it; while one item of the poll comes within that span of it, it is
    read, judged in full and joined."""
    with store.ingest() as tx:
        first = StoryMatcher().match(tx, plan_of([("w1", ORIGINAL, NOON)]), NOON, "semantic", {}, {})
        tx.insert_items(1, first.inserts, NOON, "news.example.org")
        stored = tx.stored_items(1, ["w1"])["w1"]
    read_back = members_read(monkeypatch)

    late = ("f1", FOLLOW_UP, NOON + timedelta(hours=26))
    alone = fresh_fetch(store, late)["f1"]
    assert alone.story_id is None and read_back == []
    refused = f"story {stored.story_id}: +26.0 h from the story's first item: more than 12 h apart"
    assert refused in (alone.match_reason or "")  # found, and refused on the time alone
    both = fresh_fetch(store, ("h1", REWRITE, NOON + timedelta(hours=2)), late)
    assert read_back == [stored.id]
    assert both["h1"].story_id == stored.story_id and both["f1"].story_id is None


def test_a_story_read_out_of_order_never_spans_more_than_twelve_hours(store: Store) -> None:
    """A first ingest reads feed after feed: here a wire's eight copies at noon, another
    outlet's report 11 h later, then a third's 11 h before noon. The third is within 12 h of the
    story's first member but 22 h before its latest, which storage does not judge it on (only
    the first ``stories.REPRESENTATIVES`` members are read): it is refused and starts a story of
    its own, as it would have, read first, the report 22 h after it. Kept or read afresh, the
    verdict and its explanation are the same."""
    matcher = StoryMatcher()

    def ingest(source_id: int, entries: list[tuple[str, tuple[str, str], datetime]]) -> dict[str, int]:
        """Each entry's story, once stored."""
        with store.ingest() as tx:
            matched = matcher.match(tx, plan_of(entries), NOON, "semantic", {}, {})
            inserted = tx.insert_items(source_id, matched.inserts, NOON, "news.example.org")
        matcher.stored(matched.inserts, inserted)
        return {key: where.story_id for key, where in inserted.items()}

    copies = ingest(1, [(f"w{n}", ORIGINAL, NOON + timedelta(minutes=n)) for n in range(stories.REPRESENTATIVES)])
    story = copies["w0"]
    assert set(copies.values()) == {story}
    assert ingest(2, [("t1", THIRD, NOON + timedelta(hours=11))])["t1"] == story  # the latest member
    early = [("h1", REWRITE, NOON - timedelta(hours=11))]
    with store.ingest() as tx:
        kept = matcher.match(tx, plan_of(early), NOON, "semantic", {}, {}).inserts[0]
        fresh = StoryMatcher().match(tx, plan_of(early), NOON, "semantic", {}, {}).inserts[0]
    assert kept.story_id is None and fresh.story_id is None
    refused = f"story {story}: -11.0 h from the story's first item: its latest item is 22.0 h later"
    assert refused in (kept.match_reason or "") and kept.match_reason == fresh.match_reason
    # Within 12 h of both ends, the same report joins.
    assert fresh_fetch(store, ("h2", REWRITE, NOON - timedelta(hours=1)))["h2"].story_id == story


def test_a_committed_item_is_judged_on_as_decided_and_a_rolled_back_one_is_forgotten(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its poll committed (``stored``), a new item is a member the next poll judges its
    story on without reading its features back; an item whose transaction rolled back is never
    taken for the item that is given its id next, and verdicts match a matcher that kept nothing."""
    matcher = StoryMatcher()
    read_back = members_read(monkeypatch)
    # The original is decided on and inserted, then its transaction fails: nothing of it is kept.
    with pytest.raises(ZeroDivisionError), store.ingest() as tx:
        lost = matcher.match(tx, plan_of([("w1", ORIGINAL, NOON)]), NOON, "semantic", {}, {})
        tx.insert_items(1, lost.inserts, NOON, "news.example.org")
        raise ZeroDivisionError("the poll's commit fails")
    # Another worker commits an item naming the same people in its place (SQLite gives it the
    # rolled-back item's id, and its story the rolled-back story's).
    with store.ingest() as tx:
        other = StoryMatcher().match(tx, plan_of([("u1", FOLLOW_UP, NOON)]), NOON, "semantic", {}, {})
        tx.insert_items(1, other.inserts, NOON, "news.example.org")
    again = plan_of([("w1", ORIGINAL, NOON)])
    with store.ingest() as tx:
        decided = matcher.match(tx, again, NOON, "semantic", {}, {})
        afresh = StoryMatcher().match(tx, again, NOON, "semantic", {}, {})
        assert decided.inserts[0].match_reason == afresh.inserts[0].match_reason
        original = tx.insert_items(1, decided.inserts, NOON, "news.example.org")
    matcher.stored(decided.inserts, original)
    read_back.clear()

    plan = plan_of([("h1", REWRITE, NOON + timedelta(hours=2))])
    with store.ingest() as tx:
        joined = matcher.match(tx, plan, NOON, "semantic", {}, {}).inserts[0]
        assert read_back == []  # the original was judged on as decided on, not read back
        fresh = StoryMatcher().match(tx, plan, NOON, "semantic", {}, {}).inserts[0]
    assert original["w1"].item_id in read_back  # a matcher that kept nothing reads it
    assert joined.story_id == original["w1"].story_id  # the rewrite joins the original's story
    assert joined.match_reason == fresh.match_reason


def test_an_outlets_own_story_takes_its_copy_but_not_its_other_report(store: Store) -> None:
    """Through storage: a story only the polled source's items are in is joined by that source's
    copy of them, not by its other report sharing their names; another outlet's report joins."""
    matcher = StoryMatcher()
    with store.ingest() as tx:
        (first,) = matcher.match(tx, plan_of([("w1", ORIGINAL, NOON)]), NOON, "semantic", {}, {}, 1).inserts
        tx.insert_items(1, [first], NOON, "news.example.org")
        story = tx.stored_items(1, ["w1"])["w1"].story_id

    def judged(source_id: int, key: str, pair: tuple[str, str]) -> NewItem:
        with store.ingest() as tx:  # decided, not stored: each meets the one-member story alone
            plan = plan_of([(key, pair, NOON + timedelta(hours=1))])
            (new,) = matcher.match(tx, plan, NOON, "semantic", {}, {}, source_id).inserts
        return new

    own = judged(1, "w2", REWRITE)
    assert own.story_id is None
    assert "only its own outlet's items so far" in (own.match_reason or "")
    copy = judged(1, "w3", (ORIGINAL[0] + ", officials say", ORIGINAL[1]))
    assert copy.story_id == story and "copies item" in (copy.match_reason or "")
    other = judged(2, "h1", REWRITE)
    assert other.story_id == story  # another outlet's report: judged on its names


def test_a_headline_alone_reaches_through_storage_the_story_of_the_one_name_it_shares(store: Store) -> None:
    """Title-only feeds, through storage: another outlet's headline of the same fire shares one
    rare name with the stored story, which only that story carries. The stored counts include
    the story itself; the name must still reach it with a whole name's weight, and join."""
    matcher = StoryMatcher()
    with store.ingest() as tx:
        (first,) = matcher.match(tx, plan_of([("w1", FIRE_ALONE, NOON)]), NOON, "semantic", {}, {}, 1).inserts
        tx.insert_items(1, [first], NOON, "news.example.org")
        story = tx.stored_items(1, ["w1"])["w1"].story_id
    with store.ingest() as tx:
        plan = plan_of([("h1", BLAZE_ALONE, NOON + timedelta(hours=1))])
        (new,) = matcher.match(tx, plan, NOON, "semantic", {}, {}, 2).inserts
    assert new.story_id == story
    assert f"joined story {story}: cosine" in (new.match_reason or "")


def test_two_reports_decided_at_once_end_in_one_story(store: Store) -> None:
    """Two outlets' reports of one event committed side by side (two workers, or two of a
    worker's commit slots): the second to decide waits until the first committed, sees its
    item and joins its story, rather than starting one of its own that nothing would ever
    bring together with it. SQLite and PostgreSQL both, each through its own lock."""
    first_decided, second_started = threading.Event(), threading.Event()
    stored: dict[str, int | None] = {}

    def first() -> None:
        with store.ingest() as tx:
            (new,) = StoryMatcher().match(tx, plan_of([("w1", ORIGINAL, NOON)]), NOON, "semantic", {}, {}, 1).inserts
            stored["w1"] = tx.insert_items(1, [new], NOON, "news.example.org")["w1"].story_id
            first_decided.set()
            assert second_started.wait(10)
            time.sleep(0.5)  # the second is deciding now, or waiting to: still uncommitted here

    def second() -> None:
        assert first_decided.wait(10)
        with store.ingest() as tx:
            second_started.set()
            plan = plan_of([("h1", REWRITE, NOON + timedelta(hours=1))])
            (new,) = StoryMatcher().match(tx, plan, NOON, "semantic", {}, {}, 2).inserts
            stored["h1"] = new.story_id
            tx.insert_items(2, [new], NOON, "news.example.org")

    turns, waited = _turn_waits()
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(first), pool.submit(second)]:
            done.result(timeout=30)
    assert stored["w1"] is not None
    assert stored["h1"] == stored["w1"]
    now_turns, now_waited = _turn_waits()
    assert now_turns == turns + 2  # each took its turn, and the metric tells how long the second waited
    assert now_waited - waited >= 0.25


def _turn_waits() -> tuple[float, float]:
    """How many story-deciding turns this process took, and how long it waited for them in all."""
    samples = {s.name: s.value for m in metrics.STORY_TURN_SECONDS.collect() for s in m.samples}
    return samples["aggregator_story_turn_wait_seconds_count"], samples["aggregator_story_turn_wait_seconds_sum"]


def test_what_the_matcher_keeps_between_polls_is_counted_against_its_bounds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kept`` says, per cache, how many entries it holds and the most it keeps (the soak prints
    them beside the memory, to tell caches filling from a leak): a committed new item is a
    decoded member, a story judged is a profile kept, and no cache passes its bound."""
    monkeypatch.setattr(storymatch, "DECODED_MEMBERS", 2)
    matcher = StoryMatcher()
    assert {count for count, _ in matcher.kept().values()} == {0}
    with store.ingest() as tx:
        plan = plan_of([("w1", ORIGINAL, NOON), ("w2", UNRELATED, NOON), ("w3", THIRD, NOON)])
        decided = matcher.match(tx, plan, NOON, "semantic", {}, {})
        inserted = tx.insert_items(1, decided.inserts, NOON, "news.example.org")
    matcher.stored(decided.inserts, inserted)
    assert matcher.kept()["decoded members"] == (2, 2)  # three committed, two kept
    with store.ingest() as tx:
        joined = matcher.match(tx, plan_of([("h1", REWRITE, NOON + timedelta(hours=2))]), NOON, "semantic", {}, {})
    assert joined.inserts[0].story_id == inserted["w1"].story_id
    kept = matcher.kept()
    assert kept["story profiles"][0] >= 1  # the story it was judged against (no longer settled: it took a member)
    assert all(count <= most for count, most in kept.values()), kept
