"""``Store``, the one handle on storage: its parts live in the modules named after what they store.

``sources`` (the config's sources, leases, the schedule, health), ``items`` (the ingest
transaction: items, stories, match keys; ``matchkeys`` holds story matching's lookups),
``outputs`` (candidates, editorial, published bytes, archives), ``storyviews`` (a story as
people look at it) and ``retention`` (counts and pruning). The names below are re-exported
so that ``from aggregator.store.repository import X`` keeps working for every importer.
"""

from __future__ import annotations

from aggregator.records import ClaimedSource, MatchCandidate, PollRecord
from aggregator.store._sql import IN_CHUNK
from aggregator.store.items import STORY_NAMESPACE, IngestStore, IngestTransaction, story_uid
from aggregator.store.matchkeys import MAX_KEY_FANOUT
from aggregator.store.outputs import ArchivePage, OutputStore, PageEnd, SourceIds
from aggregator.store.retention import PruneReport, RetentionStore, Stopping, StoreStats
from aggregator.store.sources import SourceHealth, SourceStore, SyncReport
from aggregator.store.storyviews import CoverageItem, StoryCoverage, StoryMemberRow, StoryViewStore

__all__ = [
    "IN_CHUNK",
    "MAX_KEY_FANOUT",
    "STORY_NAMESPACE",
    "ArchivePage",
    "ClaimedSource",
    "CoverageItem",
    "IngestTransaction",
    "MatchCandidate",
    "PageEnd",
    "PollRecord",
    "PruneReport",
    "SourceHealth",
    "SourceIds",
    "Stopping",
    "Store",
    "StoreStats",
    "StoryCoverage",
    "StoryMemberRow",
    "SyncReport",
    "story_uid",
]


class Store(SourceStore, IngestStore, OutputStore, StoryViewStore, RetentionStore):
    """The queries the pipeline, publishing and the CLI need, and nothing that decides anything.

    One engine and its sessions (``_sql.StoreBase``); each base class brings the methods of
    one part of the schema, so callers keep one handle while each module stays readable.
    """
