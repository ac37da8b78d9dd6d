"""The tables. One row per source (it is also the schedule), story, item, fetch and output.

Timestamps are stored as naive UTC and handed back timezone-aware (``UTCDateTime``):
SQLite has no time zones, and comparing ``next_poll_at <= now`` must mean the same
thing on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only aliases INTEGER PRIMARY KEY to its rowid (auto-increment); BIGINT elsewhere.
BigID = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=False)
    cache_ok = True

    # SQLAlchemy passes the dialect by keyword: the overrides keep its name, unused.
    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; aggregator uses UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text from hand-written SQL
            value = datetime.fromisoformat(value)
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class SourceRow(Base):
    """A polled source and its schedule: validators, next poll, errors and the worker lease."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(Text)  # where we poll now (a 301 moves it)
    config_url: Mapped[str] = mapped_column(Text)  # as written in feeds.yaml, to notice edits
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    interval_seconds: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    in_config: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_private: Mapped[bool] = mapped_column(Boolean, default=False)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    body_hash: Mapped[str | None] = mapped_column(String(64))
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_poll_reason: Mapped[str] = mapped_column(Text, default="new source")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # What the parser forgave in the last parsed document (ill-formed XML, a truncated end).
    last_warning: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_new_item_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_reason: Mapped[str | None] = mapped_column(Text)
    # When the config last gave the source a fresh start (a new URL, or listed again after it
    # was removed): ``settings.retire_after`` counts from it when it is later than the last success.
    restarted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a poll last stored a new or changed item of the source, in the same transaction: an
    # output published before it has not shown it yet (``Publisher.stale_outputs``).
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    feed_title: Mapped[str | None] = mapped_column(Text)
    feed_link: Mapped[str | None] = mapped_column(Text)
    feed_id: Mapped[str | None] = mapped_column(Text)
    items_per_day: Mapped[float | None] = mapped_column(Float)
    # How many items of the source are stored, changed in the transactions that insert and
    # delete them (``IngestTransaction.insert_items``, ``RetentionStore.prune``): /metrics,
    # /status and ``aggregator sources`` read it instead of counting the items table, which
    # read every item at every scrape and grew with the database (migration 0018).
    item_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_sources_due", "next_poll_at"),)


