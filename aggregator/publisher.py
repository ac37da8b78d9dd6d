"""Publishing: curation → rendering → saving → files → archives → WebSub, for every output.

A ``Publisher`` is built from the config, the store and a clock, and nothing else: no parse
pool, no writer threads. So ``aggregator publish``, ``items`` and the editorial commands
curate and render without starting the machinery a poll needs, and the daemon, ``poll
--once`` and the CLI all publish through the same code. The choices that need no database
(which outputs a poll touches, whether an output's settings changed) are pure functions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from aggregator import __version__, malloc, metrics
from aggregator.archive import ARCHIVE_MAX_ENTRIES, Page, Week, archive_dir, archive_output, first_open_week
from aggregator.config import Config, Output, Settings
from aggregator.curate import (
    Curation,
    curate,
    draws_from,
    draws_from_every_source,
    needs_dated_candidates,
    needs_more_candidates,
    reads_text,
    source_scope,
)
from aggregator.entryview import feed_url
from aggregator.errors import PublishError
from aggregator.publish import (
    FORMATS,
    Rendering,
    archive_pieces,
    empty_feed_updated,
    etag_of_file,
    holds,
    place,
    render_all,
    spooled,
    write_atomically,
    write_file,
)
from aggregator.records import Candidate, Editorial, OutputEntry, etag_of
from aggregator.store.models import ArchiveRow
from aggregator.store.repository import ArchivePage, PageEnd, PruneReport, SourceIds, Stopping, Store
from aggregator.websub import ping_hub

log = logging.getLogger("aggregator")

# A row of the published table per output holding a fingerprint of the settings it was
# rendered with: a poll with nothing new re-renders an output only when those changed.
CONFIG_FORMAT = "config"
CANDIDATE_FACTOR = 5  # items read per output entry, leaving room for grouping and rules
CANDIDATE_PAGES = 20
"""Pages of candidates an output short of entries reads at most (``Publisher.curation``): what
bounds the cost, at each publish, of a rule that matches almost nothing."""


def affected_outputs(outputs: Sequence[Output], changed_sources: Mapping[str, Sequence[str]]) -> list[Output]:
    """Outputs drawing from a source whose items changed (``changed_sources``: name -> tags)."""
    changed = changed_sources.items()
    return [o for o in outputs if any(draws_from(o, name, tags) for name, tags in changed)]


def outputs_to_publish(
    outputs: Sequence[Output], changed_sources: Mapping[str, Sequence[str]], stale: Collection[str]
) -> list[Output]:
    """What a poll must re-render, in config order: outputs its new items touch, and the
    ``stale`` ones (slugs) whatever the poll brought."""
    chosen = {o.slug for o in affected_outputs(outputs, changed_sources)} | set(stale)
    return [o for o in outputs if o.slug in chosen]


def is_stale(fingerprint: str, rendered: tuple[str, datetime] | None, sources_changed: Iterable[datetime]) -> bool:
    """Whether an output must be rendered again whatever a poll brought: never rendered whole
    (``rendered`` None: its fingerprint and when it was rendered), rendered under other
    settings or by another version (``config_fingerprint``), or rendered before one of its
    sources last stored new or changed items (``sources_changed``): a process killed between
    storing a poll's items and publishing them, or a publish that failed, left them out, and
    no later poll's own items need bring the output up again."""
    if rendered is None or rendered[0] != fingerprint:
        return True
    return any(at > rendered[1] for at in sources_changed)


