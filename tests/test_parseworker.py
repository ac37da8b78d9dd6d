"""The parse pool's unit of work: what it prepares for story matching, and what it leaves out
because the writer stored it as it is."""

from __future__ import annotations

import asyncio
import pickle
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import select

from aggregator import cluster, names, parseworker, stories
from aggregator.config import load_config
from aggregator.fetch import Fetcher
from aggregator.pipeline import Pipeline, fetch_options
from aggregator.records import ParsedFeed
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.models import ItemRow
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.server import FeedServer, Route

LEAD = "Rescue teams reached the flooded villages on Tuesday after the river broke its banks, officials said."
FETCHED = datetime(2026, 11, 26, tzinfo=UTC)
STORIES = {
    "g1": ("Floods cut off villages in the north", LEAD),
    "g2": ("Grain corridor agreed in Istanbul", "Ministers from Ankara and Kyiv agreed a grain corridor. " + LEAD),
    "g3": ("Orbis Mining profit up 6%", "Orbis Mining said on Tuesday its profit rose 6% in the third quarter."),
}


def feed(entries: dict[str, tuple[str, str]]) -> bytes:
    items = "".join(
        f"<item><title>{escape(title)}</title><guid isPermaLink='false'>{guid}</guid>"
        f"<link>https://news.example.com/{guid}</link><description>{escape(text)}</description>"
        "<pubDate>Thu, 26 Nov 2026 08:00:00 +0000</pubDate></item>"
        for guid, (title, text) in entries.items()
    )
    return f"<rss version='2.0'><channel><title>F</title>{items}</channel></rss>".encode()


Prepared = tuple[ParsedFeed, dict[str, cluster.Signed], dict[str, parseworker.Featurized]]


def prepare(body: bytes, known: parseworker.Marks = b"") -> Prepared:
    return parseworker.parse_and_prepare(body, "https://news.example.com/feed", None, FETCHED, True, known)


def test_every_item_is_signed_and_featurized_as_computed_on_its_own() -> None:
    parsed, signatures, features = prepare(feed(STORIES))
    items = parsed.items
    assert len(items) == 3 and set(signatures) == set(features) == {item.key for item in items}
    for item in items:
        assert signatures[item.key] == cluster.Signed.of(item.title, item.text)
        assert features[item.key] == parseworker.featurize(item.title, parseworker.feature_text(item))
    assert stories.Features.loads(features[items[1].key][0]).terms  # names found: not an empty result


def test_a_paragraph_opens_a_sentence_for_the_names_though_the_feed_ended_the_last_with_no_full_stop() -> None:
    # A standfirst run into the article, as the Guardian's feed writes its summaries: with the
    # blocks joined by spaces, "The" and "Officials" stood inside a sentence, capitalised: names.
    summary = (
        "<p>On a two-day visit, reporters in Trostianets found evidence of looting </p>"
        "<p>The tanks rolled into the town in the first hours of the invasion</p>"
        "<ul><li>Officials said\nthe mayor, Yuriy Bova, stayed</li></ul>"
    )
    body = (
        "<rss version='2.0'><channel><title>F</title><item><title>Troops leave their mark on Trostianets</title>"
        f"<guid>t1</guid><description>{escape(summary)}</description>"
        "<pubDate>Thu, 26 Nov 2026 08:00:00 +0000</pubDate></item></channel></rss>"
    ).encode()
    parsed, _, features = prepare(body)
    item = parsed.items[0]
    assert "looting The tanks" in item.text  # what is stored and searched stays as it was
    _, words = features[item.key]
    assert "the" not in words and "officials" not in words
    assert {"trostianets", "yuriy", "bova"} <= set(words)  # a source line break is no paragraph
    assert features[item.key] == parseworker.featurize(item.title, parseworker.feature_text(item))


def test_items_the_writer_stored_as_they_are_are_not_prepared_again() -> None:
    parsed, _, _ = prepare(feed(STORIES))
    items = parsed.items
    known = parseworker.marks_of(items[:2])
    assert len(known) == 16  # eight bytes an item

    again, signatures, features = prepare(feed(STORIES), known)
    assert again == parsed  # the document itself is whole
    assert set(signatures) == set(features) == {items[2].key}

    # The same key with other content is another mark: an edited item is prepared again.
    edited = {**STORIES, "g1": ("Floods cut off villages in the north and east", LEAD)}
    changed, signatures, features = prepare(feed(edited), known)
    first = changed.items[0]
    assert first.key == items[0].key and first.fingerprint != items[0].fingerprint
    assert set(signatures) == set(features) == {items[0].key, items[2].key}
    assert features[first.key] == parseworker.featurize(first.title, parseworker.feature_text(first))


