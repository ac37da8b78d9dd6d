"""What the benchmarks share: made-up but varied text, the load average, and a throwaway
PostgreSQL database with the statistics upkeep a server without autovacuum lacks.

Imported by the scripts beside it (``python bench/x.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import uuid
from collections.abc import Iterator

SYLLABLES = [a + b for a in "bdfklmnrst" for b in "aeiou"]  # 50
VOCABULARY = [a + b + c for a in SYLLABLES[:10] for b in SYLLABLES for c in ("", "n", "r", "s")]  # 2,000 words


def words(rng: random.Random, count: int) -> str:
    """Diverse text (2,000 made-up words), so story matching sees what real news gives it."""
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def admin_dsn(url: str) -> str:
    """A libpq DSN for psycopg from an SQLAlchemy URL of the same server."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def database(admin_url: str, keep: bool) -> Iterator[str]:
    """A fresh database ``bench_<hex>`` on the server of ``admin_url``, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:10]}"
    dsn = admin_dsn(admin_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            make_url(admin_url)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def autoanalyze(url: str, every: float) -> Iterator[None]:
    """Stand in for autovacuum's ANALYZE when the server runs without autovacuum (as CI's does).

    Without it the statistics of the growing tables stay "unknown" for the whole run, and a
    plan that psycopg prepared on the first, tiny tables (a sequential scan) is never
    replanned: the per-poll cost then grows with the table, which a production server with
    autovacuum would not show. ``every`` <= 0 turns this off.
    """
    if every <= 0:
        yield
        return
    import psycopg

    stop = threading.Event()

    def loop() -> None:
        with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
            while not stop.wait(every):
                conn.execute("analyze")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
