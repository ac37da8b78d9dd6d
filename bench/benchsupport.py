"""What the benchmarks share: pairwise precision and recall, made-up but varied text, the load average, a throwaway
PostgreSQL database with the statistics upkeep a server without autovacuum lacks, and the
scaffold of their feed servers.

Imported by the scripts beside it (``python bench/x.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import statistics
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The checkout these benchmarks belong to. Run from a worktree with the main checkout's
virtualenv, a benchmark would import the main checkout's ``aggregator`` (the editable install
wins over the worktree) and measure the wrong code; so this tree goes first on ``sys.path``, and
on ``PYTHONPATH`` for the ``aggregator`` commands a benchmark starts (``own_tree_env``)."""
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))


def own_tree_env() -> dict[str, str]:
    """The environment for an ``aggregator`` command a benchmark starts: this tree's package first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in (str(REPO), env.get("PYTHONPATH", "")) if path)
    return env


SYLLABLES = [a + b for a in "bdfklmnrst" for b in "aeiou"]  # 50
VOCABULARY = [a + b + c for a in SYLLABLES[:10] for b in SYLLABLES for c in ("", "n", "r", "s")]  # 2,000 words


def serve_until_stdin_closes(protocol: Callable[[], asyncio.Protocol]) -> None:
    """Serve ``protocol`` on a free 127.0.0.1 port, print the port, stop when stdin closes.

    The parent kills the server when done; if the parent dies first, stdin closes and the
    server stops (at most an hour later in any case).
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        done = asyncio.Event()

        def watch_stdin() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 3600)
        server.close()

    asyncio.run(main())


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


class PairRates:
    """Pairwise precision and recall of a clustering, from its pair counts (1.0 when there is
    nothing to count): the story benchmarks score every set this way."""

    true_pairs: int
    predicted_pairs: int
    correct_pairs: int

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a share of ``successes`` in ``trials`` independent trials:
    the range a figure such as "linked 18 of 34 same-event pairs" leaves for the share on pairs
    like them, so that a target is not read as met or missed on a pair or two. Wilson's rather
    than the normal approximation's, which leaves [0, 1] and is too narrow on a few dozen
    trials near 0 or 1."""
    if trials <= 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / trials
    middle = share + z * z / (2 * trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return max(0.0, (middle - half) / scale), min(1.0, (middle + half) / scale)