def test_a_mark_is_the_key_and_the_fingerprint_together() -> None:
    assert parseworker.item_mark("k", "f") == parseworker.item_mark("k", "f")
    assert len({parseworker.item_mark(k, f) for k, f in [("k", "f"), ("k", "g"), ("j", "f"), ("k\0f", "")]}) == 4


def test_parsed_items_cross_to_the_writer_unchanged() -> None:
    import dataclasses

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
    prepared = prepare(feed(STORIES))
    assert pickle.loads(pickle.dumps(prepared)) == prepared


# --- through the pipeline: a real feed server, a real SQLite file ------------------------------


def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Titles featurized from here on (parse_workers is 0: in this process)."""
    seen: list[str] = []
    real = stories.features_of

    def counting(
        title: str, text: str, signed: bool = True, language: str | None = None
    ) -> tuple[stories.Features, names.Terms]:
        seen.append(title)
        return real(title, text, signed, language)

    monkeypatch.setattr(stories, "features_of", counting)
    return seen


def stored_features(store: Store) -> dict[str, tuple[str, str | None]]:
    with store.session() as s:
        rows = s.execute(select(ItemRow.guid, ItemRow.title, ItemRow.match_features)).all()
    return {str(guid): (title, features) for guid, title, features in rows}


def poll(pipelines: list[Pipeline], store: Store) -> None:
    """One poll of every source by each pipeline in turn, as workers taking turns would."""

    async def go() -> None:
        for pipeline in pipelines:
            store.make_all_due(datetime.now(UTC))
            async with Fetcher(fetch_options(pipeline.config)) as fetcher:
                await pipeline.poll_due(fetcher)

    asyncio.run(go())


@pytest.fixture
def one_feed(tmp_path: Path, server: FeedServer) -> tuple[Store, list[Pipeline]]:
    server.add("/feed", body=feed(STORIES))
    config = load_config(write_config(tmp_path, [{"name": "feed", "url": server.url("/feed")}])).config
    engine = make_engine(config.settings.database_url)
    ensure_schema(engine)
    store = Store(engine)
    store.sync_sources(config.source_specs(), datetime.now(UTC))
    # Two workers on one database; each keeps what it knows of the feed to itself.
    return store, [Pipeline(config, store, parse_pool=None) for _ in range(2)]


def test_a_changed_feed_prepares_only_its_new_and_edited_items(
    one_feed: tuple[Store, list[Pipeline]], server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, (worker, _) = one_feed
    seen = counted(monkeypatch)
    poll([worker], store)
    assert sorted(seen) == sorted(title for title, _ in STORIES.values())

    edited = ("Floods cut off villages in the north and east", LEAD)
    added = ("Kalmaria central bank raises key rate to 4%", "The central bank of Kalmaria raised its key rate.")
    server.routes["/feed"] = Route(body=feed({**STORIES, "g1": edited, "g4": added}))
    seen.clear()
    poll([worker], store)
    assert sorted(seen) == sorted([edited[0], added[0]])
    found = stored_features(store)
    assert found["g1"] == (edited[0], parseworker.featurize(*edited)[0])
    assert found["g4"] == (added[0], parseworker.featurize(*added)[0])
    assert found["g2"] == (STORIES["g2"][0], parseworker.featurize(*STORIES["g2"])[0])


def test_an_item_another_worker_changed_since_is_prepared_by_the_writer(
    one_feed: tuple[Store, list[Pipeline]], server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, (first, second) = one_feed
    poll([first], store)
    edited = ("Floods cut off villages in the north and east", LEAD)
    server.routes["/feed"] = Route(body=feed({**STORIES, "g1": edited}))
    poll([second], store)
    assert stored_features(store)["g1"] == (edited[0], parseworker.featurize(*edited)[0])

    # The feed takes the edit back. The first worker last saw g1 as it was: its parse leaves g1
    # out, but the store holds the edit, so g1 is an update, and the writer prepares it.
    server.routes["/feed"] = Route(body=feed({**STORIES, "g5": ("Second item", LEAD)}))
    seen = counted(monkeypatch)
    poll([first], store)
    assert sorted(seen) == sorted([STORIES["g1"][0], "Second item"])
    found = stored_features(store)
    assert found["g1"] == (STORIES["g1"][0], parseworker.featurize(*STORIES["g1"])[0])
    assert found["g5"][1] == parseworker.featurize("Second item", LEAD)[0]
