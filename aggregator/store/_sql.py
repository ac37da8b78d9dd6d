"""The SQL plumbing every storage module shares, and nothing about what is stored.

A session and a connection base (``StoreBase``, ``TransactionBase``), statements prebuilt for
lists of values (``ByValues``), inserts handed to the driver's executemany (``RawInsert``),
INSERT … ON CONFLICT DO NOTHING, and the mapping of database errors onto ``StorageError``.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    TextClause,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.errors import StorageError
from aggregator.store.models import Base

T = TypeVar("T")
IN_CHUNK = 500  # stay well under SQLite's bound-parameter limit
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
DATA_REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


class StoreBase:
    """The engine and its ORM sessions: what every part of ``Store`` starts a transaction with."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc


class TransactionBase:
    """Core statements on one plain connection, inside a transaction someone else opened.

    The rows are plain columns, and the ORM layer cost more than the queries.
    """

    def __init__(self, connection: Connection) -> None:
        self.c = connection

    def _update_rows(self, model: type[Base], changes: dict[int, dict[str, Any]]) -> int:
        """Set each row's (by id) columns to its values: one executemany per set of columns."""
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row_id, values in changes.items():
            params = {"row_id": row_id, **{f"v_{name}": value for name, value in values.items()}}
            by_columns.setdefault(tuple(values), []).append(params)
        # One parameter set goes as a plain execute: executemany row counts are not reliable everywhere.
        return sum(
            rowcount(self.c.execute(update_by_id(model, columns), params[0] if len(params) == 1 else params))
            for columns, params in by_columns.items()
        )

    def _insert_rows(self, model: type[Base], rows: list[dict[str, Any]]) -> int:
        """INSERT … ON CONFLICT DO NOTHING of rows that all have the same columns (``RawInsert``);
        how many were inserted, those a conflict skipped not counted."""
        if not rows:
            return 0
        return RawInsert.of(self.c.dialect, model, tuple(rows[0])).run_dicts(self.c, rows)

    def _ids(self, query: ByValues, keys: Sequence[str], **params: Any) -> dict[str, int]:
        found: dict[str, int] = {}
        for statement, values in query.batches(self.c.dialect.name, keys, **params):
            found.update((key, row_id) for key, row_id in self.c.execute(statement, values))
        return found


_KEYS: BindParameter[Any] = bindparam("keys", expanding=True)
Wanted = Callable[[Any], ColumnElement[bool]]  # column -> "column is one of the given values"


