"""``decide_ingest`` is pure: plain items and stored rows in, a plan out — no database in most
of these tests. The last one checks the same rules end to end, through a real HTTP server,
the CLI and a SQLite file."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.cli import main
from aggregator.dedupe import MAX_UPDATES, decide_ingest
from aggregator.records import Item, StoredItem
from tests.conftest import write_config
from tests.feeds import rss2
from tests.server import FeedServer, Route

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _item(key: str, fingerprint: str = "f1", canonical_url: str | None = None) -> Item:
    return Item(
        key=key,
        guid=None,
        link=canonical_url,
        canonical_url=canonical_url,
        title=key,
        summary_html="",
        content_html="",
        text="",
        author=None,
        categories=(),
        published_at=NOW,
        updated_at=None,
        fingerprint=fingerprint,
    )


def _stored(key: str, fingerprint: str = "f1", *, id: int = 1, story: int = 10, updates: int = 0) -> StoredItem:
    return StoredItem(id=id, key=key, fingerprint=fingerprint, story_id=story, update_count=updates)


def test_an_unknown_key_is_new_and_starts_its_own_story() -> None:
    plan = decide_ingest([_item("id:a", canonical_url="https://example.com/a")], {}, {})
    assert [(n.item.key, n.story_id) for n in plan.inserts] == [("id:a", None)]
    assert plan.updates == () and plan.unchanged == 0 and plan.changed


def test_a_new_item_whose_url_another_source_carries_joins_that_story() -> None:
    plan = decide_ingest(
        [_item("id:a", canonical_url="https://example.com/a"), _item("id:b", canonical_url="https://example.com/b")],
        {},
        {"https://example.com/a": 42},
    )
    assert [(n.item.key, n.story_id) for n in plan.inserts] == [("id:a", 42), ("id:b", None)]


def test_an_item_without_a_canonical_url_never_joins_a_story_by_url() -> None:
    plan = decide_ingest([_item("hash:x")], {}, {"": 1})
    assert plan.inserts[0].story_id is None


def test_the_same_fingerprint_is_unchanged() -> None:
    plan = decide_ingest([_item("id:a", "f1")], {"id:a": _stored("id:a", "f1")}, {})
    assert (plan.inserts, plan.updates, plan.unchanged, plan.changed) == ((), (), 1, False)


def test_an_item_stored_under_its_former_key_is_that_item_and_is_rekeyed_only_when_unchanged() -> None:
    """``stored`` comes by the items' keys now (``poll.stored_by_item_key``); a row's own key
    says it was found under an item's former key."""
    former = "id:https://example.com/1"
    same, edited, fresh = _item("id:1", "f1"), _item("id:2", "f2"), _item("id:3")
    stored = {"id:1": _stored(former, "f1", id=7), "id:2": _stored("id:https://example.com/2", "f1", id=8)}
    plan = decide_ingest([same, edited, fresh], stored, {})
    # Found under the former key: not new. Unchanged, it is only re-keyed; changed, the update
    # writes its key with the rest.
    assert plan.rekeys == ((7, "id:1", None),) and plan.unchanged == 1
    assert [(u.stored.id, u.item.key) for u in plan.updates] == [(8, "id:2")]
    assert [n.item.key for n in plan.inserts] == ["id:3"]
    # Stored under its own key already: that row, never re-keyed.
    plan = decide_ingest([same], {"id:1": _stored("id:1", "f1", id=9)}, {})
    assert (plan.rekeys, plan.unchanged) == ((), 1)


def test_a_changed_fingerprint_is_an_update_of_the_stored_row_keeping_its_story() -> None:
    stored = _stored("id:a", "f1", id=7, story=99, updates=3)
    plan = decide_ingest(
        [_item("id:a", "f2", canonical_url="https://example.com/moved")],
        {"id:a": stored},
        {"https://example.com/moved": 5},
    )
    assert plan.inserts == ()
    assert [(u.stored, u.item.fingerprint) for u in plan.updates] == [(stored, "f2")]
    assert plan.updates[0].stored.story_id == 99  # a story never changes under an item


