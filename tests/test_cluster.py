"""Story clustering: copies cluster, look-alike stories stay apart, signatures survive storage.

Items come from the labelled evaluation set in ``tests/data/stories`` (the same data
``bench/dedup.py`` scores), so each case below is a realistic pair, named by its id.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from aggregator import cluster
from aggregator.cluster import RecentItem, Signature, band_keys, match, same_story, signature
from aggregator.normalize import canonical_url, plain_text

ROOT = Path(__file__).resolve().parent.parent


@cache
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dedup", ROOT / "bench" / "dedup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@cache
def items() -> dict[str, object]:
    return {item.id: item for item in bench().load_all()}


def sig(item_id: str) -> Signature:
    item = items()[item_id]
    return signature(item.title, plain_text(item.summary))  # type: ignore[attr-defined]


def apart(a: str, b: str) -> timedelta:
    return items()[a].published_at - items()[b].published_at  # type: ignore[attr-defined, no-any-return]


WHEN = datetime(2024, 3, 12, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("original", "copy"),
    [
        ("hok-01", "hok-02"),  # new headline, dateline dropped, a line added
        ("hok-01", "hok-03"),  # trimmed to two sentences
        ("hok-01", "hok-04"),  # US spelling, "on Tuesday" → "Tuesday", miles added
        ("ecb-01", "ecb-02"),  # "2%" → "2 per cent", "4.00%" → "4 per cent"
        ("ecb-01", "ecb-11"),  # the republisher wrote its own opening sentence
        ("fbl-01", "fbl-03"),  # cut to its first sentence
        ("fm-01", "fm-03"),  # "The post … appeared first on …" appended
        ("tr-01", "tr-04"),  # the wire's update: new death toll, new URL
        ("x-ern-01", "x-ern-02"),  # full body with a byline, HTML paragraphs
    ],
)
def test_syndicated_copies_are_the_same_story(original: str, copy: str) -> None:
    evidence = same_story(sig(original), sig(copy), apart(copy, original))
    assert evidence is not None, cluster.compare(sig(original), sig(copy)).reason
    assert evidence.overlap >= cluster.MIN_OVERLAP


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("hok-01", "hok-09"),  # the aftershock a day later, same agency and phrasing
        ("hok-01", "hok-08"),  # live blog vs the single report
        ("hok-01", "hok-06"),  # the nuclear plant check after the same quake
        ("ecb-01", "ecb-05"),  # rate decision vs the press conference an hour later
        ("ecb-01", "ecb-07"),  # rate decision vs the currency's reaction
        ("mkt-01", "mkt-05"),  # Tuesday's and Wednesday's market report, one template
        ("fbl-01", "fbl-05"),  # men's and women's match between the same clubs that day
        ("wf-01", "wf-05"),  # two wildfires in Greece on the same day
        ("el-01", "el-04"),  # exit poll vs results the next morning
        ("tn-01", "tn-04"),  # the two semi-finals of one day
        ("x-cy-04", "x-cy-06"),  # Tour stage 8 vs stage 9: template phrases, different day
        ("x-ern-01", "x-ern-05"),  # two banks' results, one template, different figures
        ("sh-01", "sh-04"),  # two shootings in one city on one day
    ],
)
def test_hard_negatives_stay_apart(one: str, other: str) -> None:
    assert same_story(sig(one), sig(other), apart(one, other)) is None


def test_different_weekday_vetoes_an_otherwise_identical_template() -> None:
    tuesday = signature("Stocks", "Stocks edged higher on Wall Street on Tuesday as investors waited for data.")
    wednesday = signature("Stocks", "Stocks edged higher on Wall Street on Wednesday as investors waited for data.")
    evidence = cluster.compare(tuesday, wednesday)
    assert evidence.other_day and evidence.overlap >= cluster.MIN_OVERLAP
    assert same_story(tuesday, wednesday) is None
    assert same_story(tuesday, tuesday) is not None


def test_disagreeing_figures_raise_the_bar_without_vetoing_updates() -> None:
    template = cluster.compare(sig("x-ern-01"), sig("x-ern-05"))
    assert template.numbers_differ and not template.text_match
    first = signature(
        "Train collision in India",
        "At least 12 people were killed and 40 injured on Monday when a goods train rammed into the back of a "
        "stationary passenger express near Rangapani in West Bengal, officials said. Two coaches derailed.",
    )
    update = signature(
        "Toll rises in Indian train collision",
        "At least 17 people were killed and 65 injured on Monday when a goods train rammed into the back of a "
        "stationary passenger express near Rangapani in West Bengal, officials said. Three coaches derailed.",
    )
    evidence = cluster.compare(first, update)
    assert evidence.numbers_differ and evidence.text_match


def test_title_only_item_joins_by_its_headline_but_only_within_hours() -> None:
    wire, headline_only = sig("x-rs-01"), sig("x-rs-03")
    assert not headline_only.lead & wire.lead  # nothing but the headline in common
    assert same_story(wire, headline_only, timedelta(hours=1)) is not None
    assert same_story(wire, headline_only, cluster.HEADLINE_WINDOW + timedelta(minutes=1)) is None


def test_short_headlines_are_not_evidence() -> None:
    assert signature("Live updates", "").headline == 0
    assert same_story(signature("Stocks rise", ""), signature("Stocks rise", "")) is None


def test_match_respects_the_time_window() -> None:
    stored = [RecentItem(story_id=7, item_id=70, published_at=WHEN, signature=sig("hok-01"))]
    copy = sig("hok-02")
    inside = match(copy, WHEN + cluster.DEFAULT_WINDOW - timedelta(minutes=1), stored)
    assert inside is not None and inside.story_id == 7
    assert match(copy, WHEN + cluster.DEFAULT_WINDOW + timedelta(minutes=1), stored) is None
    assert match(copy, WHEN - cluster.DEFAULT_WINDOW - timedelta(minutes=1), stored) is None
    assert match(copy, WHEN + timedelta(hours=3), stored, window=timedelta(hours=2)) is None


def test_match_returns_none_for_a_new_story() -> None:
    stored = [RecentItem(1, 10, WHEN, sig("hok-09")), RecentItem(2, 20, WHEN, sig("hok-06"))]
    assert match(sig("hok-01"), WHEN, stored) is None


def test_match_prefers_the_best_evidence_whatever_the_candidate_order() -> None:
    new = sig("hok-03")  # trimmed copy: contained in both stored versions below
    stored = [
        RecentItem(1, 10, WHEN, sig("hok-05")),  # the rewrite: weaker overlap
        RecentItem(2, 20, WHEN + timedelta(minutes=5), sig("hok-01")),  # the wire original
        RecentItem(3, 30, WHEN, sig("hok-09")),  # the aftershock: not a candidate story
    ]
    results = set()
    for seed in range(6):
        shuffled = stored[:]
        random.Random(seed).shuffle(shuffled)
        results.add(match(new, WHEN + timedelta(hours=1), shuffled))
    assert len(results) == 1
    (found,) = results
    assert found is not None and found.story_id == 2 and found.item_id == 20
    assert "lead overlap 1.00" in found.reason


def test_ties_go_to_the_earliest_item() -> None:
    same = sig("hok-01")
    stored = [RecentItem(9, 90, WHEN + timedelta(hours=1), same), RecentItem(4, 40, WHEN, same)]
    found = match(same, WHEN + timedelta(hours=2), stored)
    assert found is not None and (found.story_id, found.item_id) == (4, 40)


def test_signature_round_trips_through_its_stored_form() -> None:
    for item_id in items():
        original = sig(item_id)
        stored = original.dumps()
        assert stored.isascii() and stored.startswith(f"{cluster.SIGNATURE_VERSION}:")
        assert len(stored) < 600, item_id
        assert Signature.loads(stored) == original
        assert band_keys(Signature.loads(stored)) == band_keys(original)


def test_signed_crosses_processes_as_its_stored_form() -> None:
    # A parse worker sends Signed to the writer: only the stored form and the keys travel,
    # and the signature decoded on the other side is the one the worker computed.
    item = items()["hok-01"]
    signed = cluster.Signed.of(item.title, plain_text(item.summary))  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(signed))
    assert (copy.stored, copy.keys) == (signed.stored, tuple(band_keys(signed.signature)))
    assert copy == signed and copy.signature == signed.signature
    assert b"frozenset" not in pickle.dumps(signed)
    back = cluster.Signed.from_stored(signed.stored)
    assert back == signed and back.signature == signed.signature


@pytest.mark.parametrize("stored", ["c0:AAAAAA", "nonsense", "c1:", "c1:AAAA", "c1:AAAAAAAAAAE", "c1:!!!!"])
def test_loads_rejects_other_versions_and_corrupt_values(stored: str) -> None:
    with pytest.raises(ValueError):
        Signature.loads(stored)


def test_signatures_do_not_depend_on_the_process() -> None:
    # Python's own hash() is salted per process: a stored signature must not be.
    ids = ["hok-01", "mkt-05", "x-ern-02"]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/bench');"
        "import dedup; from aggregator import cluster; from aggregator.normalize import plain_text;"
        "by_id = {i.id: i for i in dedup.load_all()};"
        "print(' '.join(cluster.signature(by_id[k].title, plain_text(by_id[k].summary)).dumps() for k in sys.argv[2:]))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(ROOT), *ids], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == [sig(i).dumps() for i in ids]


def test_copies_share_a_band_key_and_keys_are_bounded() -> None:
    for one, other in [("hok-01", "hok-03"), ("ecb-01", "ecb-04"), ("x-rs-01", "x-rs-03")]:
        assert set(band_keys(sig(one))) & set(band_keys(sig(other))), (one, other)
    keys = band_keys(sig("x-ern-02"))
    assert len(keys) == cluster.KEY_COUNT + 1 and len(set(keys)) == len(keys)
    # Phrase keys are 32-bit hashes; the headline's is offset past them, so the two never meet.
    assert all(0 <= k < 1 << 32 for k in keys[:-1]) and 1 << 32 <= keys[-1] < 1 << 33


def test_dateline_and_feed_boilerplate_do_not_count() -> None:
    body = "A magnitude 6.8 earthquake struck off the eastern coast of Hokkaido on Tuesday morning, shaking buildings."
    plain = signature("Quake", body)
    assert signature("Quake", f"SAPPORO, Japan (MP) — {body}").lead == plain.lead
    assert signature("Quake", f"{body} The post Quake appeared first on Riverside Daily.").lead == plain.lead
    assert signature("Quake", f"{body} (Reporting by Ana Staff; Editing by Jo Bloggs)").lead == plain.lead


def test_only_the_lead_counts() -> None:
    lead = " ".join(f"word{i}" for i in range(cluster.LEAD_WORDS))
    assert signature("t", lead).lead == signature("t", lead + " and then a very different tail").lead


def test_evaluation_set_is_well_formed() -> None:
    data = bench().load_all()
    stories: dict[str, set[str]] = {}
    for item in data:
        stories.setdefault(item.story, set()).add(item.outlet)
        assert item.published_at.tzinfo is not None
        assert canonical_url(item.url), item.id
    assert len(data) >= 150 and len(stories) >= 50
    assert len({item.id for item in data}) == len(data)
    assert all(len(outlets) >= 2 for outlets in stories.values() if len(outlets) > 1)
    multi = [s for s, outlets in stories.items() if len(outlets) >= 2]
    assert len(multi) >= 0.9 * len(stories)  # nearly every story is carried by several outlets
    topics: dict[str, set[str]] = {}
    for item in data:
        topics.setdefault(item.topic, set()).add(item.story)
    hard_negative_stories = sum(len(s) for s in topics.values() if len(s) > 1)
    assert hard_negative_stories >= 30


def test_evaluation_precision_and_recall_floors() -> None:
    # The exact figures are printed by bench/dedup.py; these floors sit a little below the
    # targets (precision 0.98, recall 0.90) so a regression fails here first.
    scores = bench().evaluate(bench().load_all())
    assert scores.precision >= 0.95, scores.merged
    assert scores.recall >= 0.85, scores.split
    assert scores.candidate_misses <= 2  # the indexed key lookup finds what a full scan would


def test_phrase_hashes_are_the_stored_definition() -> None:
    # Stored signatures and match keys hold these values: 32-bit big-endian BLAKE2b of each
    # 3-word phrase. However the hashing is done, it must give exactly these.
    from hashlib import blake2b

    words = ["kilometer", "armored", "canceled", "wire", "copy", "republisher", "reader", "spelling"]
    expected = {
        int.from_bytes(blake2b(" ".join(words[i : i + 3]).encode(), digest_size=4).digest(), "big")
        for i in range(len(words) - 2)
    }
    assert cluster._phrases(words) == expected
    assert cluster._hash("two words") == int.from_bytes(blake2b(b"two words", digest_size=4).digest(), "big")
