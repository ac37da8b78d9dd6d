"""What outputs are made from and what they are: candidate items, editorial overrides,
published bytes and frozen archive weeks.

Which sources an output draws from, how many items to read and whether to read more are
curation's choices (``curate``, ``publisher``): these queries take source ids and dates.
A ``source_ids`` of None means every source; an empty collection means none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, distinct, func, literal, literal_column, select, true
from sqlalchemy.orm import Session

from aggregator.archive import Page
from aggregator.plaintext import xml_safe
from aggregator.records import Candidate, Editorial, Enclosure
from aggregator.store._sql import StoreBase, chunks, insert_ignore_statement, upsert_statement
from aggregator.store.models import ArchiveRow, EditorialRow, ItemRow, PublishedRow, SourceRow, StoryRow

ARCHIVE_DOCUMENTS = ("atom", "html")  # an archive row's documents, streamed in on SQLite
SourceIds = Collection[int] | None  # the sources an output draws from; None: every source
PageEnd = tuple[datetime, int]  # where an archive page ends: its newest item's date and id


@dataclass(frozen=True)
class ArchivePage:
    """A frozen archive page of an output (the links of the chain, those with entries)."""

    week: str  # its label (``archive.Page``)
    entries: int
    updated_at: datetime | None
    continues: PageEnd | None = None  # where its week's next page starts; None: the week's last


class OutputStore(StoreBase):
    # --- candidates ------------------------------------------------------------------
    def candidates(
        self,
        source_ids: SourceIds,
        since: datetime | None,
        limit: int,
        *,
        dated_only: bool = False,
        after: PageEnd | None = None,
    ) -> list[Candidate]:
        """The newest ``limit`` items of these sources sorted from ``since`` on (all when None),
        joined with their source and story; only items their source dated with ``dated_only``.
        ``after``: the next ``limit`` in that order, after the item that ended the page before
        (its sort time and id)."""
        where = _from_sources(source_ids)
        if where is None:
            return []
        if after is not None:
            moment, item_id = after
            where = where & ((ItemRow.sort_at < moment) | ((ItemRow.sort_at == moment) & (ItemRow.id > item_id)))
        if since is not None:
            where = where & (ItemRow.sort_at >= since)
        if dated_only:
            where = where & ItemRow.published_at.is_not(None)
        # Which items first, then their columns. For an output of some sources, SQLite reads
        # their items through (source_id, sort_at) and sorts them all: sorting whole rows, text
        # and HTML included, grew with every item stored (290 ms an output at 28,000 items, in a
        # soak), while the ids alone come from the index and sort in a few ms.
        with self.session() as s:
            ids = _newest_ids(s, where, limit, since, after[0] if after is not None else None)
            if not ids:
                return []
            # Plain columns, not ORM objects: building 500 entities cost more than the query.
            rows = s.execute(_candidate_select(ItemRow.id.in_(ids)).order_by(*_CANDIDATE_ORDER))
            return [_candidate_row(row) for row in rows]

    def coverage_candidates(
        self, source_ids: SourceIds, since: datetime | None, limit: int, skip: int = 0
    ) -> list[Candidate]:
        """Every item sorted from ``since`` on of the ``limit`` stories the most outlets carry
        (``order: coverage``), after the first ``skip`` of them: a widely covered story older
        than the newest few hundred items must still be seen, and counted whole."""
        where = _from_sources(source_ids)
        if where is None:
            return []
        if since is not None:
            where = where & (ItemRow.sort_at >= since)
        outlets = func.count(distinct(ItemRow.source_id))
        ranked = (
            select(ItemRow.story_id)
            .where(where)
            .group_by(ItemRow.story_id)
            .order_by(outlets.desc(), func.max(ItemRow.sort_at).desc(), ItemRow.story_id.desc())
            .limit(limit)
            .offset(skip)
        )
        query = _candidate_select(where).where(ItemRow.story_id.in_(ranked.scalar_subquery()))
        with self.session() as s:
            return [_candidate_row(row) for row in s.execute(query)]

    def archive_items(
        self,
        source_ids: SourceIds,
        start: datetime,
        end: datetime,
        after: PageEnd | None,
        limit: int,
        *,
        with_text: bool = True,
        with_html: bool = True,
    ) -> tuple[list[Candidate], PageEnd | None]:
        """One archive page's items: of the items of these sources dated in [start, end), the
        ``limit`` oldest after ``after`` (where the page before ended), returned newest first
        as curation takes them; and where this page ends when more follow (None: it is the
        week's last). Their
        ``text`` is empty unless ``with_text`` (only rules read it), their summary and content
        HTML unless ``with_html`` (rendering reads it later, ``item_html``).

        Pages split at an item, never at a time: items of one moment fall on either side and
        each on one page only."""
        where = _from_sources(source_ids)
        if where is None:
            return [], None
        where = where & (ItemRow.sort_at >= start) & (ItemRow.sort_at < end)
        if after is not None:
            moment, item_id = after
            where = where & ((ItemRow.sort_at > moment) | ((ItemRow.sort_at == moment) & (ItemRow.id > item_id)))
        query = (
            _candidate_select(where, with_text, with_html)
            .order_by(ItemRow.sort_at.asc(), ItemRow.id.asc())
            .limit(limit + 1)
        )
        with self.session() as s:
            rows = list(s.execute(query))
        ends = (rows[limit - 1].sort_at, rows[limit - 1].id) if len(rows) > limit else None
        return [_candidate_row(row) for row in reversed(rows[:limit])], ends

    def item_html(self, item_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """Each item's summary and content HTML, by id (those still stored)."""
        found: dict[int, tuple[str, str]] = {}
        with self.session() as s:
            for chunk in chunks(item_ids):
                query = select(ItemRow.id, ItemRow.summary_html, ItemRow.content_html).where(ItemRow.id.in_(chunk))
                found.update((row.id, (_safe(row.summary_html), _safe(row.content_html))) for row in s.execute(query))
        return found

    def story_candidates(self, source_ids: SourceIds, story_ids: Iterable[int]) -> list[Candidate]:
        """Every item of the given stories from these sources (pinned stories outlive the age
        window and the candidate limit)."""
        ids = list(story_ids)
        where = _from_sources(source_ids)
        if not ids or where is None:
            return []
        with self.session() as s:
            return [_candidate_row(row) for row in s.execute(_candidate_select(where).where(ItemRow.story_id.in_(ids)))]

    def next_item_at(self, source_ids: SourceIds, start: datetime | None, end: datetime) -> datetime | None:
        """The date of the first item of these sources in [start, end): where the next non-empty
        week is, found in one indexed query however many empty weeks lie between."""
        where = _from_sources(source_ids)
        if where is None:
            return None
        query = select(func.min(ItemRow.sort_at)).where(where, ItemRow.sort_at < end)
        if start is not None:
            query = query.where(ItemRow.sort_at >= start)
        with self.session() as s:
            return s.scalar(query)

    # --- editorial ---------------------------------------------------------------------
    def editorial(self, slug: str) -> Editorial:
        with self.session() as s:
            rows = s.execute(
                select(EditorialRow.story_id, EditorialRow.action)
                .where(EditorialRow.slug == slug)
                .order_by(EditorialRow.created_at.desc(), EditorialRow.story_id)
            ).all()
        pinned = tuple(story for story, action in rows if action == "pin")
        return Editorial(pinned, frozenset(story for story, action in rows if action == "block"))

    def set_editorial(self, slug: str, story_id: int, action: str | None, now: datetime) -> None:
        """Pin or block a story in an output (the later decision replaces an earlier one);
        ``None`` removes whichever decision it has."""
        with self.session() as s:
            row = s.get(EditorialRow, (slug, story_id))
            if action is None:
                if row is not None:
                    s.delete(row)
            elif row is None:
                s.add(EditorialRow(slug=slug, story_id=story_id, action=action, created_at=now))
            else:
                row.action, row.created_at = action, now

    def undo_editorial(self, slug: str, story_id: int, action: str) -> bool:
        """Remove a story's ``action`` ("pin" or "block") in an output, and only that: a block
        undone leaves a pin alone. False: the story had no such decision there."""
        with self.session() as s:
            row = s.get(EditorialRow, (slug, story_id))
            if row is None or row.action != action:
                return False
            s.delete(row)
            return True

    # --- published bytes ---------------------------------------------------------------
    def save_published(self, slug: str, fmt: str, media_type: str, body: bytes, etag: str, now: datetime) -> bool:
        """Store a rendering; False (and no write) when the bytes are what we already have."""
        with self.session() as s:
            current = s.execute(
                select(PublishedRow.etag, PublishedRow.published_at).where(
                    PublishedRow.slug == slug, PublishedRow.format == fmt
                )
            ).first()
            if current is not None and current.etag == etag:
                return False
            # Last-Modified has one-second resolution: a change within the same second as the
            # previous one must still move it, or readers that only send If-Modified-Since
            # would be told 304 and miss the change.
            now = now.replace(microsecond=0)
            if current is not None and now <= current.published_at.replace(microsecond=0):
                now = current.published_at.replace(microsecond=0) + timedelta(seconds=1)
            # An upsert: several workers may publish the same output at the same moment.
            values: dict[str, object] = {"slug": slug, "format": fmt, "media_type": media_type, "body": body}
            values.update(etag=etag, published_at=now)
            changes = ["media_type", "body", "etag", "published_at"]
            s.execute(upsert_statement(s.get_bind().dialect.name, PublishedRow, values, ["slug", "format"], changes))
            return True

    def mark_rendered(self, slug: str, fmt: str, fingerprint: str, at: datetime) -> None:
        """Record that an output was rendered whole, as of ``at``, under the settings whose
        ``fingerprint`` is given: the row of format ``fmt`` (``publisher.CONFIG_FORMAT``) holds
        both, its time moved even when the fingerprint is the same."""
        with self.session() as s:
            values: dict[str, object] = {"slug": slug, "format": fmt, "media_type": "text/plain"}
            values.update(body=fingerprint.encode(), etag=fingerprint, published_at=at)
            changes = ["body", "etag", "published_at"]
            s.execute(upsert_statement(s.get_bind().dialect.name, PublishedRow, values, ["slug", "format"], changes))

    def published(self, slug: str, fmt: str) -> PublishedRow | None:
        with self.session() as s:
            row = s.get(PublishedRow, (slug, fmt))
            if row is not None:
                s.expunge(row)
            return row

    def published_slugs(self) -> set[str]:
        """The outputs with renderings stored."""
        with self.session() as s:
            return set(s.scalars(select(PublishedRow.slug).distinct()))

    def withdraw_published(self, slug: str) -> list[str]:
        """Delete an output's renderings; the formats it had."""
        with self.session() as s:
            formats = list(s.scalars(select(PublishedRow.format).where(PublishedRow.slug == slug)))
            s.execute(delete(PublishedRow).where(PublishedRow.slug == slug))
            return formats

    def published_versions(self) -> dict[tuple[str, str], tuple[str, datetime]]:
        """Every stored rendering's ETag and when it was stored, by (slug, format), without the
        bodies: what a publish checks its files and its outputs' freshness against, in one read
        rather than one per output and format."""
        with self.session() as s:
            rows = s.execute(
                select(PublishedRow.slug, PublishedRow.format, PublishedRow.etag, PublishedRow.published_at)
            )
            return {(r.slug, r.format): (r.etag, r.published_at) for r in rows}

    def published_etag(self, slug: str, fmt: str) -> str | None:
        """The current ETag of a rendering, without its body: what ``serve`` asks to learn
        whether the bytes it holds are still the published ones."""
        with self.session() as s:
            return s.scalar(select(PublishedRow.etag).where(PublishedRow.slug == slug, PublishedRow.format == fmt))

    # --- archives ----------------------------------------------------------------------
    def archive_weeks(self, slug: str) -> list[ArchivePage]:
        """Every archive page evaluated, oldest first (a week's parts in order,
        ``archive.Page``); those with ``entries`` 0 had items the output's rules all left
        out (they are not linked)."""
        with self.session() as s:
            columns = (ArchiveRow.week, ArchiveRow.entries, ArchiveRow.updated_at, ArchiveRow.continues_at)
            rows = s.execute(select(*columns, ArchiveRow.continues_after).where(ArchiveRow.slug == slug))
            pages = [_archive_page(r) for r in rows]
        return sorted(pages, key=lambda page: Page.of(page.week))  # "-10" after "-9", unlike the text

    def archive_pages(self, slug: str) -> list[ArchivePage]:
        """The archive pages with entries, oldest first."""
        return [page for page in self.archive_weeks(slug) if page.entries]

    def archive(self, slug: str, week: str) -> ArchiveRow | None:
        """A frozen archive week with entries (None for an empty or unarchived one)."""
        with self.session() as s:
            row = s.get(ArchiveRow, (slug, week))
            if row is None or row.entries == 0:
                return None
            s.expunge(row)
            return row

    def save_archive(self, row: ArchiveRow, files: Mapping[str, Path] | None = None) -> bool:
        """Freeze a week; False when another worker froze it first: theirs stays (same rules,
        same bytes) and nothing is written. ``files``: documents of the row (by column) given
        as files rather than in it, read from there.

        On SQLite the documents are streamed into blobs of their size, the row's last columns:
        bound as parameters, a full week's ~20 MB was copied by the driver and again into the
        record SQLite builds, beside the caller's own bytes; a file is streamed a piece at a
        time."""
        values: dict[str, Any] = {column.name: getattr(row, column.name) for column in ArchiveRow.__table__.columns}
        files = files or {}
        with self.session() as s:
            dialect = s.get_bind().dialect.name
            if dialect != "sqlite":
                values.update({name: path.read_bytes() for name, path in files.items()})
            documents: dict[str, bytes | Path] = (
                {name: files.get(name, values[name]) for name in ARCHIVE_DOCUMENTS} if dialect == "sqlite" else {}
            )
            values.update({name: func.zeroblob(_size(body)) for name, body in documents.items()})
            # RETURNING, not the row count: psycopg reports none (-1) for this statement.
            statement = insert_ignore_statement(dialect, ArchiveRow).values(values)
            inserted = s.execute(statement.returning(literal_column("rowid") if documents else ArchiveRow.week)).first()
            if inserted is None:
                return False
            if documents:
                _stream_into(s.connection().connection.driver_connection, inserted[0], documents)
            return True


def _stream_into(sqlite: Any, rowid: int, documents: dict[str, bytes | Path]) -> None:
    """Write each document (its bytes, or a file of them) into its blob column of the archive
    row ``rowid`` (SQLite)."""
    for name, body in documents.items():
        if not _size(body):
            continue
        with sqlite.blobopen(ArchiveRow.__tablename__, name, rowid) as blob:
            if isinstance(body, Path):
                with body.open("rb") as handle:
                    while piece := handle.read(FILE_PIECE):
                        blob.write(piece)
            else:
                blob.write(body)


FILE_PIECE = 1 << 20
"""Bytes of a document file streamed into its blob at a time (``save_archive``)."""


def _size(body: bytes | Path) -> int:
    return body.stat().st_size if isinstance(body, Path) else len(body)


# Ties (undated items stored before they were placed share their first-seen time) go to the
# lower id: inserted first, i.e. higher up in the document.
_CANDIDATE_ORDER = (ItemRow.sort_at.desc(), ItemRow.id.asc())
CANDIDATE_HORIZON = timedelta(days=2)
"""How far back ``candidates`` first looks for an output's newest items, from the newest item
stored (or from where the page before ended). Sorting every item of an output's sources made
each publish's cost grow with the database; most outputs fill a page from their last days,
and the few that do not are asked again without the bound, with the same result."""


def _newest_ids(
    s: Session, where: ColumnElement[bool], limit: int, since: datetime | None, before: datetime | None
) -> list[int]:
    """The ids of the first ``limit`` items ``where`` selects, newest first (``_CANDIDATE_ORDER``):
    those of the last ``CANDIDATE_HORIZON`` before ``before`` (None: the newest item stored)
    when there are that many there, which are then the first ones of all; else all of them."""
    anchor = before if before is not None else s.scalar(select(func.max(ItemRow.sort_at)))
    if anchor is not None and (since is None or since < anchor - CANDIDATE_HORIZON):
        recent = _ids_query(where & (ItemRow.sort_at >= anchor - CANDIDATE_HORIZON), limit)
        ids = list(s.scalars(recent))
        if len(ids) == limit:
            return ids
    return list(s.scalars(_ids_query(where, limit)))


def _ids_query(where: ColumnElement[bool], limit: int) -> Select[int]:
    return select(ItemRow.id).where(where).order_by(*_CANDIDATE_ORDER).limit(limit)


def _from_sources(source_ids: SourceIds) -> ColumnElement[bool] | None:
    """The WHERE clause limiting items to these sources; None when there are none. Every
    source needs no id list at all."""
    if source_ids is None:
        return true()
    return ItemRow.source_id.in_(sorted(source_ids)) if source_ids else None


CANDIDATE_COLUMNS = (
    ItemRow.id, StoryRow.id.label("story_id"), StoryRow.uid, SourceRow.name, SourceRow.tags,
    SourceRow.url, SourceRow.feed_link, SourceRow.feed_id, ItemRow.title, ItemRow.link,
    ItemRow.summary_html, ItemRow.content_html, ItemRow.text, ItemRow.author, ItemRow.categories, ItemRow.sort_at,
    ItemRow.changed_at, ItemRow.updated_at, ItemRow.first_seen_at, ItemRow.language,
    ItemRow.published_at.is_not(None).label("dated"), ItemRow.age_unknown, ItemRow.enclosures,
)  # fmt: skip


def _left_out(*columns: Any) -> tuple[Any, ...]:
    """``CANDIDATE_COLUMNS`` with ``columns`` read as empty strings."""
    return tuple(literal("").label(c.key) if any(c is o for o in columns) else c for c in CANDIDATE_COLUMNS)


_COLUMNS = {
    (True, True): CANDIDATE_COLUMNS,
    (False, True): _left_out(ItemRow.text),
    (True, False): _left_out(ItemRow.summary_html, ItemRow.content_html),
    (False, False): _left_out(ItemRow.text, ItemRow.summary_html, ItemRow.content_html),
}


def _archive_page(r: Any) -> ArchivePage:
    continues = None if r.continues_at is None else (r.continues_at, r.continues_after)
    return ArchivePage(r.week, r.entries, r.updated_at, continues)


def _candidate_select(where: ColumnElement[bool], with_text: bool = True, with_html: bool = True) -> Any:
    columns = _COLUMNS[with_text, with_html]
    return (
        select(*columns)
        .join(SourceRow, ItemRow.source_id == SourceRow.id)
        .join(StoryRow, ItemRow.story_id == StoryRow.id)
        .where(where)
    )


def _safe(value: Any) -> Any:
    """A stored text as XML can carry it (``plaintext.xml_safe``), or the value as it is. Items
    stored before normalizing took such characters out (before 6abfa8e) still hold some, and
    one of them stopped every publish of its output, and the daemon at its start."""
    return xml_safe(value) if isinstance(value, str) else value


def _candidate_row(r: Any) -> Candidate:
    return Candidate(
        item_id=r.id,
        story_id=r.story_id,
        story_uid=r.uid,
        source_name=r.name,
        source_tags=tuple(r.tags or ()),
        source_url=r.url,
        source_link=r.feed_link,
        source_feed_id=r.feed_id,
        title=_safe(r.title),
        link=r.link,
        summary_html=_safe(r.summary_html),
        content_html=_safe(r.content_html),
        text=_safe(r.text),
        author=_safe(r.author),
        categories=tuple(_safe(c) for c in r.categories or ()),
        published_at=r.sort_at,
        updated_at=max(r.changed_at, r.updated_at or r.changed_at),
        first_seen_at=r.first_seen_at,
        language=r.language,
        dated=bool(r.dated),
        age_unknown=bool(r.age_unknown),
        **_attachments(r.enclosures),
    )


def _attachments(stored: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A stored enclosures list as a Candidate's ``enclosures`` and ``thumbnail``."""
    enclosures, thumbnail = [], None
    for e in stored or ():
        if not isinstance(e, dict) or not isinstance(e.get("url"), str):
            continue
        if e.get("thumbnail"):
            thumbnail = thumbnail or e["url"]
        else:
            enclosures.append(Enclosure(e["url"], e.get("type"), e.get("length")))
    return {"enclosures": tuple(enclosures), "thumbnail": thumbnail}
