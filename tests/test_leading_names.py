"""Leading names: the names and figures of the headline and the lead's opening say which event
an item reports, and name agreement is weighed on them. Background further down (an earlier
incident, a second spokesman) differs between independent reports and must not keep them apart;
an item whose opening names another event must still stay out."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from aggregator import names, semantic, stories
from aggregator.stories import Features, Member, StoryProfile, TermStats, decide, features_of

NOON = datetime(2026, 3, 3, 12, tzinfo=UTC)
OPENING = "A passenger ferry capsized on Lake Torvane near Ostrava Harbour on Sunday, the Kessel coastguard said."


def test_the_opening_names_come_first_and_are_counted() -> None:
    filler = " and then more words without names" * 12  # past names.LEADING_CHARS
    terms = names.extract("Ferry capsizes on Lake Torvane", f"{OPENING}{filler}. Later Mirel Dorsan spoke.")
    assert len(OPENING) + len(filler) > names.LEADING_CHARS
    assert terms.words[: terms.leading] == ("lake", "torvane", "ostrava", "harbour", "kessel")
    assert terms.words[terms.leading :] == ("mirel", "dorsan")
    assert terms.leading_keys == {names.term_key(w) for w in terms.words[: terms.leading]}
    short = names.extract("Ferry capsizes", OPENING)  # a lead shorter than the opening: all of it leads
    assert short.leading == len(short.words)


def test_a_figure_across_the_mark_is_read_whole_and_after_it() -> None:
    text = "x" * (names.LEADING_CHARS - 6) + " $3.41 billion in profit, Greystone said."
    terms = names.extract("Profit rises", text)
    assert "3410000000" in terms.words and "3.41" not in terms.words
    assert terms.leading is not None and terms.words.index("3410000000") >= terms.leading


def unit(*components: tuple[int, float]) -> semantic.Vector:
    vector = np.zeros(semantic.DIMENSIONS, dtype=np.float32)
    for index, value in components:
        vector[index] = value
    return vector / np.float32(np.linalg.norm(vector))


def item(opening: set[int], background: set[int], axis: int) -> Features:
    return Features(unit((0, 1), (axis, 0.6)), frozenset(opening | background), leading=frozenset(opening))


def test_other_background_does_not_keep_a_report_of_the_same_event_out() -> None:
    # Three opening names in common; each report then names five or six background names of its
    # own. Weighed over all names, fewer than half would be shared (3 of 8): "mostly differ".
    story = StoryProfile(1, (Member(1, NOON, item({1, 2, 3}, {11, 12, 13, 14, 15}, 1)),), NOON)
    report = item({1, 2, 3}, {21, 22, 23, 24, 25, 26}, 2)
    stats = TermStats(stories=0)  # a fresh stream: every term is rare, each weighs 1
    cosine = float(np.dot(report.vector, story.centroid))
    assert stories.WEAK_COSINE < cosine < stories.STRONG_COSINE
    assert 3 / 8 < stories.names_needed(cosine)[1] < 3 / 3  # the bar between the two ways of counting
    judged = decide(report, NOON + timedelta(hours=1), [story], stats)
    assert judged.story_id == 1, judged.explain()


def test_a_report_opening_with_other_names_stays_out_though_its_background_matches() -> None:
    # Its opening names another event, and its background recalls the story's ("hours after
    # ..."), naming two of the three names the story opens with and one of its background: names
    # enough in common. Named only there, the story's opening ones count for half
    # (``LATER_NAME_SHARE``): a third of its opening, short of the agreement this cosine needs;
    # and none of the report's own opening is in the story.
    story = StoryProfile(1, (Member(1, NOON, item({1, 2, 3}, {11, 12}, 1)),), NOON)
    development = item({31, 32}, {1, 2, 11, 41, 42, 43}, 2)
    cosine = float(np.dot(development.vector, story.centroid))
    assert stories.names_needed(cosine)[1] > stories.LATER_NAME_SHARE * 2 / 3
    decision = decide(development, NOON + timedelta(hours=1), [story], TermStats(stories=0))
    assert decision.story_id is None
    assert "mostly differ" in decision.near_misses[0].why_not


def test_a_report_sharing_far_more_names_than_it_needs_agrees_on_all_of_them() -> None:
    # Its opening names nothing of the event ("This story was updated at 11:25 p.m. EDT.": a
    # time and a time zone), and the story's opens with a quote's speaker and his agency, which
    # the report never names; further down both name the same six crew, craft and places. On
    # the openings alone neither side agrees with the other; with six rare names in common,
    # twice what even the weakest cosine asks, all its names are weighed, two thirds shared.
    story = StoryProfile(1, (Member(1, NOON, item({1, 2, 3}, {4, 5, 6, 7, 8, 9}, 1)),), NOON)
    updated = item({31, 32}, {4, 5, 6, 7, 8, 9, 41}, 2)
    stats = TermStats(stories=0)  # every term is rare, each weighs 1
    cosine = float(np.dot(updated.vector, story.centroid))
    needed, _ = stories.names_needed(cosine)
    assert stories.WHOLE_AGREEMENT_WEIGHT * needed <= 6
    joined = decide(updated, NOON + timedelta(hours=1), [story], stats)
    assert joined.story_id == 1, joined.explain()
    assert "agrees on all its names, not on its opening" in joined.explain()
    # Three of those names are enough weight for the cosine, but not twice: the openings
    # decide, and they name two different events.
    fewer = item({31, 32}, {4, 5, 6, 41, 42, 43}, 2)
    needed, _ = stories.names_needed(float(np.dot(fewer.vector, story.centroid)))
    assert stories.WHOLE_AGREEMENT_WEIGHT * needed > 3
    refused = decide(fewer, NOON + timedelta(hours=1), [story], stats)
    assert refused.story_id is None
    assert "mostly differ" in refused.near_misses[0].why_not
    # A report that agrees on its opening says nothing more.
    opening = decide(item({1, 2, 3}, {4, 5, 6, 41}, 2), NOON + timedelta(hours=1), [story], stats)
    assert opening.story_id == 1
    assert "all its names" not in opening.explain()


def test_an_opening_of_common_names_is_weighed_with_the_names_that_follow() -> None:
    # Look-alikes from one template on a busy week: both open with the same two countries,
    # which so many stories name that they weigh nothing; they share two rare names further
    # down (enough weight at this cosine) and differ in the rest. Agreeing with anything
    # because the openings are too plain to tell would merge them.
    stats = TermStats(stories=2000, counts={1: 500, 2: 500})
    assert stats.weight(1) == stats.weight(2) == 0.0
    story_item = Features(unit((0, 1), (1, 0.3)), frozenset({1, 2, 11, 12, 13, 14, 15, 16}), leading=frozenset({1, 2}))
    look_alike = Features(
        unit((0, 1), (2, 0.3)), frozenset({1, 2, 11, 12, 21, 22, 23, 24, 25}), leading=frozenset({1, 2})
    )
    story = StoryProfile(1, (Member(1, NOON, story_item),), NOON)
    decision = decide(look_alike, NOON + timedelta(hours=1), [story], stats)
    assert decision.story_id is None
    (miss,) = decision.near_misses
    assert (
        miss.cosine is not None
        and miss.cosine > stories.STRONG_COSINE
        and miss.name_weight >= stories.STRONG_NAME_WEIGHT
    )
    assert "mostly differ" in miss.why_not


def test_leading_names_survive_storage_and_older_features_lead_with_all() -> None:
    features, _ = features_of("Ferry capsizes on Lake Torvane", f"{OPENING} {'Words without names. ' * 20}Mirel Dorsan")
    assert features.leading is not None and features.leading < features.terms
    back = Features.loads(features.dumps())
    assert (back.terms, back.leading, back.words) == (features.terms, features.leading, features.words)
    # "s3" (before datelines were read apart) and "s4" (before a lone headline's names were
    # kept) have the same layout, without the count of those names.
    raw = base64.b64decode(features.dumps().partition(":")[2])
    without = base64.b64encode(raw[: semantic.DIMENSIONS + 4] + raw[semantic.DIMENSIONS + 6 :]).decode("ascii")
    for version in ("s3", "s4"):
        older_layout = Features.loads(f"{version}:{without}")
        assert (older_layout.terms, older_layout.leading, older_layout.words) == (
            features.terms, features.leading, features.words,
        )  # fmt: skip
        assert older_layout.headline is None
    alone, _ = features_of("Kalmaria central bank raises key rate to 2.5%", "")
    assert alone.headline and Features.loads(alone.dumps()).headline == alone.headline
    # "s5" (before a weekday was no name), "s6" (before names lost their marks) and "s7"
    # (before a people's name was its country's) have the layout of this release: still read, in full.
    for version in ("s5", "s6", "s7"):
        same = Features.loads(f"{version}:" + alone.dumps().partition(":")[2])
        assert (same.terms, same.leading, same.words, same.headline) == (
            alone.terms, alone.leading, alone.words, alone.headline,
        )  # fmt: skip
    assert features.headline == frozenset()  # a headline with a text: its names are not kept apart
    # Stored by the previous release ("s2": no count of leading terms): every term leads.
    s2 = semantic.quantise(features.vector) + len(features.terms).to_bytes(2, "big")
    s2 += b"".join(t.to_bytes(4, "big") for t in sorted(features.terms)) + (0).to_bytes(2, "big")
    older = Features.loads("s2:" + base64.b64encode(s2).decode("ascii"))
    assert older.terms == features.terms and older.leading is None and older.lead_terms == older.terms
    with pytest.raises(ValueError):
        Features.loads(features.dumps()[:300])


def test_a_datelines_place_and_date_follow_the_opening_and_its_credit_is_no_name() -> None:
    terms = names.extract(
        "ECB keeps rates on hold",
        "FRANKFURT, April 11 (Reuters) - The European Central Bank left rates unchanged on Thursday.",
    )
    assert terms.words[: terms.leading] == ("ecb", "european", "central", "bank")
    assert terms.words[terms.leading :] == ("frankfurt", "april", "11")  # where and when it was filed
    assert "reuters" not in terms.words  # who filed it: every item of that agency says so
    # A place the opening names as well is the event's: it leads.
    athens = names.extract("Wildfire forces evacuations", "ATHENS (AP) — Residents fled north of Athens on Monday.")
    assert athens.words[: athens.leading] == ("athens",) and "ap" not in athens.words
    # Without a credit in brackets, capitals opening a text are no dateline: they lead.
    plain = names.extract("Quake", "NORTHERN JAPAN was shaken on Monday.")
    assert plain.words[: plain.leading] == ("northern", "japan")


def test_two_companies_results_filed_from_one_desk_stay_apart() -> None:
    # One agency's desk files both banks' results under the same dateline: the place, date and
    # credit they share say nothing about which bank reported.
    dateline = "NEW YORK, July 16 (Reuters) - "
    greystone = features_of(
        "Greystone Bank second-quarter profit rises 12% on trading boost",
        f"{dateline}Greystone Bank reported a 12% rise in second-quarter profit on Tuesday, beating "
        "analysts' estimates as a rebound in dealmaking lifted fees.",
    )[0]
    harlow = features_of(
        "Harlow Financial second-quarter profit falls 5% as loan losses climb",
        f"{dateline}Harlow Financial reported a 5% fall in second-quarter profit on Tuesday, missing "
        "analysts' estimates as higher provisions for soured loans weighed.",
    )[0]
    story = StoryProfile(1, (Member(1, NOON, greystone),), NOON)
    decision = decide(harlow, NOON + timedelta(minutes=30), [story], TermStats(stories=0))
    assert decision.story_id is None, decision.explain()
