"""Story engine v2: independent coverage of one event joins, look-alikes and follow-ups stay apart,
a story never grows through one member, and the model loads without a network.

The decision (``stories``) is exercised with real text through the real model, names and lead
signatures; the chaining case builds its features by hand so the arithmetic is visible.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from aggregator import cluster, names, semantic, stories, storybatch, storymatch
from aggregator.records import IngestPlan, Item, NewItem
from aggregator.store.items import IngestTransaction
from aggregator.store.matchkeys import TermCarriers
from aggregator.stories import Features, Member, StoryProfile, TermStats, decide, features_of
from aggregator.storystream import Stream
from tests import templated
from tests.conftest import KEYS_OUT_OF_STEP

ROOT = Path(__file__).resolve().parent.parent
NOON = datetime(2026, 3, 3, 12, tzinfo=UTC)

ORIGINAL = (
    "Aldoria and Belmaris agree grain corridor after talks in Port Aven",
    "PORT AVEN — Aldorian President Karim Salezovic and Belmaris Prime Minister Lena Dorardi agreed on Tuesday "
    "to open a grain corridor through the Kestrel Strait, with shipments of 2.4 million tonnes planned before "
    "winter, the two governments said after talks in Port Aven.",
)
REWRITE = (  # another outlet's own report: other words, the same people, place and figures
    "Salezovic, Dorardi strike Kestrel Strait grain deal",
    "The leaders of Aldoria and Belmaris, Karim Salezovic and Lena Dorardi, have struck a deal to let grain "
    "ships pass the Kestrel Strait. Officials in Port Aven said 2.4 million tonnes could move before the cold "
    "season begins.",
)
FOLLOW_UP = (  # the next development of the same story, a day later
    "First grain ships pass Kestrel Strait under Aldoria-Belmaris deal",
    "The first three ships carrying grain passed the Kestrel Strait on Wednesday under the corridor agreed by "
    "Aldorian President Karim Salezovic and Belmaris Prime Minister Lena Dorardi in Port Aven.",
)
THIRD = (  # a third outlet's report of ORIGINAL's event, in its own words
    "Grain to flow through Kestrel Strait as Aldoria and Belmaris seal pact",
    "Karim Salezovic of Aldoria and Lena Dorardi of Belmaris sealed a pact in Port Aven on Tuesday to ship 2.4 "
    "million tonnes of grain through the Kestrel Strait before winter.",
)
UNRELATED = (
    "Harrow Glen council approves new tram line",
    "Councillors in Harrow Glen voted on Tuesday to build a 14-kilometre tram line linking the harbour to the "
    "university, at a cost of 310 million dollars, the council said.",
)

FIRE_ALONE = ("Fire tears through Barangaroo tower under construction", "")
BLAZE_ALONE = ("Huge blaze at Barangaroo construction site", "")  # another outlet's, the same fire


def feats(pair: tuple[str, str]) -> Features:
    return features_of(*pair)[0]


def test_an_independent_rewrite_with_the_same_names_place_and_figures_joins() -> None:
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(ORIGINAL))
    assert stream.add(2, NOON + timedelta(hours=1), feats(UNRELATED))[0] != first
    story, decision = stream.add(3, NOON + timedelta(hours=2), feats(REWRITE))
    assert story == first
    assert decision.chosen is not None and decision.chosen.copy_of is None  # joined on names, not copied text
    reason = decision.explain(names.extract(*REWRITE))
    assert reason.startswith(f"joined story {first}: cosine ")
    assert "salezovic" in reason and "dorardi" in reason


def test_a_rewrite_that_credits_many_people_still_finds_its_story() -> None:
    """Lookup keys go to the rarest names some story carries: a lead that also credits its
    reporters and photographers (names no other item prints) would otherwise spend every key
    on them and reach nothing."""
    credits = (
        "Reporting by Jack Gruber, Kathy Arberg, Omar Tessaly and Vera Lindqvar in Port Aven; photos by "
        "Ines Moravec, Pavel Ostrander, Dana Whitcombe and Femi Adeyoru; editing by Ruth Calloway, "
        "Tomas Brekke, Selma Orhanovic and Hugo Delacroix-Venn."
    )
    credited = (REWRITE[0], f"{REWRITE[1]} {credits}")
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(ORIGINAL))
    features = feats(credited)
    stats = stream.stats()
    unknown = [t for t in features.terms if stats.is_key(t) and not stats.counts.get(t, 0)]
    assert len(unknown) > stories.MAX_KEYS  # more names no story carries than there are keys
    assert {names.term_key("salezovic"), names.term_key("dorardi")} <= set(stats.keys(features.terms))
    story, _ = stream.add(2, NOON + timedelta(hours=2), features)
    assert story == first


def test_a_wordpress_footer_is_not_the_items_own_words_and_its_report_still_joins() -> None:
    """WordPress ends every item of a feed with "The post <headline> appeared first on <site>.":
    the headline again in capitals and the site's name, which are not what the item reports.
    Read as the item's words they made a short excerpt look like another topic (cosine 0.43)."""
    excerpt = REWRITE[1].split(". ")[0] + "."  # a WordPress excerpt: the lead's first sentence
    site = "Marrowby Valley Evening Courier Online"
    posted = (REWRITE[0], f"{excerpt} The post {REWRITE[0]} appeared first on {site}.")
    words = features_of(*posted)[1].words
    assert not {"marrowby", "valley", "evening", "courier", "online"} & set(words)
    assert words == features_of(REWRITE[0], excerpt)[1].words
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(ORIGINAL))
    assert stream.add(2, NOON + timedelta(hours=2), feats(posted))[0] == first


def test_a_follow_up_a_day_later_starts_its_own_story() -> None:
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(ORIGINAL))
    story, decision = stream.add(2, NOON + timedelta(hours=26), feats(FOLLOW_UP))
    assert story != first
    assert decision.chosen is None
    assert [miss.story_id for miss in decision.near_misses] == [first]  # found, judged, refused
    assert "a development is a story of its own" in decision.explain()


def test_near_misses_of_another_topic_come_after_those_close_in_meaning() -> None:
    """An outlet names itself in every item ("The Next Web"), so its other stories share names
    with anything it publishes and outscore, at any cosine, the story of the same event that
    the names did not carry. The explanation shows that story first: it is the one a reader
    asks about."""
    item, at = feats(THIRD), NOON + timedelta(hours=2)
    names_only = replace(feats(REWRITE), vector=_toward(item.vector, 0.3))
    close = replace(feats(UNRELATED), vector=_toward(item.vector, 0.7))
    stories_judged = [
        StoryProfile(7, (Member(1, NOON, names_only),), NOON),
        StoryProfile(8, (Member(2, NOON, close),), NOON),
    ]
    decision = stories.decide(item, at, stories_judged, TermStats(10))
    assert decision.story_id is None
    first, second = decision.near_misses
    assert first.story_id == 8 and "too few rare names" in first.why_not
    assert second.story_id == 7 and "another topic" in second.why_not and second.score > first.score
    assert decision.explain().index("story 8:") < decision.explain().index("story 7:")


def test_the_story_a_development_follows_is_shown_among_its_near_misses_however_many_were_weighed() -> None:
    """A story refused on time alone weighs nothing else, so it cannot rank by closeness among
    the stories weighed; the explanation still shows it (the nearest in time of such stories)
    after the closest ones weighed: it is the one that says why a development stands alone."""
    story = StoryProfile(1, (Member(1, NOON, feats(ORIGINAL)),), NOON)
    later = NOON + timedelta(hours=26)
    others = [StoryProfile(n, (Member(n, later, feats(UNRELATED)),), later) for n in range(2, 6)]
    older = StoryProfile(6, (Member(6, NOON - timedelta(hours=20), feats(ORIGINAL)),), NOON - timedelta(hours=20))
    decision = stories.decide(feats(FOLLOW_UP), later + timedelta(hours=1), [older, story, *others], TermStats(10))
    assert decision.chosen is None
    assert [j.story_id for j in decision.near_misses] == [2, 3, 4, 5, 1, 6]  # weighed, then nearest in time
    text = decision.explain()
    assert all(f"story {n}: cosine" in text for n in (2, 3, 4)) and "story 5" not in text
    assert "story 1: +27.0 h from the story's first item" in text and "story 6: +47.0 h" in text


@pytest.mark.parametrize(
    ("begins", "beyond"),
    [(-13, True), (-12, False), (0, False), (+14, False), (+15, True)],  # hours from the earliest item
)
def test_a_story_is_beyond_the_span_of_a_polls_items_only_past_twelve_hours_from_all_of_them(
    begins: int, beyond: bool
) -> None:
    """Items published over two hours: a story that began more than 12 h before the earliest or
    after the latest can take none of them (``STORY_SPAN`` itself still counts as within); and
    ``judge`` refuses it on the time alone for both the earliest and the latest item exactly then."""
    earliest, latest, first_at = NOON, NOON + timedelta(hours=2), NOON + timedelta(hours=begins)
    assert stories.beyond_span(first_at, earliest, latest) is beyond
    story = StoryProfile(7, (Member(1, first_at, feats(ORIGINAL)),), first_at)
    judged = [stories.judge(feats(REWRITE), at, story, TermStats(10)) for at in (earliest, latest)]
    assert all(j.cosine is None for j in judged) is beyond


def test_a_story_spans_twelve_hours_from_its_latest_member_as_from_its_first() -> None:
    """A first ingest reads feed after feed, so a story meets reports older than its first
    member. One 11 h before a story whose latest member came 11 h after its first would make it
    span 22 h, and the next one 11 h earlier 33 h: it is refused, as a report 22 h after the
    first is. Read or not (``StoryProfile.unread``), with its latest member among those judged
    or known only from storage (``last_at``), the verdict and its explanation are the same."""
    first, latest = [Member(1, NOON, feats(ORIGINAL))], Member(2, NOON + timedelta(hours=11), feats(THIRD))
    stats = TermStats(10)
    whole = StoryProfile(7, (*first, latest), NOON)
    known = StoryProfile(7, tuple(first), NOON, NOON + timedelta(hours=11))  # storage read only its first
    assert whole.ends_at == known.ends_at == NOON + timedelta(hours=11)
    early = NOON - timedelta(hours=11)
    assert stories.beyond_span(NOON, early, early, NOON + timedelta(hours=11))
    assert not stories.beyond_span(NOON, early, early)  # measured from its first member alone, within
    assert not stories.beyond_span(NOON, early, NOON, NOON + timedelta(hours=11))  # one item of the poll may join
    judged = [
        stories.judge(feats(REWRITE), early, p, stats)
        for p in (whole, known, StoryProfile.unread(7, NOON, NOON + timedelta(hours=11)))
    ]
    assert not any(j.joins for j in judged) and all(j.cosine is None for j in judged)
    assert {j.reason() for j in judged} == {
        "-11.0 h from the story's first item: its latest item is 22.0 h later: a story's reports come within 12 h "
        "of each other"
    }
    assert stories.judge(feats(REWRITE), early, StoryProfile(7, tuple(first), NOON), stats).joins  # without the latest
    assert stories.judge(feats(REWRITE), NOON - timedelta(hours=1), whole, stats).joins  # 12 h before the latest


def test_a_kept_profile_told_its_latest_member_keeps_what_it_computed() -> None:
    """``StoryProfile.ending``: a profile kept between polls is told when the story's latest
    member was published as storage reads it at each poll, without its centroid and shares
    being computed again; told the same, it is the same profile."""
    profile = StoryProfile(7, (Member(1, NOON, feats(ORIGINAL)), Member(2, NOON, feats(REWRITE))), NOON)
    centroid, support = profile.centroid, profile.support
    later = profile.ending(NOON + timedelta(hours=5))
    assert later.ends_at == NOON + timedelta(hours=5) and profile.ends_at == NOON
    assert later.centroid is centroid and later.support is support
    assert later.ending(NOON + timedelta(hours=5)) is later


