"""The parse pool's unit of work: signatures are remembered, and a remembered one is exact."""

from __future__ import annotations

import pytest

from aggregator import cluster, names, parseworker

LEAD = "Rescue teams reached the flooded villages on Tuesday after the river broke its banks, officials said."


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parseworker, "_remembered", {})


def test_a_remembered_signature_is_the_one_that_would_be_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    first = parseworker.sign("Floods cut off villages in the north", LEAD)
    fresh = cluster.Signed.of("Floods cut off villages in the north", LEAD)

    def must_not_sign(_title: str, _text: str) -> cluster.Signed:
        raise AssertionError("signed again")

    monkeypatch.setattr(cluster.Signed, "of", must_not_sign)
    again = parseworker.sign("Floods cut off villages in the north", LEAD)
    assert again == first == fresh
    assert again.signature == fresh.signature and again.keys == tuple(cluster.band_keys(fresh.signature))


def test_title_and_text_both_count() -> None:
    # (Headlines count only with five words or more that are not stopwords.)
    one = parseworker.sign("Floods cut off mountain villages across northern province", LEAD)
    assert parseworker.sign("Rescuers reach flooded mountain villages after landslides", LEAD) != one
    assert parseworker.sign("Floods cut off mountain villages across northern province", LEAD + " Rain due.") != one
    # The separator keeps (title, text) pairs apart that would otherwise run together.
    assert parseworker.sign("a b", "c d e f") == cluster.Signed.of("a b", "c d e f")
    assert parseworker.sign("a", "b c d e f") == cluster.Signed.of("a", "b c d e f")


def test_the_cache_is_bounded_and_forgets_the_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parseworker, "SIGNED_CACHE_SIZE", 3)
    titles = [f"Headline number {n} about the floods" for n in range(5)]
    for title in titles:
        parseworker.sign(title, LEAD)
    assert len(parseworker._remembered) == 3
    assert parseworker.remembered() == (3, 3)  # what the soak prints: full, at its bound
    calls: list[str] = []
    real = cluster.Signed.of

    def counting(title: str, text: str) -> cluster.Signed:
        calls.append(title)
        return real(title, text)

    monkeypatch.setattr(cluster.Signed, "of", counting)
    parseworker.sign(titles[4], LEAD)  # among the newest: remembered
    parseworker.sign(titles[0], LEAD)  # the oldest: forgotten, signed again
    assert calls == [titles[0]]


def test_parsed_items_cross_to_the_writer_unchanged() -> None:
    import dataclasses
    import pickle
    from datetime import UTC, datetime

    from aggregator.records import Enclosure, Item

    item = Item(
        key="id:1", guid="1", link="https://x.example/a", canonical_url="https://x.example/a", title="T",
        summary_html="<p>s</p>", content_html="<p>c</p>", text="c", author="Ann", categories=("a", "b"),
        published_at=datetime(2026, 11, 26, tzinfo=UTC), updated_at=None, fingerprint="f", language="en",
        enclosures=(Enclosure("https://x.example/a.mp3", "audio/mpeg", 10),),
    )  # fmt: skip
    copy: Item = pickle.loads(pickle.dumps(item))
    assert copy == item and hash(copy) == hash(item)
    assert dataclasses.asdict(copy) == dataclasses.asdict(item)
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.title = "changed"  # type: ignore[misc]
    feed, signed = parseworker.parse_and_sign(
        b"<rss version='2.0'><channel><title>F</title><item><title>One</title><guid>g1</guid>"
        b"<description>&lt;b&gt;Body&lt;/b&gt; text</description></item></channel></rss>",
        "https://x.example/feed", "application/rss+xml", datetime(2026, 11, 26, tzinfo=UTC),
    )  # fmt: skip
    assert pickle.loads(pickle.dumps((feed, signed))) == (feed, signed)


@pytest.mark.parametrize("signed_first", [True, False])
def test_remembered_features_and_signature_are_the_computed_ones_in_either_order(
    monkeypatch: pytest.MonkeyPatch, signed_first: bool
) -> None:
    title, text = "Grain corridor agreed in Istanbul", "Ministers from Ankara and Kyiv agreed a grain corridor. " + LEAD
    fresh_features = parseworker.featurize(title, text)
    fresh_signed = cluster.Signed.of(title, text)
    monkeypatch.setattr(parseworker, "_remembered", {})
    if signed_first:
        parseworker.sign(title, text)
        parseworker.featurize(title, text)
    else:
        parseworker.featurize(title, text)
        parseworker.sign(title, text)
    assert len(parseworker._remembered) == 1

    def must_not_compute(*_args: object) -> object:
        raise AssertionError("computed again")

    monkeypatch.setattr(cluster.Signed, "of", must_not_compute)
    monkeypatch.setattr(names, "extract", must_not_compute)
    assert parseworker.featurize(title, text) == fresh_features
    assert fresh_features[1]  # it has words to remember
    assert parseworker.sign(title, text) == fresh_signed


def test_words_that_cannot_be_packed_are_computed_again_not_garbled(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = ("Ankara", "a\0b")

    def extract(_title: str, _text: str, _plain: object = None) -> object:
        return names.Terms(words=odd)

    monkeypatch.setattr(names, "extract", extract)
    assert parseworker.featurize("T", "x")[1] == odd
    assert parseworker.featurize("T", "x")[1] == odd  # not remembered: computed again, the same


def test_a_remembered_item_takes_the_bytes_its_base64_stands_for_not_the_text() -> None:
    title, text = "Grain corridor agreed in Istanbul", "Ministers from Ankara and Kyiv agreed a grain corridor. " + LEAD
    signed = parseworker.sign(title, text)
    features, words = parseworker.featurize(title, text)
    (packed,) = parseworker._remembered.values()
    as_text = len(signed.stored) + len(features) + len("\0".join(words).encode())
    # base64 spends 4 characters on 3 bytes: the two forms shrink by a quarter, less a header.
    assert len(packed) < as_text - (len(signed.stored) + len(features)) // 5
    assert parseworker._recall(parseworker._digest(title, text)) == (signed.stored, (features, words))


@pytest.mark.parametrize("codec", [parseworker.SIGNATURE_BASE64, parseworker.FEATURES_BASE64])
@pytest.mark.parametrize(
    "form",
    ["c1:QUJD", "s5:QUI=", "c1:QUI", "s5:", "c1:QUI==", "s5:QU!J", "no version", ":QUJD", "v-1:QUJD", "s5:QUJD:QUJD"],
)
def test_any_stored_form_comes_back_as_it_was_remembered(codec: parseworker.Codec, form: str) -> None:
    # Forms the codec would not write from their bytes (padding it leaves out or adds, text that
    # is not base64) are kept as text; the rest as bytes. Either way the same text comes back.
    assert parseworker._expand(parseworker._compact(form, codec), codec) == form