class ByValues:
    """A prebuilt statement about a list of values (a poll's item keys, URLs, match keys),
    whose SQL text stays the same whatever the list's length.

    An expanding IN list is rendered into the SQL on every execution (SQLAlchemy's
    post-compile step, then a new prepared statement in SQLite for each length); a first
    ingest runs six such statements per poll. Here the list is one parameter: a JSON array
    read by json_each on SQLite, an array with ``= ANY`` on PostgreSQL. Other backends get
    the expanding IN list, in chunks.
    """

    def __init__(self, build: Callable[[Wanted], Any]) -> None:
        self._sqlite = build(
            lambda column: column.in_(select(func.json_each(bindparam("values_json")).table_valued("value").c.value))
        )
        self._postgresql = build(
            lambda column: column == func.any(bindparam("values_array", type_=postgresql.ARRAY(column.type)))
        )
        self._portable = build(lambda column: column.in_(_KEYS))

    @property
    def sqlite(self) -> Any:
        """The statement as SQLite gets it (values as ``:values_json``), to compile for a run on
        the driver (``sqlite_rows``)."""
        return self._sqlite

    def batches(self, dialect: str, values: Sequence[Any], **params: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(statement, parameters) to execute for ``values``: one pair, or none for no values."""
        if not values:
            return
        if dialect == "sqlite":
            yield self._sqlite, {**params, "values_json": json.dumps(list(values))}
        elif dialect == "postgresql":
            yield self._postgresql, {**params, "values_array": list(values)}
        else:  # pragma: no cover - other backends get the portable IN list
            for chunk in chunks(values):
                yield self._portable, {**params, "keys": chunk}


def sqlite_rows(connection: Connection, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """SQLite: the rows of a prebuilt text statement, run on the driver's connection itself, in
    the transaction ``connection`` has open. Only for statements whose columns are plain
    integers and text, which SQLAlchemy's result rows would merely wrap: story matching runs
    two such lookups a poll, hundreds of rows each, and the wrapping cost more than the rows.
    A driver error comes as the SQLAlchemy error ``execute`` would have raised."""
    driver = connection.connection.driver_connection
    assert driver is not None, "the connection is open: it has a transaction"
    try:
        return list(driver.execute(statement.text, params).fetchall())
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement.text, dict(params), exc, sqlite3.Error) from exc


@functools.cache
def update_by_id(model: type[Base], columns: tuple[str, ...]) -> Any:
    """UPDATE <table> SET <columns> WHERE id = :row_id, one prebuilt statement per column set
    (values are bound as ``v_<column>``: a bind named like a column it sets is reserved)."""
    table: Any = model.__table__
    return update(table).where(table.c.id == bindparam("row_id")).values({c: bindparam(f"v_{c}") for c in columns})


def serialize_writers(connection: Connection, key: int) -> None:
    """Make this transaction wait for, and then exclude, every other one calling this with ``key``.

    PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback, or when
    the connection dies); the transaction's later statements see what the one it waited for
    committed. SQLite: take the write lock up front with ``BEGIN IMMEDIATE``; a transaction
    that read first and wrote later would fail with "database is locked" instead of waiting
    when another process wrote in between.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def insert_ignore(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """INSERT … ON CONFLICT DO NOTHING: idempotent writes under retries and concurrency."""
    if not rows:
        return 0
    session.execute(insert_ignore_statement(session.get_bind().dialect.name, model), rows)
    return len(rows)


def insert_ignore_statement(dialect: str, model: type[Base]) -> Any:
    table: Any = model.__table__
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return table.insert()  # pragma: no cover - other backends get plain inserts


def upsert_statement(
    dialect: str, model: type[Base], values: dict[str, Any], keys: list[str], changes: list[str]
) -> Any:
    """INSERT … ON CONFLICT (``keys``) DO UPDATE SET ``changes``: the row, whoever wrote it first."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(model).values(values)
    return stmt.on_conflict_do_update(index_elements=keys, set_={k: values[k] for k in changes})


class RawInsert:
    """An INSERT … ON CONFLICT DO NOTHING of many small rows, handed to the driver's executemany.

    SQLAlchemy spends ~10 µs of Python per row of an executemany (building and converting
    each parameter set); a first ingest writes ~10 story-matching keys per item, so for
    those rows that was a third of the main process's CPU. The SQL is compiled by
    SQLAlchemy once per dialect, table and columns; rows are tuples in ``columns`` order,
    with values already in the driver's form (``convert`` applies each column type's own
    conversion, so nothing about storage formats is restated here).
    """

    _compiled: ClassVar[dict[tuple[str, str, tuple[str, ...]], RawInsert]] = {}

    def __init__(self, dialect: Dialect, model: type[Base], columns: tuple[str, ...]) -> None:
        self._table: Any = model.__table__
        self._dialect = dialect
        stmt = insert_ignore_statement(dialect.name, model).values({name: bindparam(name) for name in columns})
        # for_executemany: without it PostgreSQL's compiler adds an implicit RETURNING id.
        compiled = stmt.compile(dialect=dialect, for_executemany=True)
        self.sql = compiled.string
        # Positional (SQLite's qmark): tuples in the order the SQL wants them, which need not
        # be the order the columns were given in. Named (psycopg's pyformat): any order.
        self._positional = compiled.positiontup is not None
        self._columns = tuple(compiled.positiontup) if compiled.positiontup is not None else columns
        # Tuples given to ``run`` are in ``columns`` order; reordered only if the SQL differs.
        self._reorder = None if self._columns == columns else [columns.index(name) for name in self._columns]
        self._conversions = [
            (index, process)
            for index, name in enumerate(self._columns)
            if (process := self._bind_processor(name)) is not None
        ]

    @classmethod
    def of(cls, dialect: Dialect, model: type[Base], columns: tuple[str, ...]) -> RawInsert:
        key = (dialect.name, model.__tablename__, columns)
        if key not in cls._compiled:
            cls._compiled[key] = cls(dialect, model, columns)
        return cls._compiled[key]

    def _bind_processor(self, column: str) -> Callable[[Any], Any] | None:
        # The dialect's own implementation: psycopg's JSON, for one, wraps values itself.
        processor: Callable[[Any], Any] | None = (
            self._table.c[column].type.dialect_impl(self._dialect).bind_processor(self._dialect)
        )
        return processor

    def convert(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Rows given as column → value dicts, as driver-ready tuples in the SQL's order (each
        column type's own bind conversion, e.g. aware datetime → naive UTC → SQLite text)."""
        columns, conversions = self._columns, self._conversions
        out = []
        for row in rows:
            values = [row[name] for name in columns]
            for index, process in conversions:
                values[index] = process(values[index])
            out.append(tuple(values))
        return out

    def run(self, connection: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Execute for ``rows``, tuples in the ``columns`` order given to ``of``."""
        self._execute(connection, rows if self._reorder is None else [tuple(r[i] for i in self._reorder) for r in rows])

    def run_dicts(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Execute for rows given as column → value dicts, converted (see ``convert``); how many
        rows were inserted (see ``_execute``)."""
        return self._execute(connection, self.convert(rows))

    def _execute(self, connection: Connection, rows: list[tuple[Any, ...]]) -> int:
        """Run the executemany; the rows it inserted, those ON CONFLICT skipped left out. Both
        drivers we support sum an executemany's row counts (sqlite3, and psycopg since 3.1),
        which ``tests/test_store.py`` checks with a batch that repeats stored keys."""
        if not rows:
            return 0
        params: list[Any] = rows
        if not self._positional:
            params = [dict(zip(self._columns, r, strict=True)) for r in rows]
        return rowcount(connection.exec_driver_sql(self.sql, params))


def epoch(moment: datetime) -> int:
    """Unix seconds, the unit of ``MatchKeyRow.sort_epoch``."""
    return int(moment.timestamp())


def chunks(values: Sequence[T]) -> Iterator[list[T]]:
    values = list(values)
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def storage_error(exc: SQLAlchemyError) -> StorageError:
    message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")
    # PostgreSQL: 22 data exception, 23 integrity constraint, 54 program limit exceeded (an
    # index entry too large): the values were refused, the database itself is fine.
    refused = isinstance(exc, DataError | IntegrityError) or sqlstate[:2] in DATA_REFUSED_SQLSTATE_CLASSES
    return StorageError(
        f"database error: {message}", transient=_transient(exc), data_refused=refused and not _transient(exc)
    )


def _transient(exc: SQLAlchemyError) -> bool:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(orig or exc)