class StoryRow(Base):
    """One distinct story. ``uid`` is the published entry id: fixed at creation, never changed.

    ``merged_into``: the story this one was merged into (``stories.Decision.absorbs``), its
    items now that story's. The row stays as a forwarding address while that story lives: its
    entry may have been published and its page (``/stories/<id>``) linked, and both lead to
    the story it became; and its number is not given to another story (SQLite reuses the
    largest id of a deleted row)."""

    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    uid: Mapped[str] = mapped_column(String(300), unique=True)
    key: Mapped[str] = mapped_column(Text, unique=True)  # what created it; makes creation idempotent
    canonical_url: Mapped[str | None] = mapped_column(Text, index=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    merged_into: Mapped[int | None] = mapped_column(BigID, nullable=True)
    # When an editor last split items off it or merged it (``aggregator split``, ``merge``):
    # story matching then merges it with no other on its own (migration 0020).
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Merging a story updates the rows that forwarded to it: found through this index, which
    # holds only the few merged rows, rather than by reading every story. The same for the
    # stories an editor changed, which a running worker asks for at each poll (migration 0021).
    __table_args__ = (
        Index(
            "ix_stories_merged_into",
            "merged_into",
            sqlite_where=text("merged_into IS NOT NULL"),
            postgresql_where=text("merged_into IS NOT NULL"),
        ),
        Index(
            "ix_stories_edited_at",
            "edited_at",
            sqlite_where=text("edited_at IS NOT NULL"),
            postgresql_where=text("edited_at IS NOT NULL"),
        ),
    )


class ItemRow(Base):
    """One entry of one source, stored once and updated in place when its content changes."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id"))
    key: Mapped[str] = mapped_column(Text)
    guid: Mapped[str | None] = mapped_column(Text)
    link: Mapped[str | None] = mapped_column(Text)
    canonical_url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    summary_html: Mapped[str] = mapped_column(Text, default="")
    content_html: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    enclosures: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    language: Mapped[str | None] = mapped_column(String(35))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sort_at: Mapped[datetime] = mapped_column(UTCDateTime)  # published, else first seen
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fingerprint: Mapped[str] = mapped_column(String(64))
    update_count: Mapped[int] = mapped_column(Integer, default=0)
    # An undated item from its feed's first fetch: placed at first sight like any undated
    # item, but of an age nobody can tell, so outputs put it after the dated news (migration 0019).
    age_unknown: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    match_signature: Mapped[str | None] = mapped_column(Text)  # cluster.Signature.dumps()
    match_features: Mapped[str | None] = mapped_column(Text)  # stories.Features.dumps()
    match_reason: Mapped[str | None] = mapped_column(Text)  # why it joined its story (or started one)

    __table_args__ = (
        UniqueConstraint("source_id", "key", name="uq_items_source_key"),
        Index("ix_items_canonical_url", "canonical_url"),
        # Story matching's reads, answered from the indexes alone (migrations 0011 to 0013 say
        # why; 0022 dropped ``ix_items_story_of``, as the key rows name their stories now).
        Index("ix_items_story_members", "story_id", "sort_at", "id", "update_count", "source_id"),
        Index("ix_items_sort", "sort_at", "story_id"),
        Index("ix_items_source_sort", "source_id", "sort_at"),
    )


class FetchLogRow(Base):
    """One line per poll: what happened, for the health table and for debugging a source."""

    __tablename__ = "fetch_log"

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    items_new: Mapped[int] = mapped_column(Integer, default=0)
    items_updated: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_fetch_log_source", "source_id", "fetched_at"),)


class PublishedRow(Base):
    """A rendered output, as bytes with a validator, so any `serve` process can answer from it."""

    __tablename__ = "published"

    slug: Mapped[str] = mapped_column(String(100), primary_key=True)
    format: Mapped[str] = mapped_column(String(10), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str] = mapped_column(String(100))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeletedItemRow(Base):
    """What retention removed: kept so the next poll does not import the item again."""

    __tablename__ = "deleted_items"

    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(2000), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MatchKeyRow(Base):
    """One lookup key of an item's story signature (cluster.band_keys): finds near-duplicates
    with an indexed equality query instead of comparing against every recent item.

    The primary key (key, sort_epoch, item_id) is the lookup index itself, and on SQLite
    the table has no rowid: each row lives in two B-trees instead of four. The keys are
    random hashes, so every B-tree costs a random page write per insert (migration 0005).
    All three columns are integers (``sort_epoch``: the item's sort time in Unix seconds):
    a row of 20 bytes instead of 50, which made inserting a first ingest's keys 40% cheaper
    (migration 0006).
    """

    __tablename__ = "item_match_keys"

    key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sort_epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    story_id: Mapped[int | None] = mapped_column(BigInteger)
    """The item's story, kept with its keys (migration 0022) so that a lookup by key finds the
    stories in the key's own rows, without a seek into ``items`` for each carrier: matching
    reads hundreds of carriers per poll. Moved with its item (``StoryEdits``); null only in
    a row written without it, which lookups leave out."""

    __table_args__ = (Index("ix_item_match_keys_item", "item_id"), {"sqlite_with_rowid": False})


class EditorialRow(Base):
    """An editor's decision about one story in one output: pinned to the top, or blocked."""

    __tablename__ = "editorial"

    slug: Mapped[str] = mapped_column(String(100), primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"), primary_key=True)
    action: Mapped[str] = mapped_column(String(10))  # pin | block
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ArchiveRow(Base):
    """One finished archive page of an output as RFC 5005 archive documents, rendered once
    and frozen: a week, or a part of a week with more items than one document holds.

    ``week`` is the page's label (``archive.Page``: ``2026-W46``, its later parts
    ``2026-W46-2`` and on). A page whose items the output's rules all left out is kept with
    ``entries`` 0 and empty bodies: it is never linked or served, and never evaluated again.
    ``continues_at`` and ``continues_after`` are where the week's next page starts (the date
    and id of this page's newest item), NULL on a week's last page: a publish that stopped
    between two pages of a week takes up the next one there.
    """

    __tablename__ = "archives"

    slug: Mapped[str] = mapped_column(String(100), primary_key=True)
    week: Mapped[str] = mapped_column(String(16), primary_key=True)
    entries: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the newest entry's
    etag: Mapped[str] = mapped_column(String(100))  # of the Atom document
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    continues_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    continues_after: Mapped[int | None] = mapped_column(BigID)
    # Last (on SQLite since migration 0010): the documents are streamed into blobs of their size
    # (``OutputStore.save_archive``), which SQLite builds without zeroes only at a row's end.
    atom: Mapped[bytes] = mapped_column(LargeBinary)
    html: Mapped[bytes] = mapped_column(LargeBinary)
