"""The engine and the schema's version: connecting, migrating, refusing a newer schema.

SQLite gets WAL (readers never block the writer), ``synchronous=NORMAL`` (durable at
each checkpoint and safe against corruption on power loss in WAL mode), foreign keys
and a busy timeout, so a second process (``aggregator serve`` beside ``run``) waits
instead of failing, and a page cache large enough for story matching's lookups.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from aggregator import sdnotify
from aggregator.errors import SchemaError, StorageError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from alembic.config import Config as AlembicConfig

log = logging.getLogger(__name__)
SCHEMA_HEAD = "0022"
"""The newest migration's revision (a test pins it to Alembic's own head). A database at it
is read with SQLAlchemy alone: Alembic is imported only to migrate, or to explain a
revision this code does not know, and importing it costs every process ~8 MB."""
VERSION_TABLE = "alembic_version"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Pages the write-ahead log may hold before a commit copies them back into the database
# file (SQLite's default is 1,000, i.e. 4 MB). A first ingest writes ~1 MB of WAL per
# poll, so the default made every fourth commit also checkpoint and fsync: 40% of the
# commit time (bench/ingest.py). 64 MB between checkpoints, and the log file truncated
# back to that size after one.
SQLITE_WAL_CHECKPOINT_PAGES = 16_384
SQLITE_WAL_SIZE_LIMIT = 64 << 20
# Page cache per connection, in KiB (SQLite's default is 2 MB). Story matching looks up each
# new item's keys in item_match_keys and the narrow story indexes on items, spread over the
# whole window: at the default part of those pages were read from the file again at every
# poll. Beyond this size the matching cost no longer fell (bench/dedup.py --storage-only).
# The cache fills only as far as a connection reads, so connections that only serve outputs
# stay small.
SQLITE_CACHE_KIB = 8_192
POSTGRESQL_CONNECT_SECONDS = 10  # unless the URL says (?connect_timeout=N)
# pg_advisory_lock's key for "migrating the schema": any fixed bigint, the same in every version.
MIGRATION_LOCK_KEY = 0x61676772_00000001  # "aggr", 1


def migrations_dir() -> Path:
    """Alembic's scripts: shipped inside the wheel, or ``alembic/`` in a source checkout."""
    packaged = Path(__file__).resolve().parent.parent / "_migrations"
    if (packaged / "env.py").exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "alembic"


DATABASE_FILE_MODE = 0o640
"""A new SQLite file's permissions (SQLite gives its WAL and shared-memory files the same): it
holds every source's URL, tokens in them included, and every item. The systemd units' UMask
gives the same; a command run from a shell with the usual umask made it readable by all."""


def _create_private(file: Path) -> None:
    """Create the SQLite file ``file`` empty (an empty file is an empty database) with
    ``DATABASE_FILE_MODE``, if it is not there; any failure is left for SQLite to report."""
    with contextlib.suppress(OSError):
        os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, DATABASE_FILE_MODE))


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"not a database URL: {url!r}") from None
    if parsed.drivername in ("postgres", "postgres+psycopg"):
        # The scheme many hosts and libpq itself write (postgres://…), which SQLAlchemy does not know.
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        file = sqlite_file(parsed)
        if file is not None:
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, a read-only mount, no permission
                raise StorageError(f"cannot create the directory {file.parent}: {exc.strerror or exc}") from None
            _create_private(file)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        kwargs["poolclass"] = NullPool if file is None else None
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
    elif parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() in ("", "psycopg2"):
            # psycopg 3 is what we install; plain postgresql:// URLs picked psycopg2 before
            # SQLAlchemy 2.1. (2.1 picks psycopg, and the settings below, which were under this
            # condition, were no longer made: no connection checked before use, no timeout.)
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in parsed.query:
            # A server that accepts and never answers (a partition, a hung host) would keep a
            # connect waiting for the kernel's TCP timeout, minutes, with nothing logged.
            kwargs["connect_args"] = {"connect_timeout": POSTGRESQL_CONNECT_SECONDS}
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise StorageError(f"cannot use database {parsed.render_as_string(hide_password=True)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
    cursor.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_SIZE_LIMIT}")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database file in WAL mode, waiting out other processes doing the same.

    Switching needs the file to itself, and SQLite answers "database is locked" at once rather
    than waiting the busy timeout: two workers started together on a fresh file would have one
    exit. WAL is kept in the file, so once it is set the mode is only read, and a switch that
    finds the file locked is tried again until the busy timeout has passed."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.01
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            mode = str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            if mode in ("wal", "memory") or time.monotonic() >= deadline:
                return  # an in-memory database has no file to put in WAL mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    assert head is not None, "no migrations shipped"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None: no schema yet), read as Alembic reads it."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
            if len(versions) <= 1:
                return versions[0] if versions else None
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(connection).get_current_revision()  # says why it cannot be
    except SQLAlchemyError as exc:
        raise StorageError(_unreachable(engine, _short(exc))) from None


def _unreachable(engine: Engine, problem: str) -> str:
    """Why a database could not be read at start, in words that fit its kind: a SQLite file is
    opened, not reached, and SQLite says "disk I/O error" when its disk is full."""
    where = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name != "sqlite":
        return f"cannot reach the database {where}: {problem}"
    full = "disk I/O error" in problem or "disk is full" in problem
    hint = "; is its disk full? SQLite needs well over 64 MB free beside it" if full else ""
    return f"cannot open the database {where}: {problem}{hint}"