def test_updates_stop_counting_after_the_cap() -> None:
    """Counters and rotating ads change an item on every fetch: after MAX_UPDATES it is frozen."""
    last_allowed = decide_ingest([_item("id:a", "f2")], {"id:a": _stored("id:a", updates=MAX_UPDATES - 1)}, {})
    assert len(last_allowed.updates) == 1
    frozen = decide_ingest([_item("id:a", "f2")], {"id:a": _stored("id:a", updates=MAX_UPDATES)}, {})
    assert (frozen.updates, frozen.unchanged) == ((), 1)


def test_a_key_twice_in_one_batch_counts_once() -> None:
    first, second = _item("id:a", "f1"), _item("id:a", "f2")
    plan = decide_ingest([first, second], {}, {})
    assert [n.item for n in plan.inserts] == [first]
    plan = decide_ingest([second, first], {"id:a": _stored("id:a", "f1")}, {})
    assert [u.item for u in plan.updates] == [second] and plan.unchanged == 0


def test_items_missing_from_the_document_are_left_alone() -> None:
    stored = {"id:a": _stored("id:a"), "id:gone": _stored("id:gone", id=2)}
    plan = decide_ingest([_item("id:a")], stored, {})
    assert (plan.inserts, plan.updates, plan.unchanged) == ((), (), 1)


def test_a_mixed_document() -> None:
    items = [
        _item("id:new", canonical_url="https://example.com/new"),
        _item("id:edited", "f2"),
        _item("id:same", "f1"),
        _item("id:joins", canonical_url="https://other.example/story"),
    ]
    stored = {"id:edited": _stored("id:edited", "f1", id=1), "id:same": _stored("id:same", "f1", id=2)}
    plan = decide_ingest(items, stored, {"https://other.example/story": 3})
    assert [(n.item.key, n.story_id) for n in plan.inserts] == [("id:new", None), ("id:joins", 3)]
    assert [u.stored.id for u in plan.updates] == [1]
    assert plan.unchanged == 1


def test_decide_ingest_does_not_touch_its_inputs() -> None:
    items = [_item("id:a", "f2")]
    stored = {"id:a": _stored("id:a", "f1")}
    before = (list(items), dict(stored))
    decide_ingest(items, stored, {})
    assert (items, stored) == before


# --- the same rules through the real pipeline: HTTP server, CLI, SQLite file ----------------------
def _items(db: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select key, id, story_id, first_seen_at, changed_at, update_count, summary_html from items"
        )
        return {key: tuple(rest) for key, *rest in rows}


def test_an_edited_item_is_updated_in_place_and_a_repeated_one_is_not_duplicated(
    server: FeedServer, tmp_path: Path
) -> None:
    body = rss2(1, 5)
    url = server.add("/feed", Route(body=body))
    config = str(write_config(tmp_path, [{"name": "one", "url": url}]))
    db = tmp_path / "data" / "aggregator.db"
    assert main(["--config", config, "poll", "--once", "--all"]) == 0
    before = _items(db)
    assert len(before) == 5

    server.add("/feed", Route(body=body.replace(b"Story 2 of feed 1.", b"Story 2 of feed 1, corrected.")))
    assert main(["--config", config, "poll", "--once", "--all"]) == 0
    after = _items(db)
    assert after.keys() == before.keys()
    edited = [key for key in after if after[key] != before[key]]
    assert edited == ["id:https://news.example.com/feed1/story2"]
    item_id, story_id, first_seen, changed, updates, summary = after[edited[0]]
    assert (item_id, story_id, first_seen) == before[edited[0]][:3]
    assert changed > before[edited[0]][3] and updates == 1 and "corrected" in summary

    server.add("/feed", Route(body=rss2(1, 5, start=3)))  # items 3-7: 0-2 left the feed, 5-7 are new
    assert main(["--config", config, "poll", "--once", "--all"]) == 0
    final = _items(db)
    assert len(final) == 8 and before.keys() < final.keys()  # what left the feed stays stored