def config_fingerprint(output: Output, settings: Settings) -> str:
    """What an output was rendered with: its rules, the addresses its bytes name, the version."""
    text = "|".join((__version__, output.model_dump_json(), settings.public_url, settings.websub_hub or ""))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Publisher:
    def __init__(
        self, config: Config, store: Store, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # file path -> (inode, mtime, size) when its ETag was last computed, and that ETag:
        # the daemon checks every output's files at every cycle, and most have not changed
        self._file_etags: dict[str, tuple[tuple[int, int, int], str]] = {}

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: every setting is read from ``self.config`` where it is used."""
        self.config = config

    def affected_outputs(self, changed_sources: Mapping[str, Sequence[str]]) -> list[Output]:
        """Outputs drawing from a source whose items changed (``PollSummary.changed_sources``)."""
        return affected_outputs(self.config.outputs, changed_sources)

    def curation(self, output: Output, now: datetime) -> Curation:
        """What ``output`` shows now and why each candidate is in or out.

        Candidates are read a page at a time, newest first (``CANDIDATE_FACTOR`` per entry),
        while the output needs more (``needs_more_candidates``), up to ``CANDIDATE_PAGES``."""
        editorial = self.store.editorial(output.slug)
        scope = self.source_ids(output)
        limit = output.max_entries * CANDIDATE_FACTOR + 100
        since = now - output.max_age if output.max_age else None
        pinned = self.store.story_candidates(scope, editorial.pinned)
        candidates: list[Candidate] = []
        after: PageEnd | None = None
        for page in range(CANDIDATE_PAGES):
            if output.order == "coverage":
                found = self.store.coverage_candidates(scope, since, limit, page * limit)
                more = len({c.story_id for c in found}) == limit
            else:
                found = self.store.candidates(scope, since, limit, after=after)
                more = len(found) == limit
                if found:
                    after = (found[-1].published_at, found[-1].item_id)  # its sort time (``_candidate_row``)
                if page == 0 and needs_dated_candidates(found):
                    found = _merged(found, self.store.candidates(scope, since, limit, dated_only=True))
            candidates = _merged(candidates, found)
            result = curate(output, _merged(candidates, pinned), editorial)
            if not more or not needs_more_candidates(output, result):
                break
        return result

    def source_ids(self, output: Output) -> SourceIds:
        """The ids of the sources ``output`` draws from, as the store takes them (None: every source)."""
        if draws_from_every_source(output):
            return None
        return source_scope(output, self.store.source_labels())

    async def notify_hub(self, changed: list[Rendering]) -> None:
        """Ping the WebSub hub for the feeds whose bytes changed (never raises)."""
        settings = self.config.settings
        if settings.websub_hub is None:
            return
        urls = [feed_url(settings.public_url, r.slug, r.format) for r in changed if r.format in ("atom", "rss", "json")]
        await ping_hub(settings.websub_hub, urls, user_agent=settings.effective_user_agent)

    def publish(self, outputs: list[Output] | None = None, *, check_files: bool = False) -> list[Rendering]:
        """Render outputs; store and write only the renderings whose bytes changed. An output
        that cannot be rendered or written does not hold the others back: each is published on
        its own, and the ones that failed are named in one ``PublishError`` at the end (the
        failed ones stay stale, so the next publish tries them again).

        Every output's feed files are compared with the bytes stored for them (``restore_files``);
        ``check_files``: every archive page's too (``freeze_archives``), as ``aggregator
        publish`` asks. A file that holds its bytes is left alone, so a web server in front of
        ``output_dir`` keeps sending the date it was written as Last-Modified, and readers'
        conditional requests keep getting 304."""
        changed: list[Rendering] = []
        now = self.clock()
        out_dir = Path(self.config.settings.resolved_output_dir)
        self.withdraw_removed(out_dir)
        written: set[str] = set()
        failed = []
        for output in self.config.outputs if outputs is None else outputs:
            try:
                stored, files = self._publish_one(output, now, out_dir, check_files)
                changed += stored
                written |= files
            except PublishError as exc:
                log.error("publish: %s", exc)
                failed.append(str(exc))
                written |= {f"{output.slug}.{fmt}" for fmt in FORMATS}  # tried: not again below
        try:
            self.restore_files(out_dir, written)
        except PublishError as exc:
            failed.append(str(exc))
        if failed:
            raise PublishError(f"{len(failed)} output(s) not published: {'; '.join(failed)}")
        return changed

    def _publish_one(
        self, output: Output, now: datetime, out_dir: Path, check_files: bool
    ) -> tuple[list[Rendering], set[str]]:
        """``publish`` of one output: its archives, then its renderings. Returns the renderings
        stored anew and the names of the files written."""
        settings = self.config.settings
        changed, written = [], set()
        weeks = self.freeze_archives(output, now, out_dir, check_files=check_files)
        entries = self.curation(output, now).entries
        previous = None if entries else self.store.published(output.slug, "atom")
        updated = None if entries else empty_feed_updated(previous.body if previous else None, now)
        renderings = render_all(
            output, entries, settings.public_url, settings.websub_hub, archives=weeks, updated_if_empty=updated
        )
        for rendering in renderings:
            stored = self.store.save_published(
                rendering.slug, rendering.format, rendering.media_type, rendering.body, rendering.etag, now
            )
            if stored:  # else ``restore_files`` checks the file is these bytes
                write_atomically(out_dir, rendering)
                written.add(rendering.filename)
                metrics.REBUILDS.labels(rendering.slug, rendering.format).inc()
                changed.append(rendering)
                log.info("published %s (%d entries)", rendering.filename, len(entries))
        self.store.mark_rendered(output.slug, CONFIG_FORMAT, self._fingerprint(output), now)
        return changed, written

    def restore_files(self, out_dir: Path, skip: Collection[str] = ()) -> list[str]:
        """Make every configured output's files in ``out_dir`` the bytes stored for it, where
        they are not (but the ``skip`` file names, just written): a process killed between
        storing a rendering and writing its file, a full disk, or another worker that stored
        the rendering first (its file is then written beside that worker, not here) leave the
        file behind the database, and nginx would serve it so until the output changed again.
        Compared by ETag, read from the file. Returns the file names rewritten; a file that
        cannot be written does not stop the others, and a ``PublishError`` names each at the end."""
        rewritten, failed = [], []
        versions = self.store.published_versions()
        for output in self.config.outputs:
            for fmt in FORMATS:
                filename = f"{output.slug}.{fmt}"
                etag = None if filename in skip else versions.get((output.slug, fmt), (None,))[0]
                if etag is None or self._file_etag(out_dir / filename) == etag:
                    continue
                row = self.store.published(output.slug, fmt)
                if row is None or row.etag != etag:  # published again meanwhile: by its own writer
                    continue
                try:
                    write_file(out_dir, filename, row.body)
                except PublishError as exc:
                    log.error("publish: %s", exc)
                    failed.append(str(exc))
                    continue
                rewritten.append(filename)
                log.info("rewrote %s: the file was not the feed stored for it", filename)
        if failed:
            raise PublishError("; ".join(failed))
        return rewritten

    def withdraw_removed(self, out_dir: Path) -> list[str]:
        """Stop publishing the outputs the config no longer lists: their renderings leave the
        database, so ``serve`` answers 404 for them, and their files leave ``out_dir``, so
        nginx does. A subscriber then learns the feed is gone rather than reading a frozen one
        forever. Their archives stay, rows and files: published weeks are documents others may
        link to, and the items they were made of may have been pruned since. Returns the slugs."""
        removed = sorted(self.store.published_slugs() - {o.slug for o in self.config.outputs})
        for slug in removed:
            for fmt in self.store.withdraw_published(slug):
                if fmt != CONFIG_FORMAT:
                    try:
                        (out_dir / f"{slug}.{fmt}").unlink(missing_ok=True)
                    except OSError as exc:
                        raise PublishError(f"cannot remove {out_dir / f'{slug}.{fmt}'}: {exc.strerror or exc}") from exc
            log.info("output %s is no longer configured: its feeds are withdrawn, its archives kept", slug)
        return removed

    def archives_due(self, now: datetime) -> list[Output]:
        """Outputs with a finished week not archived yet: the daemon publishes them even when
        no new item arrives, so a quiet output's archive still grows week by week."""
        due = []
        open_week = first_open_week(now)
        for output in self.config.outputs:
            evaluated = self.store.archive_weeks(output.slug)
            if _unfinished(evaluated) is not None:
                due.append(output)  # a week's next page, left by a publish that stopped
                continue
            cursor = _archived_until(evaluated)
            if _all_archived(cursor, open_week):
                continue  # the usual case, and no query
            if self._unarchived_item_at(self.source_ids(output), cursor, open_week) is not None:
                due.append(output)
        return due

    def _unarchived_item_at(self, sources: SourceIds, cursor: datetime | None, open_week: Week) -> datetime | None:
        """The date of the oldest item of ``sources`` after ``cursor`` in a complete week, if any."""
        if _all_archived(cursor, open_week):
            return None
        return self.store.next_item_at(sources, cursor, open_week.start)

    def freeze_archives(self, output: Output, now: datetime, out_dir: Path, *, check_files: bool = False) -> list[str]:
        """Archive every complete week of ``output`` not archived yet, oldest first, and write
        the new pages beside the feeds; return the pages with entries, oldest first. The files
        of a page stored earlier are written again where its feed is missing, or with
        ``check_files`` where either is not the bytes stored (``publish``).

        Each page is rendered once (``ArchiveRow``) and never again: a later item dated in its
        week shows in the subscription feed, not in the frozen archive. Weeks without items
        cost nothing (``next_item_at`` jumps over them), and a page whose items the output's
        rules all leave out is recorded as empty, so it is neither linked nor looked at again.
        A week with more items than a page holds is several pages (``archive.Page``), frozen
        oldest first, each linking the one before; a publish that stopped between two of them
        takes up the next where the last one stored ends.
        """
        store = self.store
        open_week = first_open_week(now)
        evaluated = store.archive_weeks(output.slug)
        cursor = _archived_until(evaluated)
        pending = _unfinished(evaluated)
        pages = [page.week for page in evaluated if page.entries]
        complete = archive_output(output)
        # The sources only when a week is to be frozen (the label query is not free, and the
        # usual publish finds every complete week archived already).
        sources = None if pending is None and _all_archived(cursor, open_week) else self.source_ids(output)
        blocked: Editorial | None = None
        directory = archive_dir(out_dir, output.slug)
        fresh: list[str] = []
        written: set[str] = set()  # frozen by this call, and written from its own bytes
        while True:
            if pending is None:
                at = self._unarchived_item_at(sources, cursor, open_week)
                if at is None:
                    break
                pending = (Page(Week.of(at)), None)
            page, after = pending
            blocked = blocked or Editorial(blocked=store.editorial(output.slug).blocked)
            previous = pages[-1] if pages else None
            frozen, continues = self._freeze_page(complete, sources, page, after, blocked, previous, now, directory)
            label = str(page)
            if frozen is not None:
                pages.append(label)
                fresh.append(label)
                if frozen:
                    written.add(label)
            pending = (page.following, continues) if continues is not None else None
            cursor = page.week.end
        if fresh:  # another worker may have frozen a week first: what is stored is the truth
            pages = [page.week for page in store.archive_pages(output.slug)]
        unwritten = [label for label in pages if label not in written]
        self._write_stored_pages(output.slug, unwritten, set(fresh), directory, check_files)
        return pages

    def _write_stored_pages(
        self, slug: str, pages: Sequence[str], fresh: Collection[str], directory: Path, check_files: bool
    ) -> None:
        """Write the files of the stored archive ``pages`` into ``directory`` from the store:
        of those just frozen by another worker (``fresh``: the files here are not theirs),
        those whose feed is missing, and with ``check_files`` those not the bytes stored."""
        for label in pages:
            if label in fresh or check_files or not (directory / f"{label}.atom").exists():
                row = self.store.archive(slug, label)
                if row is None:
                    continue
                for name, body in ((f"{label}.atom", row.atom), (f"{label}.html", row.html)):
                    if label in fresh or not holds(directory / name, body):
                        write_file(directory, name, body)

    def _freeze_page(
        self,
        complete: Output,
        sources: SourceIds,
        page: Page,
        after: PageEnd | None,
        blocked: Editorial,
        previous: str | None,
        now: datetime,
        directory: Path,
    ) -> tuple[bool | None, PageEnd | None]:
        """Render and store one archive page of ``complete`` (an ``archive_output``): its
        week's next ``ARCHIVE_MAX_ENTRIES`` items after ``after`` (from the week's start when
        None). Returns, first, None when the output's rules leave none of its items in; True
        when this call's row was stored and its files written to ``directory``; False when
        another worker froze the page first (what it stored is the truth, and is written from
        the store); and second, where the week's next page starts (None: this is its last).

        A page holds up to ``ARCHIVE_MAX_ENTRIES`` items with their HTML: its candidates come
        without it (unless a rule reads the text), which each piece rendered reads, and are let
        go as soon as it is rendered; each document goes to a file a piece at a time, and the
        store reads it from there.
        """
        text = reads_text(complete)
        malloc.release_freed_memory()
        week = page.week
        # Rules that read an item's text may read its summary's (``curate.matches``): then the
        # HTML comes with the candidates; else it is read as each piece is rendered.
        candidates, continues = self.store.archive_items(
            sources, week.start, week.end, after, ARCHIVE_MAX_ENTRIES, with_text=text, with_html=text
        )
        entries = curate(complete, candidates, blocked).entries
        count, updated = len(entries), max((e.updated_at for e in entries), default=None)
        fill, url = None if text else self._with_html, self.config.settings.public_url
        continuation = {"continues_at": continues[0], "continues_after": continues[1]} if continues else {}
        if not count:  # recorded as empty, documents and all: neither linked nor looked at again
            empty = ArchiveRow(
                slug=complete.slug, week=str(page), entries=0, updated_at=updated, atom=b"", html=b"",
                etag=etag_of(b""), created_at=now, **continuation,
            )  # fmt: skip
            self.store.save_archive(empty)
            return None, continues
        # Each document goes to a file of its own as it is rendered, and the store reads it
        # from there: neither is held whole (10 and 8 MB at 5,000 entries). The files take
        # their names only once the week is stored; should another worker have frozen it
        # first, ``freeze_archives`` writes them from what that one stored. The page is named
        # before the feed: ``freeze_archives`` writes a stored week's files again where its
        # feed is missing, so a rename that fails or a process that dies in between leaves
        # nothing it would not mend.
        feed, html = archive_pieces(complete, entries, url, page, previous, fill)  # rendered as written
        with spooled(directory, f"{page}.html", html) as document, spooled(directory, f"{page}.atom", feed) as atom:
            del candidates, entries, html, feed
            row = ArchiveRow(
                slug=complete.slug, week=str(page), entries=count, updated_at=updated, atom=b"", html=b"",
                etag=etag_of_file(atom), created_at=now, **continuation,
            )  # fmt: skip
            stored = self.store.save_archive(row, {"atom": atom, "html": document})
            if stored:
                place(document, directory / f"{page}.html")
                place(atom, directory / f"{page}.atom")
        log.info("archived %s page %s (%d entries)", complete.slug, page, count)
        return stored, continues

    def _with_html(self, entries: Sequence[OutputEntry]) -> list[OutputEntry]:
        """``entries`` with their leads' HTML, read now (``publish.Filler``). A lead retention
        deleted since it was curated keeps none."""
        found = self.store.item_html([entry.lead.item_id for entry in entries])
        filled = []
        for entry in entries:
            html = found.get(entry.lead.item_id)
            if html is not None:
                entry = replace(entry, lead=replace(entry.lead, summary_html=html[0], content_html=html[1]))
            filled.append(entry)
        return filled

    def stale_outputs(self) -> list[Output]:
        """The outputs ``is_stale`` says to render again, read from the store: each one's last
        whole rendering, and when each source last changed (the labels read once for all)."""
        changed = self.store.sources_changed_at()
        versions = self.store.published_versions()
        labels = None
        stale = []
        for output in self.config.outputs:
            rendered = versions.get((output.slug, CONFIG_FORMAT))
            if draws_from_every_source(output):
                scope: Collection[int] = changed.keys()
            else:
                labels = labels if labels is not None else self.store.source_labels()
                scope = source_scope(output, labels)
            if is_stale(self._fingerprint(output), rendered, [changed[i] for i in scope if i in changed]):
                stale.append(output)
        return stale

    def outputs_to_publish(self, changed_sources: Mapping[str, Sequence[str]]) -> list[Output]:
        """What a poll must re-render: outputs its new items touch, and stale ones."""
        stale = [o.slug for o in self.stale_outputs()]
        return outputs_to_publish(self.config.outputs, changed_sources, stale)

    def _fingerprint(self, output: Output) -> str:
        return config_fingerprint(output, self.config.settings)

    def _file_etag(self, path: Path) -> str | None:
        """``etag_of_file``, or None for a file that is not there (or cannot be read); read
        again only when the file is another one, or was written since (``_file_etags``): files
        are replaced by renaming, so a changed file has another inode."""
        try:
            facts = path.stat()
            seen = (facts.st_ino, facts.st_mtime_ns, facts.st_size)
            kept = self._file_etags.get(str(path))
            if kept is not None and kept[0] == seen:
                return kept[1]
            etag = etag_of_file(path)
        except OSError:
            return None
        self._file_etags[str(path)] = (seen, etag)
        return etag


def _merged(candidates: list[Candidate], more: list[Candidate]) -> list[Candidate]:
    """``candidates`` followed by the items of ``more`` not among them."""
    seen = {c.item_id for c in candidates}
    return candidates + [c for c in more if c.item_id not in seen]


def _all_archived(cursor: datetime | None, open_week: Week) -> bool:
    """Whether every complete week before ``open_week`` is archived, given the archive cursor."""
    return cursor is not None and cursor >= open_week.start


def _archived_until(evaluated: list[ArchivePage]) -> datetime | None:
    """The end of the newest week already archived, or begun (None: nothing archived yet)."""
    return Page.of(evaluated[-1].week).week.end if evaluated else None


def _unfinished(evaluated: list[ArchivePage]) -> tuple[Page, PageEnd | None] | None:
    """The next page of a week whose archiving stopped between two of its pages, and where it
    starts (None: the newest page stored is its week's last)."""
    newest = evaluated[-1] if evaluated else None
    if newest is None or newest.continues is None:
        return None
    return Page.of(newest.week).following, newest.continues


def prune(publisher: Publisher, stopping: Stopping = lambda: False) -> PruneReport:
    """Retention, keeping every item an output shows now (the housekeeping job). With
    ``retention: null`` every item is kept, and the fetch log and the story-matching keys are
    still trimmed: they keep their own time (``fetch_log_retention``, ``MATCH_KEY_RETENTION``),
    and nothing else would stop them growing with every poll. ``stopping``: whether to stop
    before the store's next transaction (the service is stopping); the next pass goes on.

    Here rather than in the store because what to keep is a curation: the store deletes what
    it is told may go.
    """
    settings = publisher.config.settings
    now = publisher.clock()
    protected: set[int] = set()
    if settings.retention is not None:
        for output in publisher.config.outputs:
            for entry in publisher.curation(output, now).entries:
                protected.add(entry.lead.item_id)
                protected.update(c.item_id for c in entry.also)
    report = publisher.store.prune(
        now, settings.retention, protected, fetch_log_keep=settings.fetch_log_retention, stopping=stopping
    )
    log.info(
        "retention: %d items, %d stories, %d fetch-log rows and %d story-matching keys removed%s%s",
        report.items, report.stories, report.fetch_log, report.match_keys,
        "" if settings.retention is not None else " (retention: null keeps every item)",
        "" if report.complete else "; stopped midway by the service's stop, the next pass goes on",
    )  # fmt: skip
    if report.recounted:
        log.warning(
            "retention: %d sources' stored-item counts were off and were set right (items deleted or added "
            "outside this version, such as by hand or by a worker of an older version)",
            report.recounted,
        )
    return report