@pytest.mark.parametrize("hours", [-26, 26])
def test_a_story_a_day_away_is_refused_on_its_beginning_alone(hours: int) -> None:
    """A story read no further than its beginning (``StoryProfile.unread``) is refused on the
    time, as the story read in full is, with the same explanation: a story that began a day
    away weighs nothing else, read or not, so how it was read never shows."""
    at = NOON + timedelta(hours=hours)
    story = StoryProfile(7, (Member(1, at, feats(ORIGINAL)),), at)
    stats = TermStats(10)
    read = stories.judge(feats(REWRITE), NOON, story, stats)
    unread = stories.judge(feats(REWRITE), NOON, StoryProfile.unread(7, at), stats)
    assert not read.joins and not unread.joins
    assert read.cosine is None and unread.cosine is None
    assert read.reason() == unread.reason() == f"{-hours:+.1f} h from the story's first item: " + read.why_not
    assert "a development is a story of its own" in read.why_not
    at_noon = StoryProfile(7, (Member(1, NOON, feats(ORIGINAL)),), NOON)
    assert stories.judge(feats(REWRITE), NOON, at_noon, stats).joins  # the same, at noon


def test_the_stream_in_memory_refuses_an_item_older_than_one_it_holds() -> None:
    # It forgets by arrival: an earlier item after later ones would be judged against a window
    # the database would not give it (a backlog replayed outlet by outlet once looked worse
    # through this helper than through the pipeline).
    stream = Stream()
    stream.add(1, NOON + timedelta(hours=5), feats(ORIGINAL))
    stream.add(2, NOON + timedelta(hours=5), feats(UNRELATED))  # the same moment is in order
    with pytest.raises(ValueError, match="add in time order"):
        stream.add(3, NOON, feats(REWRITE))


def test_look_alikes_from_templates_stay_apart_and_their_copies_join() -> None:
    items = templated.generate(events_per_day=40, days=2, seed=3)
    stream = Stream()
    events_of: dict[int, set[str]] = defaultdict(set)
    stories_of: dict[str, set[int]] = defaultdict(set)
    for number, item in enumerate(items):
        story, _ = stream.add(number, item.published_at, feats((item.title, item.text)))
        events_of[story].add(item.event)
        stories_of[item.event].add(story)
    assert len(items) > 300 and len(stories_of) == 80
    assert [events for events in events_of.values() if len(events) > 1] == []  # no story mixes two events
    split = [event for event, found in stories_of.items() if len(found) > 1]
    assert len(split) <= 2, split  # and copies (new headline, trimmed, edited) find their original


def unit(*components: tuple[int, float]) -> semantic.Vector:
    vector = np.zeros(semantic.DIMENSIONS, dtype=np.float32)
    for index, value in components:
        vector[index] = value
    return vector / np.float32(np.linalg.norm(vector))


def test_a_story_cannot_grow_through_its_newest_member() -> None:
    # Each item shares three names with the one before it and none with the one before that:
    # judged against its predecessor alone, each would join; against the story, it does not.
    a = Features(unit((0, 1), (1, 0.9)), frozenset({101, 102, 103, 104}))
    b = Features(unit((0, 1), (2, 0.9)), frozenset({101, 102, 103, 201, 202, 203}))
    c = Features(unit((0, 1), (3, 0.9)), frozenset({201, 202, 203, 301}))
    stats = TermStats(stories=0)  # a fresh stream: every term is rare, each weighs 1
    story_a = StoryProfile(1, (Member(1, NOON, a),), NOON)
    assert decide(b, NOON, [story_a], stats).story_id == 1

    story_ab = StoryProfile(1, (Member(1, NOON, a), Member(2, NOON, b)), NOON)
    only_b = StoryProfile(2, (Member(2, NOON, b),), NOON)
    assert decide(c, NOON, [only_b], stats).story_id == 2  # the member alone would take it
    decision = decide(c, NOON, [story_ab], stats)
    assert decision.story_id is None  # the story as a whole does not
    (miss,) = decision.near_misses
    assert miss.name_weight == pytest.approx(1.5)  # three names, carried by half the members
    assert "names" in miss.why_not  # too few of them, or too few of the story's


def test_leads_are_compared_only_with_stories_sharing_a_copy_key() -> None:
    original, copy = feats(ORIGINAL), feats((ORIGINAL[0] + " - Post", ORIGINAL[1]))
    story = StoryProfile(1, (Member(7, NOON, original),), NOON)
    stats = TermStats(stories=0)
    copied = decide(copy, NOON + timedelta(hours=1), [story], stats, copied={1})
    assert copied.chosen is not None and copied.chosen.copy_of == 7
    not_compared = decide(copy, NOON + timedelta(hours=1), [story], stats, copied=set())
    assert not_compared.chosen is not None and not_compared.chosen.copy_of is None  # joined on names alone


def test_common_names_are_neither_evidence_nor_keys() -> None:
    stats = TermStats(stories=2000, counts={1: 500, 2: 25, 3: 1})
    assert stats.weight(1) == 0.0 and not stats.is_key(1)  # a quarter of the stories: a topic
    assert 0.0 < stats.weight(2) < stats.weight(3) < stats.weight(4) == 1.0
    # rarest first of those a story carries, then those none does; 25 stories is past KEY_MAX_STORIES
    assert stats.keys([1, 2, 3, 4]) == [3, 4]
    assert stats.weight(3, own=True) == 1.0  # the judged story's own mention is not another story's


def test_what_an_item_reaches_is_weighed_by_its_keys_and_copy_keys() -> None:
    # The one ranking storage and the in-memory stream share: each rare key adds its weight to each
    # story carrying it (as ``judge`` weighs it there: that story is not one of the others), a
    # lead-copy key a copy's weight once per story, whatever reached it else.
    item = feats(ORIGINAL)
    assert item.signature is not None
    copy_key = cluster.band_keys(item.signature)[0]
    stats = TermStats(stories=2000, counts={1: 2, 2: 3})
    found = stories.reached(item, [1, 2], stats, {1: {10, 11}, 2: {11}}, {copy_key: {12, 11}})
    assert found == {
        10: stats.weight(1, True),
        11: stats.weight(1, True) + stats.weight(2, True) + stories.COPY_KEY_WEIGHT,
        12: stories.COPY_KEY_WEIGHT,
    }
    assert stats.weight(1) < stats.weight(1, True) < 1
    assert stories.copied(found) == {11, 12}
    assert stories.reached(item, [], stats, {1: {10}}, {}) == {}  # no key of its own: nothing reached


def test_candidates_are_bounded_whatever_the_text() -> None:
    # Every story names the same place and weekday: once enough stories carry them they stop being
    # keys, so each new item is judged against a bounded number of stories however long it runs.
    stream = Stream()
    judged, found = [], set()
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo"]
    for n in range(60):
        x, y, z = (f"{syllables[n % 8]}{syllables[n // 8]}{end}".title() for end in ("rin", "dal", "mont"))
        title = f"{x} and {y} sign {z} pact"
        text = f"Officials in Port Aven said on Tuesday that {x}, {y} and {z} signed it."
        story, decision = stream.add(n, NOON + timedelta(minutes=n), feats((title, text)))
        found.add(story)
        judged.append(len(decision.near_misses) + (decision.chosen is not None))
    assert len(found) == 60  # sixty different events
    assert max(judged) <= stories.MAX_CANDIDATES
    stats = stream.stats()
    assert not any(stats.is_key(names.term_key(word)) for word in ("port", "aven"))
    assert judged[-1] == 0  # nothing but the stock words in common: no key reaches another story


def test_features_survive_storage() -> None:
    original = feats(ORIGINAL)
    stored = original.dumps()
    back = Features.loads(stored, original.signature)
    assert back.terms == original.terms and back.signature == original.signature
    assert float(np.dot(back.vector, original.vector)) > 0.999
    with pytest.raises(ValueError):
        Features.loads("s0:" + stored.partition(":")[2])
    with pytest.raises(ValueError):
        Features.loads(stored[:40])


def test_names_and_figures_are_extracted_without_a_word_list() -> None:
    terms = names.extract(
        "Markets Rally As Central Bank Holds",  # Title Case: only what the lead capitalises counts
        "FRANKFURT (ANA) - The European Central Bank kept rates at 4.00% on Thursday. Analysts at Dresdner "
        "said 3,000 jobs and $2.5 billion were at stake, 4.5 per cent of the U.S. total.",
    ).words
    assert {"frankfurt", "european", "central", "bank", "dresdner"} <= set(terms)
    assert {"4%", "3000", "2500000000", "4.5%", "us"} <= set(terms)
    assert "the" not in terms and "analysts" not in terms and "markets" not in terms
    assert "thursday" not in terms  # when, not who or where: the one word list (names.WEEKDAYS)
    assert "ana" not in terms  # the dateline's agency credit: who filed, not what happened


def test_a_weekday_is_no_name_in_any_form() -> None:
    terms = names.extract("Protests Planned For Monday", "MONDAY: Talks in Geneva on Tuesday's draft. Friday.")
    assert set(terms.words) == {"geneva"}


def test_the_pronoun_i_is_no_name_and_a_name_capitalised_inside_is_one_where_it_opens() -> None:
    # "I" is capitalised by grammar, in every first-person lead and quote; "TikTok" and
    # "iPhone" are written so only as names, so they count where they open a sentence too.
    blog = names.extract("HarbourBlock", "I've built another one. I won't stop, I hope, said Tomas Verhal.")
    assert blog.words == ("harbourblock", "tomas", "verhal")
    opening = names.extract("iPhone maker sued", "TikTok said McLeod met them. Pro-Russian groups left. Anti-war.")
    assert opening.words == ("iphone", "tiktok", "mcleod")  # a capital after a hyphen says nothing


def test_two_events_of_one_day_in_a_quiet_stream_stay_apart_though_both_name_it() -> None:
    # Few stories in the window make every term look rare, the weekday too: the Uganda case
    # names Congo's outbreak in passing ("the same day neighbouring Congo declared ..."), and
    # "Monday" made the weight of that up to an independent report's.
    items = json.loads((ROOT / "tests" / "data" / "stories" / "outbreak.json").read_text(encoding="utf-8"))["items"]
    stream, story_of = Stream(), {}
    for n, item in enumerate(i for i in items if i["id"] in ("ob-01", "ob-02", "ob-03", "ob-06", "ob-07")):
        at = datetime.fromisoformat(item["published"])
        story_of[item["id"]], _ = stream.add(n, at, feats((item["title"], item["summary"])), None, item["outlet"])
    congo = {stream.story_of(story_of[i]) for i in ("ob-01", "ob-02", "ob-03")}
    uganda = stream.story_of(story_of["ob-06"])
    assert len(congo) == 1 and uganda not in congo
    assert stream.story_of(story_of["ob-07"]) == uganda  # the second report of Uganda's case joins it


def test_a_name_written_with_or_without_its_marks_is_one_name() -> None:
    marked = names.extract("Ramírez meets Erdoğan in Zürich", "Sebastián Ramírez met Recep Erdoğan and Jonas Støre.")
    bare = names.extract("Ramirez meets Erdogan in Zurich", "Sebastian Ramirez met Recep Erdogan and Jonas Store.")
    assert marked.words == bare.words
    assert {"ramirez", "erdogan", "zurich", "recep", "jonas", "store"} <= set(bare.words)
    # Another script's marks tell letters apart: Cyrillic "й" stays itself.
    assert "сергей" in names.extract("Визит в Киев", "Лавров и Сергей Шойгу прибыли в Киев.").words


def another_outlets_report(first: tuple[str, str], report: tuple[str, str]) -> tuple[bool, str]:
    """Whether ``report``, another outlet's an hour after ``first`` (with an unrelated item of a
    third outlet between them), joins ``first``'s story, and the reason given."""
    stream = Stream()
    story_of_first, _ = stream.add(1, NOON, feats(first), None, "outlet-a")
    assert stream.add(2, NOON + timedelta(minutes=30), feats(UNRELATED), None, "outlet-c")[0] != story_of_first
    story, decision = stream.add(3, NOON + timedelta(hours=1), feats(report), None, "outlet-b")
    return story == story_of_first, decision.explain(names.extract(*report))


