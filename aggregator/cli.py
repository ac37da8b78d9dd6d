"""The ``aggregator`` command. Exit codes: 0 ok, 1 user error (config, arguments), 2 runtime failure.

Every expected error is an ``AggregatorError`` and is printed as one line (or one line per
config problem) on stderr; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wcwidth import wcswidth, wcwidth

from aggregator import __version__, collector, logs, malloc
from aggregator.config import DATA_DIR_ENV, LoadedConfig, Output, entry_lines, load_config
from aggregator.curate import draws_from, lead_of
from aggregator.errors import AggregatorError, ConfigError, UsageError

# The store (SQLAlchemy and every table) is imported by the commands that open one, not by the
# module: `aggregator --help`, `check` and `opml` need none of it, and it was half of their time.
if TYPE_CHECKING:
    from aggregator.pipeline import PollSummary
    from aggregator.records import Candidate
    from aggregator.store.repository import IngestTransaction, SourceHealth, Store, SyncReport

EXIT_OK, EXIT_USER, EXIT_RUNTIME = 0, 1, 2
log = logging.getLogger("aggregator")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aggregator", description="Poll news feeds, store each item once, publish curated feeds.")
    parser.add_argument("--version", action="version", version=f"aggregator {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $AGGREGATOR_CONFIG or ./feeds.yaml)")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=(
            f"where the database and feeds are (default: ${DATA_DIR_ENV}, else settings.data_dir, else systemd's "
            "$STATE_DIRECTORY, else ./data)"
        ),
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one object per line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("run", help="the daemon: scheduler and HTTP server in one process")
    commands.add_parser("worker", help="scheduler only (poll and publish), no HTTP")
    commands.add_parser("serve", help="HTTP server only (serves what workers publish)")
    poll = commands.add_parser("poll", help="poll sources once, publish, exit")
    poll.add_argument("--once", action="store_true", required=True, help="poll what is due, then exit")
    poll.add_argument("--all", action="store_true", help="poll every source, due or not")
    commands.add_parser("publish", help="render and write every output now")
    commands.add_parser("check", help="validate the config; exit 1 with file:line messages")
    items = commands.add_parser("items", help="what an output would contain, and why each item is in or out")
    items.add_argument("output", metavar="OUTPUT", help="output slug, e.g. world")
    items.add_argument("--limit", type=int, default=100, help="show this many items (default 100)")
    items.add_argument("--json", action="store_true", help="machine-readable output")
    for action, text in (("pin", "keep a story at the top of an output"), ("block", "keep a story out of an output")):
        editorial = commands.add_parser(action, help=text)
        editorial.add_argument("output", metavar="OUTPUT", help="output slug, e.g. world")
        editorial.add_argument(
            "story", metavar="STORY", help="story number (from 'items'), its tag: id, or an item URL"
        )
        editorial.add_argument("--remove", action="store_true", help=f"undo the {action}")
    split = commands.add_parser("split", help="move items put in the wrong story into a story of their own")
    split.add_argument("items", nargs="+", metavar="ITEM", help="item number (from 'story') or an item's URL")
    merge = commands.add_parser("merge", help="merge two stories of one event: the first joins the second")
    merge.add_argument("story", metavar="STORY", help="story number (from 'items'), its tag: id, or an item URL")
    merge.add_argument("into", metavar="INTO", help="the story it joins, named the same ways")
    story = commands.add_parser("story", help="a story's items, and why each one joined it")
    story.add_argument("story", metavar="STORY", help="story number (from 'items'), its tag: id, or an item URL")
    story.add_argument("--json", action="store_true", help="machine-readable output")
    opml = commands.add_parser("opml", help="import or export sources as OPML")
    opml_commands = opml.add_subparsers(dest="opml_command", required=True, metavar="ACTION", parser_class=_Parser)
    export = opml_commands.add_parser("export", help="write the configured sources as OPML")
    export.add_argument("--output", metavar="FILE", help="file to write (default: standard output)")
    importer = opml_commands.add_parser("import", help="add the feeds of an OPML file to the config")
    importer.add_argument("file", metavar="FILE")
    importer.add_argument("--write", action="store_true", help="insert them into the config file (else print them)")
    sources = commands.add_parser("sources", help="health of every source")
    sources.add_argument("--json", action="store_true", help="machine-readable output")
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION", parser_class=_Parser)
    db_commands.add_parser("upgrade", help="migrate the database schema to this version")
    db_commands.add_parser("prune", help="apply retention now (the daemon does it daily)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    malloc.limit_arenas()  # before any thread starts
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if args.data_dir:
        # An environment variable rather than a parameter: the daemon's config reloads and
        # every later load_config see the same directory.
        os.environ[DATA_DIR_ENV] = str(Path(args.data_dir).absolute())
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USER
    except UsageError as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return EXIT_USER
    except AggregatorError as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        rest = "; what was stored stays, and the rest is polled next time" if args.command == "poll" else ""
        print(f"aggregator: stopped{rest}", file=sys.stderr)
        return EXIT_RUNTIME


def _load(args: argparse.Namespace) -> LoadedConfig:
    return load_config(args.config)


@contextlib.contextmanager
def _store(loaded: LoadedConfig, *, create: bool = False) -> Iterator[Store]:
    """The store, migrated if older; connections closed on exit.

    Only the commands that fill a database (``run``, ``worker``, ``poll``) start a new one;
    the others refuse, since an empty database there means they were pointed at the wrong
    place (another working directory, or not the service's data directory) and would
    report or change nothing the service sees.
    """
    from aggregator.store.database import current_revision, ensure_schema, make_engine, sqlite_file_missing
    from aggregator.store.repository import Store

    settings = loaded.config.settings
    url = settings.database_url
    if not create and (missing := sqlite_file_missing(url)) is not None:
        raise UsageError(_no_database(loaded, f"no database at {missing.absolute()}"))
    if create and sqlite_file_missing(url) is not None and (elsewhere := _data_left_behind(loaded)) is not None:
        raise UsageError(elsewhere)
    engine = make_engine(url)
    try:
        if create:
            if current_revision(engine) is None:
                # INFO, not WARNING: a first start is normal operation, and a healthy daemon logs
                # no warnings; the line still shows which database an unexpected one is.
                log.info("starting a new, empty database: %s", engine.url.render_as_string(hide_password=True))
        elif current_revision(engine) is None:
            raise UsageError(_no_database(loaded, f"{engine.url.render_as_string(hide_password=True)} is empty"))
        ensure_schema(engine, apart=True)  # a daemon runs on: Alembic is not kept in it
        yield Store(engine)
    finally:
        engine.dispose()


def _data_left_behind(loaded: LoadedConfig) -> str | None:
    """Why not to start a new, empty database, if ``settings.data_dir`` holds one that --data-dir
    or $AGGREGATOR_DATA_DIR (which the systemd units set) overrides: an installation from before
    the units set it keeps its data there, and a service started beside it would begin again
    with no items and new story ids for everything its subscribers have read (found by the
    upgrade audit). None when there is nothing left behind."""
    settings = loaded.config.settings
    if settings.database or os.environ.get("AGGREGATOR_DATABASE_URL") or not settings.data_dir:
        return None
    chosen, chosen_by = settings.data_dir_choice
    configured = Path(settings.data_dir)
    if configured.absolute() == chosen.absolute() or not (configured / "aggregator.db").is_file():
        return None
    return (
        f"settings.data_dir in {loaded.path} is {configured.absolute()}, which holds a database, but {chosen_by} "
        f"chooses {chosen.absolute()}, where there is none: refusing to start a new, empty one beside your data. "
        f"Move the files of {configured.absolute()} to {chosen.absolute()} (and drop data_dir from the config), "
        f"or unset ${DATA_DIR_ENV} (the systemd units set it: Environment= in the unit)"
    )


def _no_database(loaded: LoadedConfig, problem: str) -> str:
    settings = loaded.config.settings
    if settings.database or os.environ.get("AGGREGATOR_DATABASE_URL"):
        # A database named outright: no data directory to point elsewhere.
        return (
            f"{problem}; the database is settings.database or $AGGREGATOR_DATABASE_URL. Point this command at "
            f"the service's database (settings.database in {loaded.path}, or $AGGREGATOR_DATABASE_URL), or create "
            "its tables with 'aggregator db upgrade' (a service starting at the same moment creates them itself)"
        )
    data_dir, chosen_by = settings.data_dir_choice
    return (
        f"{problem}; data directory {data_dir.absolute()} ({chosen_by}). Point this command at the service's data "
        f"(--data-dir DIR, ${DATA_DIR_ENV} or settings.data_dir in {loaded.path}), or create a new database "
        "there with 'aggregator db upgrade'"
    )


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args)
    config = loaded.config
    text = functools.cache(lambda: loaded.path.read_text(encoding="utf-8"))  # read once, if a warning needs it
    lines = functools.cache(lambda: entry_lines(text(), "sources"))
    output_lines = functools.cache(lambda: entry_lines(text(), "outputs"))
    warnings = (
        *_unselected_sources(loaded, lines),
        *_repeated_urls(loaded, lines),
        *_unknown_tags(loaded, output_lines),
    )
    for warning in warnings:
        print(warning, file=sys.stderr)
    print(f"{loaded.path}: ok ({len(config.sources)} sources, {len(config.outputs)} outputs)")
    return EXIT_OK


def _unselected_sources(loaded: LoadedConfig, source_lines: Callable[[], dict[int, int]]) -> list[str]:
    """A warning per source that no output draws from: it would be polled for nothing."""
    config = loaded.config
    unused = [
        (index, source)
        for index, source in enumerate(config.sources)
        if not any(draws_from(output, source.name, source.tags) for output in config.outputs)
    ]
    if not unused:
        return []
    lines = source_lines()  # the config file is read only for a warning, and once for all
    return [
        f"{loaded.path}:{lines.get(index, 1)}: sources[{index}]: warning: no output selects {source.name!r} "
        f"(no output names it{' or one of its tags ' + ', '.join(source.tags) if source.tags else ''})"
        for index, source in unused
    ]


def _unknown_tags(loaded: LoadedConfig, output_lines: Callable[[], dict[int, int]]) -> list[str]:
    """A warning per tag an output draws from that no source carries: a misspelt tag selects
    nothing, and an output of such tags alone stays empty."""
    carried = {tag for source in loaded.config.sources for tag in source.tags}
    unknown = [
        (index, output, tag)
        for index, output in enumerate(loaded.config.outputs)
        for tag in output.tags
        if tag not in carried
    ]
    if not unknown:
        return []
    lines = output_lines()
    return [
        f"{loaded.path}:{lines.get(index, 1)}: outputs[{index}]: warning: no source is tagged {tag!r}, which "
        f"{output.slug!r} draws from"
        for index, output, tag in unknown
    ]


def _repeated_urls(loaded: LoadedConfig, source_lines: Callable[[], dict[int, int]]) -> list[str]:
    """A warning per source whose URL an earlier one already has: each would store every item
    of the feed, and every story would count the outlet twice."""
    first: dict[str, int] = {}
    repeated = []
    for index, source in enumerate(loaded.config.sources):
        earlier = first.setdefault(source.url, index)
        if earlier != index:
            repeated.append((index, source, earlier))
    if not repeated:
        return []
    lines = source_lines()  # the config file is read only for a warning, and once for all
    sources = loaded.config.sources
    return [
        f"{loaded.path}:{lines.get(index, 1)}: sources[{index}]: warning: {source.name!r} has the URL of "
        f"{sources[earlier].name!r} (sources[{earlier}]): its items would all be stored twice"
        for index, source, earlier in repeated
    ]


def cmd_db(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if args.db_command == "prune":
        from aggregator.publisher import Publisher, prune

        with _store(loaded) as store:
            report = prune(Publisher(loaded.config, store))
        kept = " (settings.retention: null keeps every item)" if loaded.config.settings.retention is None else ""
        print(
            f"removed {report.items} items{kept}, {report.stories} stories, {report.fetch_log} fetch-log rows, "
            f"{report.match_keys} story-matching keys"
            + (f"; set right {report.recounted} sources' item counts" if report.recounted else "")
        )
        return EXIT_OK
    from aggregator.store.database import make_engine, upgrade

    engine = make_engine(loaded.config.settings.database_url)
    try:
        before, head = upgrade(engine)
    finally:
        engine.dispose()
    if before == head:
        print(f"database already at revision {head}")
    else:
        print(f"database migrated from {before or 'empty'} to {head}")
    return EXIT_OK


def cmd_poll(args: argparse.Namespace) -> int:
    from aggregator.parseworker import make_parse_pool
    from aggregator.pipeline import Pipeline, poll_once
    from aggregator.publisher import Publisher

    collector.pace_for_service()
    loaded = _load(args)
    with _store(loaded, create=True) as store:
        now = datetime.now(UTC)
        if _synced(loaded, store, now).renamed:
            # Every entry names its outlet, and only the outputs this poll's new items touch
            # would be published again. Before polling: a poll stopped half-way leaves none stale.
            Publisher(loaded.config, store).publish()
        progress = _Progress(store.stats(now).sources if args.all else store.stats(now).due)
        pool = make_parse_pool(loaded.config.settings.parse_workers)
        pipeline = Pipeline(
            loaded.config, store, parse_pool=pool, on_progress=progress.update if progress.live else None
        )
        try:
            summary = asyncio.run(_stoppable(poll_once(pipeline, all_sources=args.all)))
        finally:
            progress.close()
            if pool is not None:
                pool.shutdown()
    print(
        f"polled {summary.polled} sources: {summary.new_items} new items, {summary.updated_items} updated, "
        f"{summary.not_modified} not modified, {summary.unchanged} unchanged, {summary.errors} failed"
    )
    return EXIT_OK


async def _stoppable(poll: Coroutine[Any, Any, PollSummary]) -> PollSummary:
    """Run ``poll`` so that SIGTERM (systemd stopping a timer's poll, ``timeout``, ``kill``) and
    SIGINT stop it at once: the poll is cancelled, its sources' leases handed back, what was
    committed stays, and the command says so (KeyboardInterrupt). By default SIGTERM ended the
    process on the spot, silently, its leases held until they expired, and a SIGINT sent by
    another process waited for the slowest feed. The event loop's own handlers, since they
    wake the loop whichever thread the signal reaches; a plain one runs only once the main
    thread next wakes, which a slow feed may delay to the end of the poll."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(poll)
    stopped: list[bool] = []

    def stop() -> None:
        stopped.append(True)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if stopped:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _synced(loaded: LoadedConfig, store: Store, now: datetime) -> SyncReport:
    """Bring the stored sources in line with the config, and say what that removed or renamed
    (``_report_sync``): what ``poll`` and ``publish`` do first."""
    report = store.sync_sources(loaded.config.source_specs(), now)
    _report_sync(loaded, report)
    return report


def _report_sync(loaded: LoadedConfig, report: SyncReport) -> None:
    """Say on stderr which stored sources the config no longer lists, and which it renamed: a
    poll run with another config than the service's (another directory's feeds.yaml) stops
    the service's sources too, which nothing else would show until their feeds went stale."""
    if report.removed:
        shown = ", ".join(repr(name) for name in report.removed[:5])
        more = f" and {len(report.removed) - 5} more" if len(report.removed) > 5 else ""
        count = f"{len(report.removed)} source{'s' if len(report.removed) > 1 else ''}"
        print(
            f"aggregator: {loaded.path} does not list {count} of this database, no longer polled (items stay): "
            f"{shown}{more}",
            file=sys.stderr,
        )
    for old, new in report.renamed:
        print(f"aggregator: source {old!r} is now {new!r} (the same URL): its items keep it", file=sys.stderr)


class _Progress:
    """A one-line progress bar on a terminal's stderr; silent when stderr is a file or pipe."""

    WIDTH = 30

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.live = sys.stderr.isatty()
        self.shown = False

    def update(self, summary: PollSummary) -> None:
        done = min(summary.polled, self.total)
        filled = self.WIDTH * done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(
            f"\r[{bar}] {done}/{self.total} sources, {summary.new_items} new items, {summary.errors} failed "
        )
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def cmd_publish(args: argparse.Namespace) -> int:
    from aggregator.publisher import Publisher

    loaded = _load(args)
    with _store(loaded) as store:
        # The sources as the config names them: an output drawing from a source renamed since
        # the last poll would otherwise find none of its items.
        _synced(loaded, store, datetime.now(UTC))
        changed = Publisher(loaded.config, store).publish(check_files=True)
    print(f"published {len(loaded.config.outputs)} outputs ({len(changed)} renderings changed)")
    return EXIT_OK


def _daemon(args: argparse.Namespace, *, poll: bool, http: bool) -> int:
    import uvloop

    from aggregator.daemon import Daemon

    collector.pace_for_service()
    loaded = _load(args)
    with _store(loaded, create=poll) as store:
        # uvloop: a feed reader's conditional GET is mostly event-loop work, which uvloop does
        # with less overhead than asyncio's own loop (bench/serve.py compares them).
        uvloop.run(Daemon(loaded, store, poll=poll, http=http).run())
    return EXIT_OK


def _output(loaded: LoadedConfig, slug: str) -> Output:
    for output in loaded.config.outputs:
        if output.slug == slug:
            return output
    known = ", ".join(o.slug for o in loaded.config.outputs) or "none"
    raise UsageError(f"no output {slug!r} in {loaded.path} (outputs: {known})")


def cmd_items(args: argparse.Namespace) -> int:
    from aggregator.publisher import Publisher

    loaded = _load(args)
    output = _output(loaded, args.output)
    with _store(loaded) as store:
        curation = Publisher(loaded.config, store).curation(output, datetime.now(UTC))
        # In the output's order, each entry's lead before the other reports of its story (an
        # output may order by coverage, not by date), then what it leaves out, newest first.
        place = {entry.lead.story_id: (n, entry.lead.item_id) for n, entry in enumerate(curation.entries)}
        verdicts = sorted(
            curation.verdicts,
            key=lambda v: (
                (0, *_entry_place(place, v.candidate)) if v.included else (1, 0, False),
                -v.candidate.published_at.timestamp(),
            ),
        )
        verdicts = verdicts[: max(args.limit, 0)]
        joined = store.match_reasons(v.candidate.item_id for v in verdicts)
    if args.json:
        rows = [
            {
                "story": v.candidate.story_id,
                "story_id": v.candidate.story_uid,
                "source": v.candidate.source_name,
                "title": v.candidate.title,
                "link": v.candidate.link,
                "published_at": v.candidate.published_at.isoformat() if v.candidate.dated else None,
                "included": v.included,
                "reason": v.reason,
                "story_reason": joined.get(v.candidate.item_id),
            }
            for v in verdicts
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    width = _source_width(v.candidate.source_name for v in verdicts)
    for v in verdicts:
        c = v.candidate
        source = _shortened(c.source_name, width)
        title = _padded(_cut(c.title, 60), 60)
        print(f"{'+' if v.included else '-'} {c.story_id:>7}  {_padded(source, width)}  {title}  {v.reason}")
        if c.item_id in joined:
            print(f"{'':11}story: {joined[c.item_id]}")
    return EXIT_OK


def _entry_place(place: dict[int, tuple[int, int]], candidate: Candidate) -> tuple[int, bool]:
    """Where an included candidate stands in its output: its entry's position, and whether it
    is not that entry's lead."""
    position, lead = place.get(candidate.story_id, (len(place), candidate.item_id))
    return position, candidate.item_id != lead


def cmd_editorial(args: argparse.Namespace) -> int:
    from aggregator.publisher import Publisher

    loaded = _load(args)
    output = _output(loaded, args.output)
    done = {"pin": "pinned", "block": "blocked"}[args.command]
    with _store(loaded) as store:
        story_id, uid = resolve_story(store, args.story)
        if args.remove and not store.undo_editorial(output.slug, story_id, args.command):
            print(f"story {story_id} ({uid}) is not {done} in {output.slug}: nothing changed")
            return EXIT_OK
        if not args.remove:
            store.set_editorial(output.slug, story_id, args.command, datetime.now(UTC))
        publisher = Publisher(loaded.config, store)
        publisher.publish([output])
        pinned = args.command == "pin" and not args.remove
        hidden = pinned and not store.story_candidates(publisher.source_ids(output), [story_id])
    done = f"no longer {done}" if args.remove else done
    print(f"story {story_id} ({uid}) {done} in {output.slug}; republished")
    if hidden:
        # A pin passes the output's rules, not its choice of sources (``sources``, ``tags``).
        print(
            f"aggregator: story {story_id} has no item from the sources {output.slug} draws from, so it does not "
            "show there; it will once such a source reports it",
            file=sys.stderr,
        )
    return EXIT_OK


def resolve_story(store: Store, reference: str) -> tuple[int, str]:
    """(id, tag: id) of the story a user named by its number, its tag: id, or an item's URL."""
    from aggregator.normalize import canonical_url

    if reference.isdigit():
        found = store.story_by_id(int(reference))
    elif reference.startswith("tag:"):
        found = store.story_by_uid(reference)
    else:
        found = store.story_by_url(canonical_url(reference) or reference, reference)
    if found is None:
        raise UsageError(f"no story matches {reference!r} (use a story number, its tag: id, or an item URL)")
    return found


@contextlib.contextmanager
def _editing_stories(args: argparse.Namespace) -> Iterator[tuple[LoadedConfig, Store, IngestTransaction, datetime]]:
    """An editor's correction of stories (``split``, ``merge``): the config, the store, the
    ingest transaction with no poll deciding while the stories change under it, and the time;
    every output is republished once the transaction committed (not when the block raised)."""
    from aggregator.publisher import Publisher

    loaded = _load(args)
    with _store(loaded) as store:
        with store.ingest() as tx:
            tx.exclude_other_matching()
            yield loaded, store, tx, datetime.now(UTC)
        Publisher(loaded.config, store).publish()


def cmd_split(args: argparse.Namespace) -> int:
    from aggregator.store.items import story_authority, story_uid
    from aggregator.store.storyedits import split_key, split_refusal

    with _editing_stories(args) as (loaded, store, tx, now):
        stories = _items_named(tx, args.items)
        item_ids = list(stories)
        refused = split_refusal(stories, tx.story_sizes(stories.values()))
        if refused:
            raise UsageError(refused)
        story_id = stories[item_ids[0]]
        key = split_key(story_id, item_ids, now)
        uid = story_uid(key, story_authority(loaded.config.settings.public_url), now)
        new_id = tx.split_off(story_id, item_ids, now, uid, key)
        old_uid = store.story_by_id(story_id)
    named = ", ".join(str(i) for i in item_ids)
    print(
        f"item{'s' if len(item_ids) > 1 else ''} {named} left story {story_id}"
        f"{f' ({old_uid[1]})' if old_uid else ''} for story {new_id} ({uid}); republished"
    )
    return EXIT_OK


def _items_named(tx: IngestTransaction, references: Sequence[str]) -> dict[int, int]:
    """The stored items a user named by number (``aggregator story`` shows them) or by URL
    (every item at it), in order, each with its story; UsageError naming the first that names none."""
    from aggregator.normalize import canonical_url
    from aggregator.store.storyviews import LARGEST_ID

    found: dict[int, int] = {}
    for reference in references:
        if reference.isdigit():
            ids = [int(reference)] if int(reference) <= LARGEST_ID else []
        else:
            ids = tx.items_at_url(canonical_url(reference) or reference, reference)
        held = tx.item_stories(ids)
        if not held:
            raise UsageError(f"no item matches {reference!r} (use an item number from 'aggregator story', or its URL)")
        found |= {item: held[item] for item in ids if item in held}
    return found


def cmd_merge(args: argparse.Namespace) -> int:
    with _editing_stories(args) as (_, store, tx, now):
        # Named after the lock: a story merged meanwhile is found as the one it became.
        story_id, uid = resolve_story(store, args.story)
        into_id, into_uid = resolve_story(store, args.into)
        if story_id == into_id:
            raise UsageError(f"{args.story!r} and {args.into!r} are one story already (story {story_id})")
        tx.merge_by_editor(story_id, into_id, now)
    print(
        f"story {story_id} ({uid}) merged into story {into_id} ({into_uid}): its items are that story's now, "
        "and its number and tag: id lead there; republished"
    )
    return EXIT_OK


def cmd_story(args: argparse.Namespace) -> int:
    loaded = _load(args)
    with _store(loaded) as store:
        story_id, uid = resolve_story(store, args.story)
        members = store.story_members_detail(story_id)
    # A merged story's number and tag: id lead to the story it became (``StoryRow.merged_into``).
    asked = args.story
    merged = (asked.isdigit() and int(asked) != story_id) or (asked.startswith("tag:") and asked != uid)
    # The headline the outputs and the story page give it: their lead's (``curate.lead_of``).
    lead = lead_of(members)
    if args.json:
        rows = [
            {
                "item": m.item_id,
                "source": m.source,
                "title": m.title,
                "link": m.link,
                "published_at": m.sort_at.isoformat(),
                "reason": m.reason,
            }
            for m in members
        ]
        headline = lead.title if lead else None
        found = {"story": story_id, "story_id": uid, "headline": headline, "items": rows}
        if merged:
            found["merged_from"] = asked
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return EXIT_OK
    if merged:
        print(f"story {asked} was merged into story {story_id} (each item below says how it came to be there)")
    print(f"story {story_id}  {uid}  ({len(members)} item{'s' if len(members) != 1 else ''})")
    width = _source_width(m.source for m in members)
    if lead is not None:
        print(f"  led in the outputs by item {lead.item_id} ({_shortened(lead.source, width)}): {_cut(lead.title, 90)}")
    for m in members:
        source = _shortened(m.source, width)
        print(f"  item {m.item_id:>7}  {m.sort_at:%Y-%m-%d %H:%M}Z  {_padded(source, width)}  {_cut(m.title, 70)}")
        print(f"                {m.reason or 'no reason recorded (stored before story matching kept one)'}")
    return EXIT_OK


SOURCE_COLUMN = 32
"""The widest the source column of ``items`` and ``story`` gets; longer names are shortened."""


def _source_width(names: Iterable[str]) -> int:
    """The source column's width: the longest name shown, up to ``SOURCE_COLUMN``."""
    return min(SOURCE_COLUMN, max((_columns(name) for name in names), default=0))


def _columns(text: str) -> int:
    """How many terminal columns ``text`` takes: a Chinese or Japanese character two, a
    combining mark none (``wcwidth``), where counting characters misaligned every column after
    a CJK headline or source name."""
    found = wcswidth(text)
    return found if found >= 0 else len(text)


def _padded(text: str, width: int) -> str:
    """``text`` followed by the spaces that make it ``width`` columns wide."""
    return text + " " * max(0, width - _columns(text))


def _fitting(text: str, width: int, from_end: bool = False) -> str:
    """The longest start (or end) of ``text`` that takes at most ``width`` columns."""
    chars = reversed(text) if from_end else iter(text)
    used, kept = 0, 0
    for char in chars:
        used += max(0, wcwidth(char))
        if used > width:
            break
        kept += 1
    return text[len(text) - kept :] if from_end else text[:kept]


def _shortened(name: str, width: int) -> str:
    """A source name fitted to ``width`` columns by cutting out its middle: names that share a
    beginning ("Reuters - World", "Reuters - Business"; feeds of one site named by their
    address) differ at the end, and cutting the end made several sources of one story look
    like one outlet."""
    if _columns(name) <= width:
        return name
    head = (width - 1) // 2
    start = _fitting(name, head)
    return f"{start}…{_fitting(name[len(start) :], width - 1 - _columns(start), from_end=True)}"


def _cut(title: str, width: int) -> str:
    """A headline cut to ``width`` columns, marked as cut."""
    return title if _columns(title) <= width else f"{_fitting(title, width - 1)}…"


def cmd_opml(args: argparse.Namespace) -> int:
    from aggregator import opml
    from aggregator.config import parse_config

    loaded = _load(args)
    if args.opml_command == "export":
        data = opml.export_opml(loaded.config)
        if args.output:
            try:
                Path(args.output).write_bytes(data)
            except OSError as exc:
                raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        else:
            sys.stdout.write(data.decode("utf-8"))
        return EXIT_OK
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{args.file}: cannot read: {exc.strerror or exc}"]) from None
    usable, rewritten, unusable = opml.split_usable(opml.parse_opml(data, args.file))
    for note in rewritten:
        print(f"{args.file}:{note.source.line or 1}: {note.source.name!r}: {note.reason}", file=sys.stderr)
    for problem in unusable:
        where = f"{args.file}:{problem.source.line or 1}"
        print(f"{where}: skipped {problem.source.name!r} ({problem.source.url}): {problem.reason}", file=sys.stderr)
    fresh = opml.new_sources(loaded.config, usable)
    if not fresh:
        print("nothing to import: every usable feed is already configured")
        return EXIT_OK
    if not args.write:
        sys.stdout.write(opml.as_yaml(fresh))
        return EXIT_OK
    text = opml.insert_sources(loaded.path, fresh)
    parse_config(text, str(loaded.path))  # never write a config that would not load
    _replace_config(loaded.path, text)
    print(f"added {len(fresh)} sources to {loaded.path}")
    return EXIT_OK


def _replace_config(path: Path, text: str) -> None:
    """Write ``text`` over the config file at once (a temp file renamed over it): over the file
    a symlink points to, not over the link, and with the file's permissions, since a config
    may hold a database password the operator made it unreadable to others for."""
    target = path.resolve()
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)  # os.open's mode passes through the umask
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


def cmd_sources(args: argparse.Namespace) -> int:
    from aggregator.status import source_status

    loaded = _load(args)
    with _store(loaded) as store:
        rows = store.health()
    if args.json:
        print(json.dumps([_health_json(r) for r in rows], indent=2))
        return EXIT_OK
    header = (
        "SOURCE",
        "FEED TITLE",
        "STATUS",
        "LAST POLL",
        "ITEMS",
        "/DAY",
        "NEXT POLL",
        "WHY",
        "ERRORS",
        "LAST ERROR",
    )
    table = [header] + [
        (
            r.name[:30],
            (r.feed_title or "-")[:30],
            source_status(r),
            _when(r.last_polled_at),
            str(r.items),
            f"{r.items_per_day:.1f}" if r.items_per_day else "-",
            _when(r.next_poll_at),
            r.next_poll_reason[:40],
            str(r.error_count),
            (r.last_error or (f"warning: {r.last_warning}" if r.last_warning else ""))[:60],
        )
        for r in rows
    ]
    widths = [max(_columns(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(_padded(cell, width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _health_json(r: SourceHealth) -> dict[str, object]:
    from aggregator.status import source_status

    fields = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dataclasses.asdict(r).items()}
    return {"name": r.name, "url": r.url, "status": source_status(r), **fields}


COMMANDS = {
    "check": cmd_check,
    "db": cmd_db,
    "poll": cmd_poll,
    "publish": cmd_publish,
    "run": lambda args: _daemon(args, poll=True, http=True),
    "worker": lambda args: _daemon(args, poll=True, http=False),
    "serve": lambda args: _daemon(args, poll=False, http=True),
    "sources": cmd_sources,
    "opml": cmd_opml,
    "items": cmd_items,
    "story": cmd_story,
    "split": cmd_split,
    "merge": cmd_merge,
    "pin": cmd_editorial,
    "block": cmd_editorial,
}
