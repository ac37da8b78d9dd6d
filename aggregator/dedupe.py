"""The ingest decision: is each fetched item new, an update, or already stored?

``decide_ingest`` is pure — it sees the normalized items of one document, the stored
items with the same keys, and the stories already known for their canonical URLs —
so every rule here is unit-tested without a database.

Rules:

* an item whose key is not stored for this source is new; if another source already
  carries the same canonical URL it joins that story (one story, many outlets);
* a stored item whose fingerprint changed is an update, kept in place: it keeps its
  first-seen time and its story, so output ids never churn;
* a feed that changes an item on every fetch (view counters, rotating ads) would
  rewrite it forever: after ``MAX_UPDATES`` updates the item is frozen;
* a key seen twice in one batch counts once (the first wins): ``normalize`` already
  guarantees it, but two inserts with one key would make the store drop one silently;
* ``stored`` is by the key each item has now, also for an item the store holds under its
  former key (``poll.stored_by_item_key``): unchanged, such an item is only re-keyed, so that it
  is found under its own key from then on, wherever the feed moves.

An item that vanishes from its feed is simply not in ``items``: nothing here deletes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aggregator.records import IngestPlan, Item, ItemUpdate, NewItem, StoredItem

MAX_UPDATES = 25


def decide_ingest(
    items: Iterable[Item],
    stored: Mapping[str, StoredItem],
    stories_by_url: Mapping[str, int],
) -> IngestPlan:
    """Return the plan for one document; each new item carries the stored story it joins."""
    inserts: list[NewItem] = []
    updates: list[ItemUpdate] = []
    unchanged = 0
    rekeys: list[tuple[int, str, str | None]] = []
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            continue
        seen.add(item.key)
        existing = stored.get(item.key)
        if existing is None:
            story = stories_by_url.get(item.canonical_url) if item.canonical_url else None
            inserts.append(NewItem(item, story))
        elif existing.fingerprint != item.fingerprint and existing.update_count < MAX_UPDATES:
            updates.append(ItemUpdate(existing, item))
        else:
            unchanged += 1
            if existing.key != item.key:
                rekeys.append((existing.id, item.key, item.guid))
    return IngestPlan(tuple(inserts), tuple(updates), unchanged, rekeys=tuple(rekeys))
