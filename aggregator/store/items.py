"""The ingest transaction: items, their stories and match keys, and the poll's source state.

``Store.ingest()`` opens the transaction in which fetch results are written, one or several
(group commit), never one split across two (DESIGN.md, decision 3): items, stories, the
source's new state and the fetch-log row commit together or not at all, so killing the
process at any instant leaves either the old state (the poll is simply redone) or the new
one. What to insert and update, and which story an item joins, arrives decided.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import BindParameter, Connection, bindparam, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from aggregator.records import InsertedItem, Item, ItemUpdate, NewItem, StoredItem
from aggregator.store._sql import ByValues, RawInsert, StoreBase, epoch, storage_error
from aggregator.store.matchkeys import StoryLookups
from aggregator.store.models import DeletedItemRow, ItemRow, MatchKeyRow, StoryRow
from aggregator.store.sources import SourcePollWrites, count_items
from aggregator.store.storyedits import StoryEdits

STORY_NAMESPACE = uuid.UUID("6f1c6b0e-5d0a-4d5e-9a57-5e7f1a0b2c3d")
_STORY_NAMESPACE_BYTES = STORY_NAMESPACE.bytes


def story_uid(key: str, authority: str, first_seen: datetime) -> str:
    """A tag: URI (RFC 4151), minted once per story and stored: it is the output entry id.

    Its last part is ``uuid.uuid5(STORY_NAMESPACE, key).hex``, computed here without
    building UUID objects (4 µs against 1 µs, once per new item of a first ingest).
    """
    digest = bytearray(hashlib.sha1(_STORY_NAMESPACE_BYTES + key.encode("utf-8")).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    return f"tag:{authority},{first_seen:%Y-%m-%d}:story/{digest.hex()}"


def story_authority(public_url: str) -> str:
    """The authority of the stories' ``tag:`` ids (``story_uid``): the host of the service's
    ``public_url``, lowercased."""
    return (urlsplit(public_url).hostname or "localhost").lower()


def story_key(source_id: int, item: Item) -> str:
    return f"url:{item.canonical_url}" if item.canonical_url else f"item:{source_id}:{item.key}"


# The statements of one poll, built once: constructing a select() on every call cost six
# times its execution (140 µs against 22 µs), and a first ingest runs ten per source.
_SOURCE: BindParameter[int] = bindparam("source_id")
_DELETED_KEYS = ByValues(
    lambda wanted: select(DeletedItemRow.key).where(DeletedItemRow.source_id == _SOURCE, wanted(DeletedItemRow.key))
)
_STORED_ITEMS = ByValues(
    lambda wanted: select(ItemRow.id, ItemRow.key, ItemRow.fingerprint, ItemRow.story_id, ItemRow.update_count).where(
        ItemRow.source_id == _SOURCE, wanted(ItemRow.key)
    )
)
# A merged story's founding URL and key lead to the story it became (``StoryRow.merged_into``).
_LIVE_STORY = func.coalesce(StoryRow.merged_into, StoryRow.id)
_STORIES_BY_URL = ByValues(
    lambda wanted: select(StoryRow.canonical_url, _LIVE_STORY).where(wanted(StoryRow.canonical_url))
)
_ITEM_STORIES_BY_URL = ByValues(
    lambda wanted: select(ItemRow.canonical_url, ItemRow.story_id).where(wanted(ItemRow.canonical_url))
)
_STORY_IDS = ByValues(lambda wanted: select(StoryRow.key, _LIVE_STORY).where(wanted(StoryRow.key)))
_ITEM_IDS = ByValues(
    lambda wanted: select(ItemRow.key, ItemRow.id).where(ItemRow.source_id == _SOURCE, wanted(ItemRow.key))
)


class IngestTransaction(StoryLookups, StoryEdits, SourcePollWrites):
    """Reads and writes for fetch results, all inside one database transaction: items and
    stories here, story matching's lookups (``StoryLookups``), the merges of stories and an
    editor's corrections (``StoryEdits``) and the polled source's new state
    (``SourcePollWrites``) from their modules."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._inserted: Counter[int] = Counter()
        """Items this transaction inserted, by source id, for ``count_inserted``."""

    def deleted_keys(self, source_id: int, keys: Sequence[str]) -> set[str]:
        """Keys retention removed from this source: they must not come back as new items."""
        found: set[str] = set()
        for statement, params in _DELETED_KEYS.batches(self.c.dialect.name, keys, source_id=source_id):
            found.update(self.c.scalars(statement, params))
        return found

    def stored_items(self, source_id: int, keys: Sequence[str]) -> dict[str, StoredItem]:
        found: dict[str, StoredItem] = {}
        for statement, params in _STORED_ITEMS.batches(self.c.dialect.name, keys, source_id=source_id):
            for r in self.c.execute(statement, params):
                found[r.key] = StoredItem(r.id, r.key, r.fingerprint, r.story_id, r.update_count)
        return found

    def stories_by_url(self, urls: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for query in (_STORIES_BY_URL, _ITEM_STORIES_BY_URL):
            for statement, params in query.batches(self.c.dialect.name, urls):
                for url, story_id in self.c.execute(statement, params):
                    if url is not None:
                        found.setdefault(url, story_id)
        return found

    def insert_items(
        self, source_id: int, new: Sequence[NewItem], now: datetime, authority: str, *, ages_unknown: bool = False
    ) -> dict[str, InsertedItem]:
        """Insert new items, creating a story for each that does not join an existing one;
        where each was stored, by item key. ``ages_unknown``: they are of an age nobody can
        tell, as ``poll.ages_unknown`` decided for the poll (whose items are then all undated).

        Rows go straight to the driver's executemany (``RawInsert``); one indexed query
        per table then finds their ids. The rows the insert really wrote are counted for the
        source (``count_inserted``): one whose key is stored already (another worker polled the
        source meanwhile, or the batch repeats a key) is skipped by the insert and not counted.
        """
        if not new:
            return {}
        story_ids = self._new_stories(source_id, new, now, authority)
        founders = _founders(new)
        rows = []
        for n in new:
            item = n.item
            story_id = n.story_id if n.story_id is not None else story_ids[story_key(source_id, founders(n))]
            rows.append(
                {
                    "source_id": source_id,
                    "story_id": story_id,
                    "match_signature": n.match_signature,
                    "match_features": n.match_features,
                    "match_reason": n.match_reason,
                    **_item_columns(item),
                    "sort_at": item.published_at or item.placed_at or now,
                    "first_seen_at": now,
                    "changed_at": now,
                    "update_count": 0,
                    "age_unknown": ages_unknown,
                }
            )
        self._inserted[source_id] += self._insert_rows(ItemRow, rows)
        item_ids = self._ids(_ITEM_IDS, [n.item.key for n in new], source_id=source_id)
        self._write_match_keys(
            [
                (item_ids[row["key"]], row["story_id"], n.item.published_at or now, n.match_keys)
                for n, row in zip(new, rows, strict=True)
                if row["key"] in item_ids
            ],
            replace=False,
        )
        return {
            row["key"]: InsertedItem(item_ids[row["key"]], row["story_id"], row["sort_at"])
            for row in rows
            if row["key"] in item_ids
        }

    def _new_stories(self, source_id: int, new: Sequence[NewItem], now: datetime, authority: str) -> dict[str, int]:
        """Create the stories of new items that join none; their ids by story key."""
        # Sorted: concurrent workers then take the unique-index locks in the same order
        # and cannot deadlock on each other's stories. By the key alone: new items sharing a
        # canonical URL (a link blog, a podcast linking its site) share one story key, and
        # Items do not compare. An item joining the new story of another item of the batch
        # (``NewItem.joins_new``) takes that item's story key instead of a story of its own.
        founders = _founders(new)
        needed = dict(
            sorted(
                ((story_key(source_id, founders(n)), founders(n)) for n in new if n.story_id is None),
                key=lambda p: p[0],
            )
        )
        if not needed:
            return {}
        story_rows = [
            {
                "uid": story_uid(key, authority, now),
                "key": key,
                "canonical_url": item.canonical_url,
                "first_seen_at": now,
                "updated_at": now,
            }
            for key, item in needed.items()
        ]
        self._insert_rows(StoryRow, story_rows)
        # Also finds a story another worker created meanwhile (ON CONFLICT skipped ours).
        return self._ids(_STORY_IDS, list(needed))

    def _write_match_keys(
        self, entries: Sequence[tuple[int, int, datetime, tuple[int, ...]]], *, replace: bool
    ) -> None:
        """Store items' story-matching keys, given as (item id, its story, sort time, keys).

        ``replace`` first drops an updated item's old keys (a fresh insert has none, and the
        DELETE was a measurable share of a first ingest). A first ingest writes about ten
        keys per item, so the rows go straight to the driver's executemany (``RawInsert``),
        each item's time converted once rather than once per key.
        """
        wanted = [(item_id, story_id, at, keys) for item_id, story_id, at, keys in entries if keys]
        if not wanted:
            return
        if replace:
            self.c.execute(delete(MatchKeyRow).where(MatchKeyRow.item_id.in_([item_id for item_id, *_ in wanted])))
        rows: list[tuple[int, int, int, int]] = []
        for item_id, story_id, at, keys in wanted:
            at_epoch = epoch(at)
            rows.extend((match_key, at_epoch, item_id, story_id) for match_key in dict.fromkeys(keys))
        RawInsert.of(self.c.dialect, MatchKeyRow, ("key", "sort_epoch", "item_id", "story_id")).run(self.c, rows)

    def update_items(self, updates: Sequence[ItemUpdate], now: datetime, source_id: int | None = None) -> int:
        if not updates:
            return 0
        changes = {
            u.stored.id: {
                **_item_columns(u.item),
                **({"match_signature": u.match_signature} if u.match_signature else {}),
                **({"match_features": u.match_features} if u.match_features else {}),
                "changed_at": now,
                "update_count": u.stored.update_count + 1,
            }
            for u in updates
        }
        self._update_rows(ItemRow, changes)
        keyed = [u for u in updates if u.match_keys] if source_id is not None else []
        if keyed:
            # Each item's story as it is now, read after its row was updated and so locked: a
            # merge by another worker may have moved it since the plan read it, and its keys
            # must name the story it is in (``StoryEdits._keys_follow`` says the other half).
            now_in = self.item_stories([u.stored.id for u in keyed])
            entries = [
                (u.stored.id, now_in.get(u.stored.id, u.stored.story_id), u.item.published_at or now, u.match_keys)
                for u in keyed
            ]
            self._write_match_keys(entries, replace=True)
        # The story's entry moves its `updated` only because its content did.
        self.c.execute(
            update(StoryRow).where(StoryRow.id.in_({u.stored.story_id for u in updates})).values(updated_at=now)
        )
        return len(updates)

    def rekey_items(self, rekeys: Sequence[tuple[int, str, str | None]]) -> None:
        """Store items under the keys and guids they have now, given as (item id, key, guid)
        (``IngestPlan.rekeys``)."""
        self._update_rows(ItemRow, {item_id: {"key": key, "guid": guid} for item_id, key, guid in rekeys})

    def count_inserted(self) -> None:
        """Add the items this transaction inserted to their sources' counts
        (``SourceRow.item_count``), as it is about to commit (``IngestStore.ingest``).

        Once per transaction rather than per ``insert_items``: one UPDATE per source however
        many of its polls a group commit holds, in the order of source ids (``count_items``).
        A poll's ``record_poll`` has updated its source's row already, so in the pipeline the
        row's lock is held by then and the count waits for nobody; a source not yet locked (a
        benchmark's or a test's inserts) is locked from here to the commit only.
        """
        count_items(self.c, self._inserted)
        self._inserted.clear()


class IngestStore(StoreBase):
    @contextmanager
    def ingest(self) -> Iterator[IngestTransaction]:
        """One transaction on a plain connection: no ORM session to set up and tear down, which
        was most of the cost of recording a 304 (a round of 1,000 of them is mostly this)."""
        try:
            with self.engine.begin() as connection:
                tx = IngestTransaction(connection)
                yield tx
                tx.count_inserted()
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc


def _item_columns(item: Item) -> dict[str, Any]:
    return {
        "key": item.key,
        "guid": item.guid,
        "link": item.link,
        "canonical_url": item.canonical_url,
        "title": item.title,
        "summary_html": item.summary_html,
        "content_html": item.content_html,
        "text": item.text,
        "author": item.author,
        "categories": list(item.categories),
        "enclosures": [
            {"url": e.url, "type": e.type, "length": e.length, **({"thumbnail": True} if e.thumbnail else {})}
            for e in item.enclosures
        ],
        "language": item.language,
        "published_at": item.published_at,
        "updated_at": item.updated_at,
        "fingerprint": item.fingerprint,
    }


def _founders(new: Sequence[NewItem]) -> Callable[[NewItem], Item]:
    """The item whose story each new item takes: the batch item it joins (``joins_new``), else itself."""
    batch = {n.item.key: n.item for n in new}

    def founder(n: NewItem) -> Item:
        return batch.get(n.joins_new, n.item) if n.joins_new is not None else n.item

    return founder