def sqlite_file_missing(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist yet (opening it would create it)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    path = sqlite_file(parsed)
    return None if path is None or path.exists() else path


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for another database, or a SQLite one held in memory."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database or "")


def upgrade(engine: Engine, *, apart: bool = False) -> tuple[str | None, str]:
    """Migrate to head; return (from, to). Refuses a database newer than this code.

    Several processes may start at the same moment on one empty database (workers under one
    systemd target, containers scaled up): only one of them migrates, the others wait for it
    and then find the schema at head. The revision is read again under the lock for that.

    ``apart``: migrate in a process of its own (``migrate_apart``), for a daemon that goes on
    running: Alembic, with Mako and Pygments, would otherwise stay in its memory for as long
    as it runs, though it migrates once. A database held in memory is migrated here.
    """
    before = current_revision(engine)
    if before == SCHEMA_HEAD:
        return before, SCHEMA_HEAD  # the usual start: no lock, and no Alembic, needed to do nothing
    if apart and (engine.dialect.name != "sqlite" or sqlite_file(engine.url) is not None):
        return migrate_apart(engine.url.render_as_string(hide_password=False))
    return _upgrade_here(engine)


def _upgrade_here(engine: Engine) -> tuple[str | None, str]:
    """``upgrade`` in this process: the lock, the revision read again under it, Alembic."""
    before = current_revision(engine)
    head = head_revision()
    _refuse_newer(before, head)
    with migration_lock(engine):
        before = current_revision(engine)
        _refuse_newer(before, head)
        if before != head:
            from alembic import command

            try:
                command.upgrade(alembic_config(engine), "head")
            except SQLAlchemyError as exc:
                raise StorageError(f"migration failed: {_short(exc)}") from None
    return before, head


MIGRATION_PING_SECONDS = 30.0
"""How often a process waiting for its migration asks systemd for more time to start."""


def migrate_apart(url: str) -> tuple[str | None, str]:
    """``upgrade`` the database at ``url`` in a spawned process, waiting for it: what it
    returns, or the ``SchemaError`` or ``StorageError`` it raised, as if raised here. The
    child takes the migration lock itself: if this process is killed meanwhile, the
    migration still finishes under its lock, and no other process starts one beside it.
    The URL, password included, reaches the child through a pipe, not its command line."""
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_migrate_child, args=(url, sending), name="aggregator-migrate")
    child.start()
    sending.close()
    try:
        # Under systemd, each wait asks for more time to start than the last one used, so
        # that TimeoutStartSec does not kill a long migration and start it again forever.
        sdnotify.extend_start(3 * MIGRATION_PING_SECONDS)
        while not receiving.poll(MIGRATION_PING_SECONDS):
            sdnotify.extend_start(3 * MIGRATION_PING_SECONDS)
        outcome = receiving.recv()
    except EOFError:  # it died without a word (killed, out of memory): its stderr says why
        outcome = None
    finally:
        receiving.close()
        child.join()
    if outcome is None:
        raise StorageError(f"migration failed: the migrating process exited with code {child.exitcode}")
    kind, found = outcome
    if kind == "schema":
        raise SchemaError(found)
    if kind == "storage":
        raise StorageError(found)
    before, head = found
    return before, head


def _migrate_child(url: str, sending: Connection) -> None:
    """The spawned process of ``migrate_apart``: migrate, and send back the outcome."""
    engine = make_engine(url)
    try:
        sending.send(("done", _upgrade_here(engine)))
    except SchemaError as exc:
        sending.send(("schema", str(exc)))
    except StorageError as exc:
        sending.send(("storage", str(exc)))
    finally:
        engine.dispose()
        sending.close()


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's migration lock: one migrating process at a time, any number waiting.

    PostgreSQL: a session advisory lock, on a connection of its own (Alembic migrates on
    another), released by the server if this process dies. SQLite: an exclusive ``flock`` on
    a file beside the database, released by the kernel if this process dies; a write
    transaction (``BEGIN IMMEDIATE``) cannot serve, as Alembic's own connection would then
    wait for ours.
    """
    if engine.dialect.name == "postgresql":
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot take the migration lock: {_short(exc)}") from None
        try:
            yield
        finally:
            with contextlib.suppress(SQLAlchemyError):
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            # Invalidated, not returned to the pool: a connection whose unlock failed would
            # hand the lock on to whoever borrows it next.
            connection.invalidate()
            connection.close()
        return
    database = sqlite_file(engine.url)
    if database is None:
        yield  # nothing another process could share
        return
    lock_path = Path(f"{database}.migrate-lock")
    try:
        handle = lock_path.open("a")
    except OSError as exc:
        raise StorageError(f"cannot take the migration lock {lock_path}: {exc.strerror or exc}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_schema(engine: Engine, *, apart: bool = False) -> None:
    """What the daemon runs at start: migrate an empty or older database, refuse a newer one
    (``apart``: see ``upgrade``)."""
    before, head = upgrade(engine, apart=apart)
    if before != head:
        log.info("database schema migrated from %s to %s", before or "empty", head)


def _refuse_newer(current: str | None, head: str) -> None:
    if current is None or current == head:
        return
    from alembic.script import ScriptDirectory

    known = {rev.revision for rev in ScriptDirectory(str(migrations_dir())).walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"the database schema is at revision {current}, newer than this aggregator knows (up to {head}); "
            "upgrade aggregator, or point it at another database"
        )


def _short(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