def test_a_report_spelling_the_names_without_their_marks_joins_the_one_with_them() -> None:
    marked = (
        "Peña and Gökalp sign Ñandú river accord in Málaga",
        "MÁLAGA — Tomás Peña of Corvania and Ayşe Gökalp of Velmora signed an accord on Thursday to share the "
        "waters of the Ñandú river, with 1.8 billion euros for dams over ten years, their offices said in Málaga.",
    )
    bare = (  # an agency's own report of the same signing, its wire dropping every mark
        "Pena, Gokalp seal Nandu river deal",
        "Tomas Pena and Ayse Gokalp have sealed a deal in Malaga to share the Nandu river between Corvania and "
        "Velmora; dams worth 1.8 billion euros are to be built within a decade.",
    )
    joined, reason = another_outlets_report(marked, bare)
    assert joined, reason
    assert "pena" in reason


def test_a_country_named_by_its_people_is_the_country() -> None:
    assert names.extract("Ten killed in Turkish avalanche", "").words == ("turkey",)
    envoys = names.extract("Talks resume", "Envoys of the Israelis and Palestinians met South Korean officials.")
    assert envoys.words == ("israel", "palestine", "south", "korea")
    # A people's name that is part of its country's own name names it already.
    assert names.extract("Talks", "Leaders of Czech and Dominican parties meet.").words == ("czech", "dominican")
    # Named, it is no plain word as well: one word is one piece of evidence.
    text = "Rescuers of the Turkish army dug through deep snow."
    assert "turkish" not in names.plain_words("Avalanche", text, names.extract("Avalanche", text))


def test_a_report_naming_the_countrys_people_joins_one_naming_the_country() -> None:
    country = (
        "Avalanche kills ten climbers in Turkey",
        "An avalanche killed ten climbers on a mountain in eastern Turkey on Sunday, rescuers said, and 12 more "
        "were pulled alive from the snow after a search lasting through the night.",
    )
    people = (  # another outlet's report of the same avalanche, naming the country only by its people
        "Ten climbers die in Turkish avalanche",
        "Ten mountaineers died when an avalanche swept a slope in the Turkish east on Sunday; rescue teams "
        "searched through the night and pulled 12 survivors from the snow.",
    )
    joined, reason = another_outlets_report(country, people)
    assert joined, reason
    assert "turkey" in reason


def test_a_report_naming_the_storys_people_and_place_after_setting_its_scene_joins_it() -> None:
    """Outlets open in their own ways: this one opens with the harbours its readers live in and
    names who signed, and where, only further down. Those names count for half there
    (``stories.LATER_NAME_SHARE``), and naming the story's opening ones there is enough."""
    signing = (
        "Kelvara and Doronne sign Grey Bank fisheries pact in Saltmere",
        "SALTMERE — Kelvaran minister Ottilie Brandvik and Doronne's Aurel Maszkiewicz signed a pact on Wednesday "
        "to share the cod stocks of the Grey Bank for ten years, their ministries said in Saltmere.",
    )
    scene = (  # another outlet's report of the signing, its opening about its own readers' harbours
        "Trawler crews cheer as cod quota fight ends",
        "Trawler crews in Harlow Bay and Wenmouth tied up early on Wednesday to follow the news on the quayside "
        "radio, and cheered when it came: after six years of seized nets, fines and empty holds, the fight over "
        "who may fish the cod of the shared grounds is over, and the boats can sail again next week. The pact "
        "was signed in Saltmere by Ottilie Brandvik of Kelvara and Aurel Maszkiewicz of Doronne and shares the "
        "Grey Bank's cod stocks for ten years.",
    )
    joined, reason = another_outlets_report(signing, scene)
    assert joined, reason
    assert "maszkiewicz" in reason


NETWORK_GUARD = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network is unreachable (test)")
socket.socket.connect = refuse
socket.create_connection = refuse
sys.path.insert(0, sys.argv[1])
from aggregator import semantic
vector = semantic.embedder().embed("Grain corridor agreed", "Leaders agreed a grain corridor.")
print(vector.shape[0], round(float((vector * vector).sum()), 3))
"""


def test_the_model_loads_with_the_network_unreachable() -> None:
    command = [sys.executable, "-c", NETWORK_GUARD, str(ROOT)]
    if os.geteuid() == 0 and shutil.which("unshare"):
        command = ["unshare", "--net", *command]  # no network namespace to reach anything from
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(semantic.DIMENSIONS), "1.0"]


# --- through the real pipeline: outlets' feeds served over HTTP, `aggregator poll --once` -------
SHARED = ROOT.parent / "shared" / "stories"


def rss(outlet: str, entries: list[tuple[str, str, str, datetime]]) -> bytes:
    """An outlet's RSS feed of (guid, title, text, published) entries."""
    from email.utils import format_datetime
    from xml.sax.saxutils import escape

    body = "".join(
        f"<item><title>{escape(title)}</title><link>https://{outlet}.example/{escape(guid)}</link>"
        f"<guid isPermaLink='false'>{escape(guid)}</guid><description>{escape(text)}</description>"
        f"<pubDate>{format_datetime(at)}</pubDate></item>"
        for guid, title, text, at in entries
    )
    return (
        f"<rss version='2.0'><channel><title>{outlet}</title><link>https://{outlet}.example/</link>"
        f"<description>d</description>{body}</channel></rss>"
    ).encode()


def serve_outlets(server: object, feeds: dict[str, bytes]) -> list[dict[str, object]]:
    from tests.server import FeedServer, Route

    assert isinstance(server, FeedServer)
    sources: list[dict[str, object]] = []
    for n, (outlet, body) in enumerate(sorted(feeds.items())):
        server.add(f"/o{n}", Route(body=body))
        sources.append({"name": f'"{outlet}"', "url": server.url(f"/o{n}")})
    return sources


def stories_by_guid(db: Path) -> dict[str, tuple[int, str]]:
    import sqlite3

    with sqlite3.connect(db) as connection:
        query = "select items.guid, stories.id, stories.uid from items join stories on stories.id = items.story_id"
        return {guid: (story, uid) for guid, story, uid in connection.execute(query)}


