"""Alembic environment: uses the engine aggregator hands over, or alembic.ini's URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Engine

from aggregator.store.database import make_engine
from aggregator.store.models import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    return make_engine(os.environ.get("AGGREGATOR_DATABASE_URL") or config.get_main_option("sqlalchemy.url") or "")


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        # SQLite cannot ALTER most things in place; batch mode rebuilds tables safely.
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "sqlite":
                # pysqlite begins a transaction only before a statement that changes rows, so a
                # CREATE TABLE before the first INSERT was committed on its own: a migration
                # killed after it (a long one, by systemd's start timeout) left the table behind,
                # and every later upgrade failed on "table ... already exists". Begun here, a
                # migration's every statement commits or rolls back with its revision.
                connection.exec_driver_sql("BEGIN")
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