def test_the_pipeline_links_independent_reports_keeps_ids_and_explains(
    server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aggregator.cli import main
    from tests.conftest import write_config

    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(hours=30)
    look_alike = (
        "Aldoria and Corvania agree fuel corridor after talks in Fort Lorne",
        "FORT LORNE — Aldorian President Omar Petinger and Corvania Prime Minister Sofia Valmann agreed on Tuesday "
        "to open a fuel corridor through the Merrow Channel, with shipments of 900,000 tonnes planned before "
        "spring, the two governments said after talks in Fort Lorne.",
    )
    feeds = {
        "wire": rss("wire", [("w1", *ORIGINAL, first), ("w2", *FOLLOW_UP, first + timedelta(hours=26))]),
        "herald": rss("herald", [("h1", *REWRITE, first + timedelta(hours=2))]),
        "courier": rss("courier", [("c1", *UNRELATED, first + timedelta(hours=1))]),
        "gazette": rss("gazette", [("g1", *look_alike, first + timedelta(hours=3))]),
    }
    config = write_config(tmp_path, serve_outlets(server, feeds))
    assert main(["--config", str(config), "poll", "--once"]) == 0
    db = tmp_path / "data" / "aggregator.db"
    found = stories_by_guid(db)
    assert found["h1"] == found["w1"]  # the independent rewrite joined the wire's story
    others = [found[g] for g in ("w2", "c1", "g1")]
    assert len({story for story, _ in others} | {found["w1"][0]}) == 4  # follow-up, unrelated, look-alike apart

    capsys.readouterr()
    assert main(["--config", str(config), "story", str(found["w1"][0])]) == 0
    shown = capsys.readouterr().out
    assert f"story {found['w1'][0]}  {found['w1'][1]}  (2 items)" in shown
    led = shown.split("led in the outputs by item ", 1)[1].split("\n", 1)[0]
    assert "joined story" in shown and "salezovic" in shown  # why the rewrite joined
    assert "new story" in shown  # the first item started it
    assert main(["--config", str(config), "items", "world", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    reasons = {row["title"]: row["story_reason"] or "" for row in rows}
    # The headline `story` gives is the one the World entry shows (its lead, not "also reported").
    leads = [
        row["title"]
        for row in rows
        if row["title"] in (ORIGINAL[0], REWRITE[0]) and row["reason"].startswith("included")
    ]
    assert len(leads) == 1 and led.endswith(f"): {leads[0]}"), (led, leads)
    pair = sorted(reasons[title].split(" (")[0][:12] for title in (ORIGINAL[0], REWRITE[0]))  # either came first
    assert pair == ["joined story", "new story"], [reasons[title] for title in (ORIGINAL[0], REWRITE[0])]

    # A restart and a re-poll of everything, with one more outlet's copy: nothing moves.
    feeds["post"] = rss("post", [("p1", ORIGINAL[0] + " - Post", ORIGINAL[1], first + timedelta(hours=4))])
    config = write_config(tmp_path, serve_outlets(server, feeds))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    again = stories_by_guid(db)
    assert {guid: again[guid] for guid in found} == found  # story numbers and tag: ids unchanged
    assert again["p1"] == found["w1"]  # the copy joined the same story
    capsys.readouterr()
    assert main(["--config", str(config), "story", str(found["w1"][0]), "--json"]) == 0
    shown_json = json.loads(capsys.readouterr().out)
    assert shown_json["headline"] == leads[0] and len(shown_json["items"]) == 3  # the copy found later leads nothing


def test_story_and_items_tell_apart_sources_whose_long_names_share_a_beginning(
    server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two desks of one newspaper, named as operators name such feeds: the names differ only at
    # the end, beyond the width of the source column. Both report one event; the story's lines
    # must still say which desk each item came from.
    from aggregator.cli import SOURCE_COLUMN, main
    from tests.conftest import write_config

    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    world, business = "Northern Counties Evening Chronicle: world", "Northern Counties Evening Chronicle: business"
    assert min(len(world), len(business)) > SOURCE_COLUMN
    feeds = {
        world: rss("world", [("w1", *ORIGINAL, first)]),
        business: rss("business", [("b1", *REWRITE, first + timedelta(hours=1))]),
    }
    config = write_config(tmp_path, serve_outlets(server, feeds))
    assert main(["--config", str(config), "poll", "--once"]) == 0
    found = stories_by_guid(tmp_path / "data" / "aggregator.db")
    assert found["w1"] == found["b1"]
    capsys.readouterr()
    assert main(["--config", str(config), "story", str(found["w1"][0])]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  item ")]
    story_cells = [line.split("Z  ", 1)[1][:SOURCE_COLUMN] for line in lines]
    assert main(["--config", str(config), "items", "world"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("+ ", "- ")]
    items_cells = [line[11 : 11 + SOURCE_COLUMN] for line in lines]
    for cells in (story_cells, items_cells):
        # Each cell is its source's name with the middle cut out: it names one desk, each once.
        named = []
        for cell in cells:
            head, _, tail = cell.partition("…")
            named += [name for name in (world, business) if name.startswith(head) and name.endswith(tail) and tail]
        assert sorted(named) == sorted([world, business]), cells


@pytest.mark.parametrize("mode", ["lexical", "off"])
def test_every_stored_item_says_why_it_is_in_its_story_whatever_the_setting(
    server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    # "no reason recorded (stored before story matching kept one)" is for items stored by an
    # older version; with lexical matching or none, a new story or a URL's story says so too.
    from aggregator.cli import main
    from tests.conftest import write_config

    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    feeds = {
        "wire": rss("wire", [("w1", *ORIGINAL, first), ("w2", *UNRELATED, first)]),
        "herald": rss("herald", [("h1", ORIGINAL[0], ORIGINAL[1], first + timedelta(hours=1))]),
    }
    config = write_config(tmp_path, serve_outlets(server, feeds), settings=f"story_matching: {mode}")
    assert main(["--config", str(config), "poll", "--once"]) == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "aggregator.db") as connection:
        reasons = dict(connection.execute("select guid, match_reason from items"))
    assert all(reasons.values()), reasons
    capsys.readouterr()
    found = stories_by_guid(tmp_path / "data" / "aggregator.db")
    assert main(["--config", str(config), "story", str(found["w2"][0])]) == 0
    shown = capsys.readouterr().out
    assert "no reason recorded" not in shown and f"story_matching{' is' if mode == 'off' else ':'} {mode}" in shown


def test_one_fetch_joins_an_outlets_copy_of_its_report_but_not_its_other_reports(
    server: object, tmp_path: Path
) -> None:
    # One outlet's feed carries its report, the same report again under another guid, its own
    # rewrite of the event and an unrelated item. Decided in one poll: the copy joins the story
    # the report starts; the rewrite, which shares only names with it, stays apart, since an
    # outlet's names (its own, its city's, its templates') are no evidence between its items.
    from aggregator.cli import main
    from tests.conftest import write_config

    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    entries = [
        ("a1", *ORIGINAL, first),
        ("a2", *UNRELATED, first + timedelta(hours=1)),
        ("a3", *REWRITE, first + timedelta(hours=2)),
        ("a4", ORIGINAL[0] + ", officials say", ORIGINAL[1], first + timedelta(hours=3)),
    ]
    config = write_config(tmp_path, serve_outlets(server, {"wire": rss("wire", entries)}))
    assert main(["--config", str(config), "poll", "--once"]) == 0
    db = tmp_path / "data" / "aggregator.db"
    found = stories_by_guid(db)
    assert found["a4"] == found["a1"]
    assert len({found["a1"], found["a2"], found["a3"]}) == 3
    import sqlite3

    with sqlite3.connect(db) as connection:
        reasons = dict(connection.execute("select guid, match_reason from items"))
    assert reasons["a4"].startswith(f"joined the new story of {ORIGINAL[0]!r} (same poll): cosine"), reasons["a4"]
    assert "copies an item of the same poll" in reasons["a4"]  # not its provisional number
    assert "only its own outlet's items so far" in reasons["a3"], reasons["a3"]


def test_one_outlets_series_opening_with_one_paragraph_stays_apart_and_says_why(server: object, tmp_path: Path) -> None:
    # A blogger's posts of one series, minutes apart: each opens with the same paragraph
    # introducing the series, and only its headline says which model it shows. Their leads
    # share every phrase, but a copy keeps its original's names and these each name another:
    # three stories, three entries, none of them hidden under another.
    from aggregator.cli import main
    from tests.conftest import write_config

    intro = (
        "After finding a few remarkable brick models over the years on their builders' pages, I have "
        "decided to share some favourites here, one post each. I will try not to overdo it, I promise. "
        "Blame Tomas Verhal's lovely gallery for the idea."
    )
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    posts = [("HarbourBlock", "a harbour crane"), ("TramBlock", "a city tram"), ("LanternBlock", "a lighthouse")]
    entries = [
        (f"p{n}", title, f"{intro} This one is {model}.", first + timedelta(minutes=2 * n))
        for n, (title, model) in enumerate(posts)
    ]
    config = write_config(tmp_path, serve_outlets(server, {"bricks": rss("bricks", entries)}))
    assert main(["--config", str(config), "poll", "--once"]) == 0
    db = tmp_path / "data" / "aggregator.db"
    found = stories_by_guid(db)
    assert len({found["p0"], found["p1"], found["p2"]}) == 3
    world = json.loads((tmp_path / "data" / "feeds" / "world.json").read_text(encoding="utf-8"))
    assert sorted(item["title"] for item in world["items"]) == sorted(title for title, _ in posts)
    import sqlite3

    with sqlite3.connect(db) as connection:
        reasons = dict(connection.execute("select guid, match_reason from items"))
    assert "another instance of one template, not a copy" in reasons["p1"], reasons["p1"]


def test_a_first_ingest_merges_one_outlets_fragments_that_another_outlet_links(server: object, tmp_path: Path) -> None:
    # One poll of two feeds: the wire's backlog holds two reports of one event, which stay
    # apart in its fetch; the herald's report, committed after it (its feed answers later),
    # joins one and shows the other to be the same event. No reader has seen either story
    # (nothing is published before the poll ends), so they become one.
    import sqlite3

    from aggregator.cli import main
    from tests.conftest import write_config
    from tests.server import FeedServer, Route

    assert isinstance(server, FeedServer)
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    wire = rss("wire", [("w1", *ORIGINAL, first), ("w2", *REWRITE, first + timedelta(hours=1))])
    herald = rss("herald", [("h1", *THIRD, first + timedelta(hours=2))])
    server.add("/wire", Route(body=wire))
    server.add("/herald", Route(body=herald, delay=1.0))  # after the wire's batch has gone
    sources = [{"name": "wire", "url": server.url("/wire")}, {"name": "herald", "url": server.url("/herald")}]
    config = write_config(tmp_path, sources)
    assert main(["--config", str(config), "poll", "--once"]) == 0
    db = tmp_path / "data" / "aggregator.db"
    found = stories_by_guid(db)
    assert found["w1"] == found["w2"] == found["h1"]
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from stories where merged_into is null").fetchone() == (1,)
        reason = connection.execute("select match_reason from items where guid = 'h1'").fetchone()[0]
    assert "one outlet's report of the same event, joins it" in reason, reason


def test_a_published_story_merged_away_leads_its_readers_to_the_story_it_became(
    server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same reports, the herald's a poll later: the wire's two stories were published in
    # between, as two entries. The herald's report joins one and shows the other to be the same
    # event, which merges into it all the same: the World feed then carries the event once,
    # under the id of the story the report joined, and the merged story's page and number lead
    # there.
    import sqlite3

    import feedparser
    import httpx

    from aggregator.cli import main
    from aggregator.config import load_config
    from aggregator.store.database import make_engine
    from aggregator.store.repository import Store
    from tests.conftest import serving, write_config
    from tests.server import FeedServer, Route

    assert isinstance(server, FeedServer)
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    server.add(
        "/wire", Route(body=rss("wire", [("w1", *ORIGINAL, first), ("w2", *REWRITE, first + timedelta(hours=1))]))
    )
    server.add("/herald", Route(body=rss("herald", [])))
    sources = [{"name": "wire", "url": server.url("/wire")}, {"name": "herald", "url": server.url("/herald")}]
    config_path = write_config(tmp_path, sources)
    assert main(["--config", str(config_path), "poll", "--once"]) == 0
    db = tmp_path / "data" / "aggregator.db"
    world = tmp_path / "data" / "feeds" / "world.atom"
    published = stories_by_guid(db)
    assert published["w1"] != published["w2"]
    assert {e.id for e in feedparser.parse(world.read_bytes()).entries} == {published["w1"][1], published["w2"][1]}

    server.add("/herald", Route(body=rss("herald", [("h1", *THIRD, first + timedelta(hours=2))])))
    assert main(["--config", str(config_path), "poll", "--once", "--all"]) == 0
    found = stories_by_guid(db)
    kept = found["h1"]
    assert kept in (published["w1"], published["w2"])  # ids unchanged: the one joined keeps its own
    assert found["w1"] == found["w2"] == kept
    merged = ({published["w1"], published["w2"]} - {kept}).pop()
    with sqlite3.connect(db) as connection:
        forwards = dict(connection.execute("select id, merged_into from stories").fetchall())
    assert forwards == {kept[0]: None, merged[0]: kept[0]}
    assert [e.id for e in feedparser.parse(world.read_bytes()).entries] == [kept[1]]  # the event once

    capsys.readouterr()
    assert main(["--config", str(config_path), "story", merged[1]]) == 0
    shown = capsys.readouterr().out
    assert f"story {merged[1]} was merged into story {kept[0]}" in shown, shown
    assert shown.count("  item ") == 3 and kept[1] in shown
    assert f"later merged from story {merged[0]} into story {kept[0]}" in shown, shown  # the wire item it held

    config = load_config(config_path).config
    engine = make_engine(f"sqlite:///{db}")
    try:
        with serving(Store(engine), config) as base:
            moved = httpx.get(f"{base}/stories/{merged[0]}")
            assert moved.status_code == 301 and moved.headers["location"] == f"/stories/{kept[0]}"
            page = httpx.get(f"{base}/stories/{merged[0]}", follow_redirects=True)
            assert page.status_code == 200 and page.text.count("<li") == 3
    finally:
        engine.dispose()


def test_a_podcast_linking_every_episode_to_its_site_keeps_each_episode(server: object, tmp_path: Path) -> None:
    # From a real feed: every episode's <link> is the show's site. Taken for the episodes'
    # article URL, it joined all of them (and any other feed linking the site) into one story.
    from aggregator.cli import main
    from tests.conftest import write_config

    first = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    episodes = [
        ("ep1", "Taverncast 1: Welcome to the Bar", "Our first show: the crew meets at the bar.", first),
        ("ep2", "Taverncast 2: Enter Kirnkaterre", "A new player joins the table.", first + timedelta(days=1)),
        ("ep3", "Taverncast 3: Paladin Brite", "The paladin tells his story.", first + timedelta(days=2)),
    ]
    site = re.sub(rb"<link>[^<]*/ep\d</link>", b"<link>https://cast.example/</link>", rss("cast", episodes))
    linking = rss("blog", [("b1", "Listen to Taverncast", "A show worth hearing.", first + timedelta(days=2))])
    linking = linking.replace(b"<link>https://blog.example/b1</link>", b"<link>https://cast.example/</link>")
    config = write_config(tmp_path, serve_outlets(server, {"cast": site, "blog": linking}))
    assert main(["--config", str(config), "poll", "--once"]) == 0
    found = stories_by_guid(tmp_path / "data" / "aggregator.db")
    assert len({found[guid] for guid in ("ep1", "ep2", "ep3", "b1")}) == 4


def test_a_story_is_an_outlets_own_only_while_all_its_judged_members_are_its() -> None:
    sources = {1: [7, 7, 7], 2: [7, 9], 3: [9]}
    assert stories.own_stories(sources, 7) == {1}
    assert stories.own_stories(sources, 9) == {3}
    assert stories.own_stories(sources, None) == set()  # source unknown: nothing is its own


def test_the_fragments_a_report_may_merge_are_stories_of_one_other_outlet() -> None:
    sources: dict[int, list[int | None]] = {1: [7, 7, 7], 2: [7, 9], 3: [9], 4: [None]}
    assert stories.other_outlets_stories(sources, 9) == {1}  # not 3 (its own), 2 (two outlets) or 4 (unknown)
    assert stories.other_outlets_stories(sources, 5) == {1, 3}
    assert stories.other_outlets_stories(sources, None) == set()  # whose report it is, is not known


def test_merges_end_where_their_chain_ends() -> None:
    assert stories.merge_targets([(1, 2), (2, 3), (4, 3)]) == {1: 3, 2: 3, 4: 3}
    assert stories.merge_targets([(5, 6), (6, 5)]) == {}  # a cycle merges nothing
    assert stories.merge_targets([]) == {}


def test_an_outlets_own_names_do_not_join_its_items_about_other_events() -> None:
    # From a real feed (a city paper, its name and city in every item): each of its items on
    # another event shares "Massa News" and "Curitiba" with the others, names no other outlet
    # prints, so rare in the stream. Another outlet's report of the same event still joins.
    outlet = [
        (
            "Boletim aponta que prefeito está bem-disposto após cirurgia",
            "Massa News Curitiba: o boletim médico divulgado nesta manhã diz que o prefeito Rafael Greca está "
            "bem-disposto e alegre após a cirurgia no Hospital Evangélico de Curitiba.",
        ),
        (
            "Museu da Gravura oferece cursos de férias em Curitiba",
            "Massa News Curitiba: o Museu da Gravura abre nesta manhã as inscrições para os cursos de férias de "
            "julho, com vagas para crianças e adultos no centro de Curitiba.",
        ),
    ]
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(outlet[0]), source="massanews")
    second, decision = stream.add(2, NOON + timedelta(hours=1), feats(outlet[1]), source="massanews")
    assert second != first
    assert "only its own outlet's items so far" in decision.explain()
    # With their outlet unknown, the two join on those names: the merge the rule prevents.
    again = Stream()
    first, _ = again.add(1, NOON, feats(outlet[0]))
    assert again.add(2, NOON + timedelta(hours=1), feats(outlet[1]))[0] == first
    # And another outlet's report of the first event joins the story the first outlet started.
    report = Stream()
    first, _ = report.add(1, NOON, feats(ORIGINAL), source="wire")
    assert report.add(2, NOON + timedelta(hours=1), feats(REWRITE), source="herald")[0] == first
    assert report.add(3, NOON + timedelta(hours=2), feats(REWRITE), source="wire")[0] == first  # herald is in it


def test_another_outlets_report_merges_one_outlets_fragments_of_its_event() -> None:
    # One outlet's two reports of one event stay apart (only a copy joins an outlet's own
    # story); another outlet's report that joins either and would join the other as well shows
    # them to be one event: the other is merged into the story it joins.
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(ORIGINAL), source="wire")
    second, _ = stream.add(2, NOON + timedelta(hours=1), feats(REWRITE), source="wire")
    assert second != first
    joined, decision = stream.add(3, NOON + timedelta(hours=2), feats(THIRD), source="herald")
    assert joined in (first, second)
    assert [fragment.story_id for fragment in decision.absorbs] == [({first, second} - {joined}).pop()]
    assert "one outlet's report of the same event, joins it" in decision.explain()
    assert stream.story_of(first) == stream.story_of(second) == joined
    later, _ = stream.add(4, NOON + timedelta(hours=3), feats(UNRELATED), source="herald")
    assert later != joined  # the merged story still tells other events apart

    # Only a story of one outlet other than the item's is a fragment: not one of several outlets
    # (a story of its own), nor one the decision was not told is a single outlet's.
    stats = stream.stats()
    profiles = [
        StoryProfile(7, (Member(1, NOON, feats(ORIGINAL)),), NOON),
        StoryProfile(8, (Member(2, NOON + timedelta(hours=1), feats(REWRITE)),), NOON + timedelta(hours=1)),
    ]
    item, at = feats(THIRD), NOON + timedelta(hours=2)
    assert [j.story_id for j in stories.decide(item, at, profiles, stats, one_outlet={7, 8}).absorbs] in ([7], [8])
    assert stories.decide(item, at, profiles, stats, one_outlet=()).absorbs == ()
    assert stories.decide(item, at, profiles, stats, own={7}, one_outlet={7, 8}).absorbs == ()  # its own: no


def _toward(vector: semantic.Vector, cosine: float) -> semantic.Vector:
    """A unit vector at ``cosine`` to ``vector``, the rest of it along a fixed other direction."""
    unit = vector / np.linalg.norm(vector)
    other: semantic.Vector = np.asarray(np.random.default_rng(0).standard_normal(len(unit)), dtype=np.float32)
    other -= float(np.dot(other, unit)) * unit
    other /= np.linalg.norm(other)
    toward: semantic.Vector = (cosine * unit + np.sqrt(1 - cosine * cosine) * other).astype(vector.dtype)
    return toward


@pytest.mark.parametrize("cosine", [0.5, 0.55, stories.ABSORB_COSINE + 0.05])
def test_a_fragment_far_in_meaning_is_not_merged_on_shared_names(cosine: float) -> None:
    # Merging two stories on one item's word is a chain: the item must be close in meaning to
    # the fragment, not only share names with it (a roundup shares "Ukraine" and "Russia" with
    # every report of the war). Below that it still joins its story, and says why the fragment
    # stays apart.
    stream = Stream()
    stream.add(1, NOON, feats(ORIGINAL), source="wire")
    stream.add(2, NOON + timedelta(hours=1), feats(REWRITE), source="wire")
    item, at = feats(THIRD), NOON + timedelta(hours=2)
    fragment = replace(feats(ORIGINAL), vector=_toward(item.vector, cosine))
    profiles = [
        StoryProfile(7, (Member(1, NOON, fragment),), NOON),
        StoryProfile(8, (Member(2, NOON + timedelta(hours=1), feats(REWRITE)),), NOON + timedelta(hours=1)),
    ]
    judged = stories.judge(item, at, profiles[0], stream.stats())
    assert judged.joins and judged.cosine == pytest.approx(cosine, abs=1e-3)  # it would join the fragment
    decision = stories.decide(item, at, profiles, stream.stats(), one_outlet={7})
    assert decision.story_id == 8
    if cosine >= stories.ABSORB_COSINE:
        assert [j.story_id for j in decision.absorbs] == [7] and decision.unmerged == ()
        assert "one outlet's report of the same event, joins it" in decision.explain()
    else:
        assert decision.absorbs == () and [j.story_id for j in decision.unmerged] == [7]
        assert f"story 7, one outlet's story it would join too, stays apart: cosine {cosine:.2f}" in decision.explain()


@pytest.mark.parametrize(("hours", "merged"), [(5, True), (10, False)])
def test_a_fragment_is_not_merged_where_the_two_stories_together_would_span_more_than_twelve_hours(
    hours: int, merged: bool
) -> None:
    # Each story is within 12 h of the item, one before it and one after (a first ingest reads
    # them out of order): merged, they would span what no story taking their members one by one
    # may (``judge``). The item joins one and says why the other stays apart.
    stats = TermStats(10)
    item, at = feats(THIRD), NOON
    profiles = [
        StoryProfile(7, (Member(1, at - timedelta(hours=hours), feats(ORIGINAL)),), at - timedelta(hours=hours)),
        StoryProfile(8, (Member(2, at + timedelta(hours=hours), feats(REWRITE)),), at + timedelta(hours=hours)),
    ]
    assert all(stories.judge(item, at, p, stats).joins for p in profiles)
    decision = stories.decide(item, at, profiles, stats, one_outlet={7, 8})
    assert decision.story_id in (7, 8)
    other = ({7, 8} - {decision.story_id}).pop()
    if merged:
        assert [j.story_id for j in decision.absorbs] == [other] and decision.unmerged == ()
    else:
        assert decision.absorbs == () and [j.story_id for j in decision.unmerged] == [other]
        assert (
            f"story {other}, one outlet's story it would join too, stays apart: together they would span more than 12 h"
            in decision.explain()
        )


def test_a_batch_decides_in_order_and_names_its_new_stories() -> None:
    stats = TermStats(stories=0)
    batch = storybatch.Batch(stats)
    original, rewrite, unrelated = feats(ORIGINAL), feats(REWRITE), feats(UNRELATED)
    first, founder = batch.decide("o", NOON, original, stats.keys(original.terms), {}, {})
    assert first.story_id is None and founder is None  # starts a story
    other, founder = batch.decide("u", NOON, unrelated, stats.keys(unrelated.terms), {}, {})
    assert other.story_id is None and founder is None
    apart, founder = batch.decide("r", NOON + timedelta(hours=1), rewrite, stats.keys(rewrite.terms), {}, {})
    assert apart.story_id is None and founder is None  # the outlet's own other report: names only
    copy = feats((ORIGINAL[0] + ", officials say", ORIGINAL[1]))
    joined, founder = batch.decide("c", NOON + timedelta(hours=2), copy, stats.keys(copy.terms), {}, {})
    assert founder == "o" and joined.story_id is not None and joined.story_id < 0
    assert joined.explain(None, batch.named).startswith("joined the new story of 'o' (same poll)")


def test_a_new_story_of_the_batch_is_reached_through_any_judged_member() -> None:
    # The poll's second item copies the first and adds a name; a later item naming only that
    # name reaches their story through it, as a stored story is reached through any member.
    stats = TermStats(stories=0)
    batch = storybatch.Batch(stats)
    original = feats(ORIGINAL)
    batch.decide("o", NOON, original, stats.keys(original.terms), {}, {})
    copy = feats((ORIGINAL[0], ORIGINAL[1] + " Ines Varga reported from Port Aven."))
    _, founder = batch.decide("c", NOON, copy, stats.keys(copy.terms), {}, {})
    assert founder == "o"
    (added,) = copy.terms - original.terms - feats(("", "Port Aven")).terms
    other = feats(("Varga wins the Harrow Glen prize", "Ines Varga won the Harrow Glen prize for reporting."))
    assert added in other.terms and not other.terms & original.terms
    decision, _ = batch.decide("v", NOON, other, stats.keys(other.terms), {}, {})
    assert [j.story_id for j in decision.near_misses] == [-1]  # judged, and refused: another event


PLACES = ("Brelmont", "Castavin", "Dorrowe", "Elbanth", "Fenwyck")


def _batch_sharing_one_name(stories_carrying: int) -> list[stories.Judgement]:
    """The near misses of an item that shares only the name Quorvale with the stories the
    earlier items of its fetch started, ``stories_carrying`` of them, each naming it."""
    stats = TermStats(stories=0)
    batch = storybatch.Batch(stats)
    for n in range(stories_carrying):
        name = PLACES[n % len(PLACES)] + "abcdefghijklmnopqrstuvwxyz"[n // len(PLACES)]
        f = feats((f"{name} talks", f"Officials of {name} met envoys from Quorvale on Monday."))
        decision, _ = batch.decide(f"s{n}", NOON, f, stats.keys(f.terms), {}, {})
        assert decision.story_id is None  # each its own story: another place each time
    probe = feats(("Tessaly signs accord with Quorvale", "Tessaly signed an accord with Quorvale on Friday."))
    decision, _ = batch.decide("probe", NOON, probe, stats.keys(probe.terms), {}, {})
    return list(decision.near_misses)


def test_a_name_most_of_a_fetchs_new_stories_carry_reaches_none_of_them() -> None:
    # A feed may bring thousands of items in one fetch; a name that more than KEY_MAX_STORIES of
    # the stories its earlier items started carry (its own name, a stock word) is no lookup key
    # among them, as among stored stories, so each item's candidates stay few whatever the fetch.
    few = _batch_sharing_one_name(stories.KEY_MAX_STORIES)
    assert few and all(j.story_id < 0 for j in few)  # reached through Quorvale and judged
    assert len(few) == stories.MAX_CANDIDATES
    assert _batch_sharing_one_name(stories.KEY_MAX_STORIES + 1) == []


def test_one_outlets_series_from_a_template_stays_apart_in_one_fetch() -> None:
    # Two results from one template in one feed: the same names, other figures.
    stats = TermStats(stories=0)
    batch = storybatch.Batch(stats)
    series = [
        (f"Feed 5 story {n}: talks resume in Geneva", f"Story {n} of feed 5. Talks resumed on Tuesday.")
        for n in (17, 22)
    ]
    decided = []
    for n, pair in enumerate(series):
        terms = names.extract(*pair)
        f = feats(pair)
        decided.append(batch.decide(f"s{n}", NOON, f, stats.keys(f.terms), {}, {}, "", names.figures(terms.words)))
    assert [founder for _, founder in decided] == [None, None]  # each starts its own story
    assert decided[1][0].story_id is None


RATING = (  # one analyst desk's template, filled in for one company after another: mostly its own names
    "{company} Market Perform",
    "Analyst Castellan Brothers Capital Markets kept its Market Perform rating for {company} Inc with a price "
    "target of {price} USD, Castellan Research told clients in New York on Monday.",
)


def rating(company: str, price: int, *, extra: str = "") -> Features:
    title, lead = RATING
    return feats((title.format(company=company), lead.format(company=company, price=price) + extra))


def test_one_template_filled_in_for_another_subject_is_not_a_copy() -> None:
    # Found in a real feed: an analyst desk's ratings, one fetch of a dozen, differ only in the
    # company and the figure. The leads share every phrase but those, and with every name of a
    # first fetch still rare the desk's own names outweighed the company in the agreement.
    first, other = rating("Northwind Holdings", 74), rating("Brightwater Foods", 31)
    assert first.signature is not None and other.signature is not None
    assert cluster.same_story(other.signature, first.signature, timedelta(0)) is not None  # the leads copy
    stats = TermStats(stories=0)
    story = StoryProfile(1, (Member(7, NOON, first),), NOON)
    assert stats.weight(next(iter(other.terms - first.terms))) == 1.0  # every name rare, as in a first fetch
    decision = decide(other, NOON, [story], stats, own={1})  # the desk's own story: only a copy joins
    assert decision.story_id is None
    assert stories.other_subjects(other, story, dict.fromkeys(other.terms, 1.0), stats)
    # A copy that keeps the subject and adds a name still joins as one.
    added = decide(rating("Northwind Holdings", 74, extra=" Ines Varga wrote it."), NOON, [story], stats, own={1})
    assert added.chosen is not None and added.chosen.copy_of == 7
    # One that changes the figure is another instance of the desk's series; another outlet's
    # still joins, as a report of the same event.
    refigured = rating("Northwind Holdings", 76)
    assert decide(refigured, NOON, [story], stats, own={1}).story_id is None
    report = decide(refigured, NOON, [story], stats).chosen
    assert report is not None and report.copy_of is None and report.joins


def test_a_copy_whose_only_new_names_are_plain_is_still_a_copy() -> None:
    # Each side also names what the other does not, but only what many stories name ("New York"
    # in the story's lead, "US" in the copy's): that tells nothing of whom the text is about.
    story = StoryProfile(1, (Member(7, NOON, rating("Northwind Holdings", 74)),), NOON)
    copy = feats(
        (
            "Northwind Holdings Market Perform in US",
            "Analyst Castellan Brothers Capital Markets kept its Market Perform rating for Northwind Holdings Inc "
            "with a price target of 74 USD, Castellan Research told clients on Monday.",
        )
    )
    plain = (copy.lead_terms - story.support.keys()) | (story.lead_support.keys() - copy.terms)
    assert plain  # "US" on one side, "New York" on the other
    assert stories.other_subjects(copy, story, dict.fromkeys(copy.terms, 1.0), TermStats(stories=0))
    common = TermStats(stories=2000, counts=dict.fromkeys(plain, 500))
    joined = decide(copy, NOON, [story], common, own={1})
    assert joined.chosen is not None and joined.chosen.copy_of == 7


def test_a_headline_alone_names_what_it_opens_with() -> None:
    # Its capitals say nothing where they open it, follow a colon or are Title Case; a headline
    # with a text has the text to name its subject again, one without has only the model's
    # vocabulary to tell a name from a plain word.
    alone = names.extract("Kalmaria central bank raises key rate: Greystone warns", "", stories.plain_word).words
    assert alone[:2] == ("kalmaria", "greystone")
    assert "central" not in alone and "~rais" not in alone
    title_case = names.extract("Dorardi Rival Takes Message to Belmaris", "", stories.plain_word).words
    assert title_case == ("dorardi", "belmaris")  # "Rival", "Takes" and "Message" are plain words
    assert names.extract("After talks, Kalmaria agrees", "", stories.plain_word).words == ("kalmaria",)
    text = "The bank said on Monday that it would lift its key rate."
    with_text = names.extract("Kalmaria central bank raises key rate", text, stories.plain_word)
    assert "kalmaria" not in with_text.words  # the text would have named it, had it been one
    assert names.extract("Kalmaria central bank raises key rate", "").words == ()  # asked for by the caller only
    for stock in ("Comments", "Read more", "By AP", "12 comments"):  # a title-only feed's stock text says nothing
        assert names.extract("Kalmaria central bank raises key rate", stock, stories.plain_word).words == ("kalmaria",)


def test_two_outlets_headlines_alone_of_one_event_join_and_look_alikes_do_not() -> None:
    # Title-only feeds: what opens a headline is most often its subject.
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(("Dorardi wins Belmaris election with 54% of the vote", "")), source="wire")
    joined, decision = stream.add(
        2, NOON + timedelta(hours=1), feats(("Belmaris: Lena Dorardi wins election with 54%", "")), source="herald"
    )
    assert joined == first
    assert decision.chosen is not None and {"dorardi", "belmaris"} <= set(
        names.extract("Belmaris: Lena Dorardi wins election with 54%", "", stories.plain_word).words
    )
    rates = Stream()
    one, _ = rates.add(1, NOON, feats(("Kalmaria central bank raises key rate to 2.5%", "")), source="wire")
    other, decision = rates.add(
        2, NOON + timedelta(hours=1), feats(("Solvaria central bank raises key rate to 2.5%", "")), source="herald"
    )
    assert other != one  # the same headline but for its subject: not a copy
    assert decision.near_misses and decision.near_misses[0].story_id == one


def test_headlines_alone_that_swap_a_common_subject_are_not_copies() -> None:
    # A stream reporting on both countries every day finds neither name rare: only the
    # headlines, all there is of title-only items, tell whom each is about.
    first = feats(("Kalmaria central bank raises key rate to 2.5%", ""))
    swapped = feats(("Solvaria central bank raises key rate to 2.5%", ""))
    added = feats(("Kalmaria central bank raises key rate to 2.5% in US", ""))
    updated = feats(("Kalmaria central bank raises key rate to 3%", ""))
    story = StoryProfile(1, (Member(7, NOON, first),), NOON)
    every = first.terms | swapped.terms | added.terms | updated.terms
    common = TermStats(stories=2000, counts=dict.fromkeys(every, 500))
    at = NOON + timedelta(hours=1)
    assert decide(swapped, at, [story], common).story_id is None
    for copy in (added, updated):  # a name added, a figure updated: still copies
        joined = decide(copy, at, [story], common)
        assert joined.chosen is not None and joined.chosen.copy_of == 7


def test_a_headline_alone_under_its_originals_headline_is_a_copy() -> None:
    # A title-only feed's item reads the word opening the headline as a name ("Nationwide"),
    # which the original, whose text never repeats it, does not: the same headline still
    # makes it a copy.
    title = "Nationwide strike halts trains across Belmaris"
    original = feats((title, "Rail and bus services stopped across Belmaris on Monday as unions walked out over pay."))
    alone = feats((title, ""))
    assert alone.headline and not alone.terms <= original.terms
    story = StoryProfile(1, (Member(7, NOON, original),), NOON)
    joined = decide(alone, NOON + timedelta(hours=1), [story], TermStats(stories=0))
    assert joined.chosen is not None and joined.chosen.copy_of == 7


def test_a_headline_alone_joins_on_one_rare_name_when_close_in_meaning() -> None:
    # Two title-only feeds' headlines of one event share the one or two names a headline has
    # room for: under the bar of a report with a text, enough for a headline alone.
    stream = Stream()
    first, _ = stream.add(1, NOON, feats(("Dorardi suspended by Belmaris party over reality show", "")), source="wire")
    backing = feats(("Belmaris prime minister backs suspension of Dorardi", ""))
    joined, decision = stream.add(2, NOON + timedelta(hours=1), backing, source="herald")
    assert joined == first
    chosen = decision.chosen
    assert chosen is not None and chosen.cosine is not None and chosen.copy_of is None
    assert stories.HEADLINE_NAME_WEIGHT <= chosen.name_weight < stories.names_needed(chosen.cosine)[0]


def test_a_report_and_a_headline_alone_link_whichever_came_first() -> None:
    # A title-only feed's headline and another outlet's report with a text share the one name
    # the headline has room for. The headline joins the report's story on it; the report must
    # join the headline's story on it too, or whether they link depends on which feed a first
    # ingest happened to read first.
    headline = ("Dorardi suspended by Belmaris party over reality show", "")
    report = (
        "Prime minister backs suspension of Dorardi",
        "The prime minister said on Tuesday that he backed the party's decision to suspend Dorardi after his "
        "appearance on a television reality show, which colleagues called a disgrace.",
    )
    for first_in, second_in in ((headline, report), (report, headline)):
        stream = Stream()
        first, _ = stream.add(1, NOON, feats(first_in), source="wire")
        joined, decision = stream.add(2, NOON + timedelta(hours=1), feats(second_in), source="herald")
        assert joined == first
        chosen = decision.chosen
        assert chosen is not None and chosen.cosine is not None and chosen.copy_of is None
        assert stories.HEADLINE_NAME_WEIGHT <= chosen.name_weight < stories.names_needed(chosen.cosine)[0]
    # Only a story of lone headlines bounds what a report can share with it so.
    mixed = StoryProfile(1, (Member(1, NOON, feats(headline)), Member(2, NOON, feats(report))), NOON)
    assert mixed.headline_names == frozenset()
    alone = StoryProfile(1, (Member(1, NOON, feats(headline)),), NOON)
    assert names.term_key("dorardi") in alone.headline_names


def test_a_headline_alone_reaches_the_story_of_the_one_rare_name_it_shares() -> None:
    # A title-only feed's headline shares one name with another outlet's headline of the same
    # fire, a name no other story of the stream carries. That is enough to join
    # (``HEADLINE_NAME_WEIGHT``), so it must be enough to reach the story and have it judged:
    # weighed as if the story were one of the others, the name fell short of MIN_KEY_WEIGHT.
    stream = Stream()
    for n, town in enumerate(("Kalmaria", "Solvaria", "Belmaris", "Ostrava", "Dunmore", "Pelaria", "Galdora")):
        budget = feats((f"{town} council approves new budget", ""))
        stream.add(n, NOON - timedelta(hours=3, minutes=-n), budget, source=f"paper {n}")
    fire = feats(FIRE_ALONE)
    first, _ = stream.add(10, NOON, fire, source="wire")
    blaze = feats(BLAZE_ALONE)
    assert names.extract(*BLAZE_ALONE, stories.plain_word).words == ("barangaroo",)
    assert fire.signature is not None and blaze.signature is not None  # no lead-copy key in common either
    assert not set(cluster.band_keys(fire.signature)) & set(cluster.band_keys(blaze.signature))
    stats = stream.stats()
    assert stats.weight(names.term_key("barangaroo")) < stories.MIN_KEY_WEIGHT  # counting the fire's story
    joined, decision = stream.add(11, NOON + timedelta(hours=1), blaze, source="herald")
    assert joined == first
    chosen = decision.chosen
    assert chosen is not None and chosen.copy_of is None and chosen.cosine is not None
    assert chosen.cosine >= stories.WEAK_COSINE and chosen.name_weight == stories.HEADLINE_NAME_WEIGHT


def test_a_headline_alone_needs_one_name_close_in_meaning_and_two_further_off() -> None:
    one, text_close = stories.HEADLINE_NAME_WEIGHT, stories.names_needed(0.7)[0]
    assert stories.names_needed(0.7, headline_names=one)[0] == one < text_close
    assert stories.names_needed(0.7, headline_names=0.9 * one)[0] == text_close
    further = (stories.MIN_COSINE + stories.WEAK_COSINE) / 2
    assert stories.names_needed(further, headline_names=2 * one)[0] == 2 * one < stories.MIN_NAME_WEIGHT
    assert stories.names_needed(further, headline_names=1.9 * one)[0] == stories.MIN_NAME_WEIGHT


def test_a_headline_alone_counts_its_names_not_a_shared_figure() -> None:
    # "6%" in two companies' results: a figure and plain words, no name, in common.
    story = StoryProfile(1, (Member(7, NOON, feats(("Trionic profit up 6% as sales climb", ""))),), NOON)
    other = decide(feats(("Fabrino profit up 6% as sales climb", "")), NOON + timedelta(hours=1), [story], TermStats(0))
    assert other.story_id is None
    miss = other.near_misses[0]
    assert miss.cosine is not None and miss.cosine >= stories.WEAK_COSINE
    assert miss.name_weight >= stories.HEADLINE_NAME_WEIGHT and "too few rare names" in miss.why_not


def test_a_headline_alone_with_another_figure_than_the_storys_is_another_instance() -> None:
    # A series repeats its names and changes its figures; another outlet's report of the same
    # results gives the same figure, or none.
    series = Stream()
    first, _ = series.add(1, NOON, feats(("Orbis Mining reports 6% rise in quarterly profit", "")), source="wire")
    later = NOON + timedelta(hours=1)
    other, decision = series.add(
        2, later, feats(("Orbis Mining reports 10% rise in quarterly profit", "")), source="herald"
    )
    assert other != first
    assert decision.near_misses and "figures differ" in decision.near_misses[0].why_not
    same, _ = series.add(3, later, feats(("Orbis Mining profit up 6%", "")), source="gazette")
    plain, _ = series.add(4, later, feats(("Orbis Mining beats forecasts as profit climbs", "")), source="courier")
    # A byline under a title-only feed's headline is no figure of it, nor any term.
    signed, _ = series.add(5, later, feats(("Orbis Mining profit climbs", "By AP")), source="post")
    assert same == plain == signed == first


def test_one_fetch_of_a_template_series_starts_a_story_per_subject() -> None:
    stats = TermStats(stories=0)
    batch = storybatch.Batch(stats)
    series = [("Northwind", 74), ("Brightwater", 31), ("Northwind", 74)]
    decided = [
        batch.decide(f"r{n}", NOON, f, stats.keys(f.terms), {}, {}) for n, f in enumerate(rating(*s) for s in series)
    ]
    assert [founder for _, founder in decided] == [None, None, "r0"]  # the repeat is a copy of the first


@pytest.mark.parametrize("mode", ["lexical", "off"])
def test_the_setting_selects_the_matcher(mode: str, server: object, tmp_path: Path) -> None:
    from aggregator.cli import main
    from tests.conftest import write_config

    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    feeds = {
        "wire": rss("wire", [("w1", *ORIGINAL, first)]),
        "herald": rss("herald", [("h1", *REWRITE, first + timedelta(hours=1))]),
        "post": rss("post", [("p1", ORIGINAL[0] + " - Post", ORIGINAL[1], first + timedelta(hours=2))]),
    }
    config = write_config(tmp_path, serve_outlets(server, feeds), settings=f"story_matching: {mode}")
    assert main(["--config", str(config), "poll", "--once"]) == 0
    found = stories_by_guid(tmp_path / "data" / "aggregator.db")
    assert found["h1"] != found["w1"]  # no model: an independent rewrite is its own story
    assert (found["p1"] == found["w1"]) is (mode == "lexical")  # the copy joins only by copied text


@pytest.mark.skipif(not (SHARED / "wikinews-dev.csv").exists(), reason=f"{SHARED} (shared data) is absent")
def test_a_slice_of_wikinews_through_poll_forms_stories(server: object, tmp_path: Path) -> None:
    # Real articles cited by Wikinews reports, one feed per outlet host; each story's items
    # within a few hours, stories a day apart. Checked: real stories form (pairs linked) and no
    # two stories that were a day apart merged.
    import csv
    import random

    from aggregator.cli import main
    from tests.conftest import write_config

    with (SHARED / "wikinews-dev.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = sorted({row["story_id"] for row in rows})[:40]
    rng = random.Random(5)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=len(chosen) // 4 + 1)
    when = {story: start + timedelta(hours=6 * n) for n, story in enumerate(chosen)}
    per_host: dict[str, list[tuple[str, str, str, datetime]]] = defaultdict(list)
    label: dict[str, str] = {}
    for n, row in enumerate(rows):
        if row["story_id"] in when:
            at = when[row["story_id"]] + timedelta(minutes=rng.randrange(0, 240))
            per_host[row["host"]].append((f"wn{n}", row["title"], row["lead"], at))
            label[f"wn{n}"] = row["story_id"]
    feeds = {host.replace(".", "-"): rss(host.replace(".", "-"), entries) for host, entries in per_host.items()}
    config = write_config(tmp_path, serve_outlets(server, feeds))
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    found = {guid: story for guid, (story, _) in stories_by_guid(tmp_path / "data" / "aggregator.db").items()}
    assert set(found) == set(label)
    pairs = [(a, b) for a in label for b in label if a < b]
    linked = [(a, b) for a, b in pairs if found[a] == found[b]]
    right = [(a, b) for a, b in linked if label[a] == label[b]]
    assert len(right) >= 10  # independent reports were linked (the lexical matcher links ~0.5% of pairs)
    assert len(right) >= 0.9 * len(linked)  # and few links are wrong (label noise included)


# --- storage: the same decision on SQLite and PostgreSQL ------------------------------------
STORE_CONFIG = """\
settings:
  public_url: https://news.example.org
sources:
  - name: Wire
    url: https://wire.example.com/feed
  - name: Herald
    url: https://herald.example.com/feed
outputs:
  - slug: world
    title: World
"""


def plain_item(key: str, title: str, text: str, at: datetime) -> object:
    from aggregator.records import Item

    return Item(key, key, None, None, title, "", "", text, None, (), at, None, key)


class MatchingStore:
    """A store on ``database_url`` with STORE_CONFIG's two sources (1: Wire, 2: Herald), and the
    writer's steps for a poll's new items: match, insert, merge."""

    def __init__(self, database_url: str) -> None:
        from aggregator.config import parse_config
        from aggregator.store.database import ensure_schema, make_engine
        from aggregator.store.repository import Store
        from aggregator.storymatch import StoryMatcher

        self.engine = make_engine(database_url)
        ensure_schema(self.engine)
        self.store = Store(self.engine)
        self.store.sync_sources(parse_config(STORE_CONFIG).source_specs(), NOON)
        self.matcher = StoryMatcher()

    def ingest(
        self, source_id: int, entries: list[tuple[str, tuple[str, str], datetime]], *, outlet_known: bool = True
    ) -> IngestPlan:
        """``outlet_known`` false: matched as no one source's (the outlet rule left out)."""
        items = [plain_item(key, *pair, at) for key, pair, at in entries]
        plan = IngestPlan(tuple(NewItem(item, None) for item in items if isinstance(item, Item)), (), 0)
        with self.store.ingest() as tx:
            matched = self.matcher.match(tx, plan, NOON, "semantic", {}, {}, source_id if outlet_known else None)
            tx.insert_items(source_id, matched.inserts, NOON, "news.example.org")
            tx.merge_stories(matched.merges)
        return matched


def test_matching_through_storage_on_both_backends(database_url: str) -> None:
    from alembic import command

    from aggregator.store.database import alembic_config

    db = MatchingStore(database_url)
    engine, store = db.engine, db.store

    def ingest(source_id: int, entries: list[tuple[str, tuple[str, str], datetime]]) -> dict[str, NewItem]:
        return {new.item.key: new for new in db.ingest(source_id, entries, outlet_known=False).inserts}

    first = ingest(1, [("w1", ORIGINAL, NOON), ("w2", UNRELATED, NOON + timedelta(minutes=5))])
    assert first["w1"].match_reason == "new story"
    with store.ingest() as tx:
        ids = _check_match_lookups(tx, first)

    second = ingest(2, [("h1", REWRITE, NOON + timedelta(hours=2)), ("h2", FOLLOW_UP, NOON + timedelta(hours=26))])
    assert second["h1"].story_id == ids["w1"]  # the independent rewrite joined, through the database
    assert (second["h1"].match_reason or "").startswith(f"joined story {ids['w1']}: cosine")
    with store.ingest() as tx:  # two outlets' members, earliest first; the story begins with the first
        refs = tx.story_member_refs([ids["w1"]], NOON - timedelta(days=1), 8)[ids["w1"]]
    assert refs.begins == NOON and len(refs.members) == 2 and refs.sources == {1, 2}
    assert second["h2"].story_id is None  # the follow-up a day later starts its own

    # The story-features migration (0009) down and up again keeps every item in its story (ids never change).
    with engine.connect() as connection:
        before = sorted(connection.execute(text("select id, story_id from items")).all())
    command.downgrade(alembic_config(engine), "0008")
    command.upgrade(alembic_config(engine), "head")
    with engine.connect() as connection:
        assert sorted(connection.execute(text("select id, story_id from items")).all()) == before
    engine.dispose()


def test_a_backlog_poll_weighs_each_item_over_its_own_days_on_both_backends(database_url: str) -> None:
    """A feed's first fetch brings days of backlog in one poll. Its report of an event is weighed
    against the stream of the event's own days, not against what the feed's later days made
    common: the same leaders in a dozen stories the week after say nothing about this one."""
    db = MatchingStore(database_url)
    db.ingest(1, [("w1", ORIGINAL, NOON)])
    later = NOON + timedelta(days=4)
    doings = (
        "open a maritime museum", "sign a fisheries accord", "unveil a memorial to sailors",
        "launch a joint satellite", "tour a flooded valley", "meet striking dock workers",
        "announce a rail tunnel study", "host a chess tournament", "name a new central banker",
        "pardon two journalists", "inaugurate a wind farm", "visit a children's hospital",
    )  # fmt: skip
    fillers = [
        (
            f"w{n + 2}",
            (
                f"Salezovic and Dorardi {doing}",
                f"Aldorian President Karim Salezovic and Belmaris Prime Minister Lena Dorardi {doing} in Port "
                f"Aven, near the Kestrel Strait.",
            ),
            later + n * (stories.STORY_SPAN + timedelta(hours=1)),  # too far apart to be one story
        )
        for n, doing in enumerate(doings)
    ]
    db.ingest(1, fillers)
    with db.engine.connect() as connection:
        stories_of: dict[str, int] = dict(connection.execute(text("select key, story_id from items")).all())
    assert len(set(stories_of.values())) == 1 + len(doings)

    backlog = [("h1", REWRITE, NOON + timedelta(hours=2)), ("h2", UNRELATED, fillers[-1][2] + timedelta(hours=1))]
    rewrite = next(new for new in db.ingest(2, backlog).inserts if new.item.key == "h1")
    assert rewrite.story_id == stories_of["w1"], rewrite.match_reason
    db.engine.dispose()


def test_fragments_merge_through_storage_unless_an_editor_named_them_on_both_backends(database_url: str) -> None:
    db = MatchingStore(database_url)
    engine, store, ingest = db.engine, db.store, db.ingest

    ingest(1, [("w1", ORIGINAL, NOON), ("w2", REWRITE, NOON + timedelta(hours=1))])
    with engine.connect() as connection:
        wire = {str(key): int(story) for key, story in connection.execute(text("select key, story_id from items"))}
    assert wire["w1"] != wire["w2"]  # one outlet's two reports: apart
    herald = ingest(2, [("h1", THIRD, NOON + timedelta(hours=2))])
    assert len(herald.merges) == 1 and set(herald.merges[0]) == {wire["w1"], wire["w2"]}
    kept = herald.merges[0][1]
    gone = herald.merges[0][0]
    with engine.connect() as connection:
        assert set(connection.execute(text("select story_id from items")).scalars()) == {kept}
        rows = {int(row[0]): row[1] for row in connection.execute(text("select id, merged_into from stories"))}
        assert rows == {kept: None, gone: kept}  # the merged story's row forwards
        reasons: dict[str, str] = dict(connection.execute(text("select key, match_reason from items")).all())
    moved = next(key for key, story in wire.items() if story == gone)
    assert f"; later merged from story {gone} into story {kept}: another outlet's report" in reasons[moved]
    with engine.connect() as connection:
        assert connection.execute(text(KEYS_OUT_OF_STEP)).all() == []
        stored = connection.execute(text("select match_features from items where key = :k"), {"k": moved}).scalar()
    keys = [stories.name_key(t) for t in Features.loads(str(stored)).terms]
    with store.ingest() as tx:  # the moved item's names lead to the story it is in now, not the one it left
        found = tx.term_stories(keys, NOON - timedelta(days=1), NOON + timedelta(days=1), 50)
    assert found and {story for carriers in found.values() for story in carriers.stories} == {kept}
    assert "later merged" not in reasons["h1"]
    assert store.counts()["stories"] == 1
    assert store.story_by_id(gone) == store.story_by_id(kept) and store.story_by_id(kept) is not None

    store.save_published("world", "atom", "application/atom+xml", b"<feed/>", "e1", NOON + timedelta(seconds=1))
    with store.ingest() as tx:  # published: it may merge all the same
        assert tx.mergeable_stories([kept, gone]) == {kept}  # gone is merged already
    store.set_editorial("world", kept, "pin", NOON)  # an editor's decision is about this story
    with store.ingest() as tx:
        assert tx.mergeable_stories([kept]) == set()
    store.set_editorial("world", kept, None, NOON)

    # Retention: the forwarding row, which has no items, goes with the story it forwards to.
    keep, log = timedelta(days=30), timedelta(days=30)
    assert store.prune(NOON + timedelta(days=1), keep, set(), fetch_log_keep=log).stories == 0
    assert store.story_by_id(gone) == store.story_by_id(kept)
    gone_too = store.prune(NOON + timedelta(days=400), keep, set(), fetch_log_keep=log)
    assert (gone_too.items, gone_too.stories) == (3, 2)
    assert store.story_by_id(gone) is None
    engine.dispose()


def test_merged_stories_forward_to_the_end_of_their_chain_on_both_backends(database_url: str) -> None:
    # A merged into B, then B into C: both rows lead to C, by number, tag: id and founding URL.
    from dataclasses import replace as replaced

    from aggregator.records import Item

    db = MatchingStore(database_url)
    engine, store = db.engine, db.store
    entries = [("a", ORIGINAL, NOON), ("b", UNRELATED, NOON + timedelta(minutes=5)), ("c", FOLLOW_UP, NOON)]
    items = [plain_item(key, *pair, at) for key, pair, at in entries]
    new = [
        NewItem(replaced(item, canonical_url=f"https://wire.example/{item.key}"), None)
        for item in items
        if isinstance(item, Item)
    ]
    with store.ingest() as tx:
        story = {key: kept.story_id for key, kept in tx.insert_items(1, new, NOON, "news.example.org").items()}
    assert len(set(story.values())) == 3
    a, b, c = story["a"], story["b"], story["c"]
    with store.ingest() as tx:
        tx.merge_stories([(a, b)])
    with store.ingest() as tx:
        tx.merge_stories([(b, c)])
    with engine.connect() as connection:
        rows = {int(row[0]): row[1] for row in connection.execute(text("select id, merged_into from stories"))}
        uids = {int(row[0]): str(row[1]) for row in connection.execute(text("select id, uid from stories"))}
        reasons: dict[str, str] = dict(connection.execute(text("select key, match_reason from items")).all())
    assert rows == {a: c, b: c, c: None}
    assert reasons["a"].count("later merged") == 2 and reasons["b"].count("later merged") == 1
    assert store.story_by_id(a) == store.story_by_id(b) == (c, uids[c])
    assert store.story_by_uid(uids[a]) == (c, uids[c])
    coverage = store.story_coverage(a)
    assert coverage is not None and coverage.merged_into == c and coverage.items == ()
    with store.ingest() as tx:  # a later copy at A's founding URL joins C
        assert tx.stories_by_url(["https://wire.example/a"]) == {"https://wire.example/a": c}
        assert tx.mergeable_stories([a, b, c]) == {c}
    engine.dispose()


def _check_match_lookups(tx: IngestTransaction, first: dict[str, NewItem]) -> dict[str, int]:
    """Story matching's reads, on the two first items (w1 and w2, two stories): their story ids by key."""
    rows = {key: tx.stored_items(1, [key])[key] for key in ("w1", "w2")}
    ids = {key: row.story_id for key, row in rows.items()}
    terms = sorted(Features.loads(first["w1"].match_features or "").terms)
    keys = [stories.name_key(t) for t in terms]
    found = tx.term_stories(keys, NOON - timedelta(days=1), NOON, 50)
    one = frozenset({ids["w1"]})
    assert terms and found == dict.fromkeys(keys, TermCarriers(one, one))  # each name: one story so far
    # Looked up over the window, counted only by a moment before the story's item: none yet.
    ahead = tx.term_stories(keys, NOON - timedelta(days=1), NOON, 50, until=NOON - timedelta(minutes=1))
    assert ahead == dict.fromkeys(keys, TermCarriers(one, frozenset()))
    assert tx.stories_in_window(NOON - timedelta(days=1), NOON + timedelta(hours=1)) == 2
    refs = tx.story_member_refs([ids["w1"], ids["w2"]], NOON - timedelta(days=1), 1)
    assert {story: [ref[0] for ref in found.members] for story, found in refs.items()} == {
        ids[key]: [row.id] for key, row in rows.items()
    }
    copy_keys = [k for k in first["w1"].match_keys if k < stories.NAME_KEY]
    window = (NOON - timedelta(days=1), NOON + timedelta(hours=1))
    bounded, stock = tx.copy_key_stories_bounded(copy_keys, *window, 20)
    assert copy_keys and set().union(*bounded.values()) == {ids["w1"]} and not stock
    # every key carried by more than none: stock, with no stories
    assert tx.copy_key_stories_bounded(copy_keys, *window, 0) == ({}, set(copy_keys))
    assert {ref[1] for found in refs.values() for ref in found.members} == {0}  # never updated
    ((item_id, _),) = refs[ids["w1"]].members
    assert refs[ids["w1"]].sources == {1}  # whose item it is: an outlet's own stories take only its copies
    assert refs[ids["w1"]].begins == NOON  # when: a story beginning long after a poll's items is not read
    ((sort_at, *stored),) = tx.member_features([item_id]).values()
    assert sort_at == NOON and stored == [first["w1"].match_features, first["w1"].match_signature]
    return ids


def test_a_profile_extended_by_new_members_is_the_profile_built_afresh() -> None:
    """A story that grows is judged on a profile carried over from its shorter one
    (``StoryProfile.extended``): centroid, name shares (with their order, which sums follow),
    rare-word shares and when it ends must be exactly those of the longer profile built afresh,
    and stay so when storage says it ends later (``ending``). Members are published out of
    order, as a backlog read late stores them, so the latest is not always the last."""
    stream = templated.generate(events_per_day=4, days=1)[:4]
    texts = [ORIGINAL, REWRITE, FOLLOW_UP, UNRELATED, *[(e.title, e.text) for e in stream]]
    members = [
        Member(n, NOON + timedelta(minutes=at), Features.loads(features_of(title, text)[0].dumps()))
        for n, ((title, text), at) in enumerate(zip(texts, (10, 5, 40, 20, 60, 30, 50, 45), strict=True))
    ]
    afresh = StoryProfile(1, tuple(members), NOON)
    assert afresh.word_support and afresh.lead_support != afresh.support  # every share is exercised
    assert afresh.ends_at == max(m.published_at for m in members) != members[-1].published_at
    for shorter in range(1, len(members)):
        start = StoryProfile(1, tuple(members[:shorter]), NOON)
        assert start.centroid.shape and start.support and start.lead_support is not None  # computed, carried
        assert start.ends_at == max(m.published_at for m in members[:shorter])  # computed, carried
        grown = start.extended(members[shorter:])
        assert grown.members == afresh.members and grown.ends_at == afresh.ends_at
        for last_at in (NOON + timedelta(hours=5), NOON):  # storage read a later member, or an earlier one
            assert grown.ending(last_at).ends_at == afresh.ending(last_at).ends_at
            assert start.ending(last_at).extended(members[shorter:]).ends_at == afresh.ending(last_at).ends_at
        assert np.array_equal(grown.centroid, afresh.centroid)
        for name in ("support", "lead_support", "word_support"):
            carried, built = getattr(grown, name), getattr(afresh, name)
            assert list(carried.items()) == list(built.items()), name


def test_a_packed_member_keeps_its_signature_as_bytes_and_gives_it_back() -> None:
    """A packed member keeps its lead signature's bytes, not their base64 text, whichever form
    it was given: the stored text, none (it packs the decoded one), or a text of another
    version (the decoded one again, not what that text says)."""
    decided, _ = features_of(*ORIGINAL)
    assert decided.signature is not None
    stored, text = decided.dumps(), decided.signature.dumps()
    older = "c0:" + text.partition(":")[2][::-1]
    for given in (text, None, older):
        member = stories.PackedMember(1, NOON, decided, stored, given)
        assert member.signature == decided.signature
        assert member._signature == decided.signature.packed()
        assert len(member._signature) < len(text)


def test_a_profile_of_packed_members_is_the_profile_of_decoded_ones() -> None:
    """The writer keeps stored members packed (``PackedMember``), from their stored forms as
    read back or from the features a new item was decided on: a profile built from them, or
    extended by them, must have exactly the centroid and shares (with their order, which sums
    follow) of one built from decoded members, and judge every item exactly alike, copies too."""
    stream = templated.generate(events_per_day=4, days=1)
    alone = [("Orbis Mining reports 6% rise in quarterly profit", ""), ("Orbis Mining profit up 6%", "")]
    texts = [ORIGINAL, REWRITE, FOLLOW_UP, UNRELATED, *[(e.title, e.text) for e in stream[:8]], *alone]
    full, packed = [], []
    for n, (title, body) in enumerate(texts):
        decided, _ = features_of(title, body)
        stored, signature = decided.dumps(), decided.signature.dumps() if decided.signature else None
        loaded = Features.loads(stored, decided.signature)
        at = NOON + timedelta(minutes=n)
        full.append(Member(n, at, loaded))
        from_row = storymatch._member(n, at, stored, signature)  # read back from storage
        assert from_row is not None
        packed.append(from_row if n % 2 else stories.PackedMember(n, at, loaded, stored, signature))
    assert any(m.features.leading is not None for m in full) and any(m.features.leading is None for m in full)
    items = [(feats((e.title, e.text)), e.published_at) for e in stream]
    items += [(feats(t), NOON + timedelta(hours=1)) for t in (ORIGINAL, REWRITE, FOLLOW_UP)]
    series = ("Orbis Mining reports 10% rise in quarterly profit", "")  # a lone headline, another figure
    items += [(feats(t), NOON + timedelta(hours=1)) for t in (*alone, series)]
    stats = TermStats(stories=3, counts={t: 2 for m in full[:3] for t in m.features.terms})
    one: list[Member | stories.PackedMember] = [*full[:3], *packed[:3]]
    for member in one:  # one member: its own vector and counts, as the sums give them
        single = StoryProfile(1, (member,), NOON)
        assert np.array_equal(single.total, np.sum([member.features.vector], axis=0, dtype=np.float32))
        each = (member.features.terms, member.features.lead_terms, member.features.words)
        assert [list(counted.items()) for counted in single.counts] == [list(Counter(iter(v)).items()) for v in each]
    judged = []
    for size in range(1, len(full) + 1):
        afresh = StoryProfile(1, tuple(full[:size]), NOON)
        built = StoryProfile(1, tuple(packed[:size]), NOON)
        grown = StoryProfile(1, tuple(packed[: size // 2 or 1]), NOON)
        assert grown.centroid.shape and grown.support is not None  # computed, to be carried over
        assert grown.signature(0) == (full[0].features.signature)  # decoded, to be carried over
        if size > 1:
            grown = grown.extended(packed[size // 2 or 1 : size])
        for profile in (built, grown):
            assert np.array_equal(profile.total, afresh.total) and np.array_equal(profile.centroid, afresh.centroid)
            for name in ("support", "lead_support", "word_support"):
                assert list(getattr(profile, name).items()) == list(getattr(afresh, name).items()), name
            assert profile.headline_figures == afresh.headline_figures
            for item, at in items:
                judged.append(stories.judge(item, at, afresh, stats))
                assert stories.judge(item, at, profile, stats) == judged[-1]
    assert any(j.copy_of is not None for j in judged) and any(j.joins for j in judged)  # both paths taken
    for lone in (full[-2:], packed[-2:]):  # a story of the two lone headlines, either way
        verdict = stories.judge(feats(series), NOON + timedelta(hours=1), StoryProfile(1, tuple(lone), NOON), stats)
        assert "figures differ" in verdict.why_not
