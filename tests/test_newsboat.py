"""A real feed reader (newsboat) subscribed to the World feed sees every entry once, and
nothing new after a rebuild: the acceptance test for "output ids never churn"."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import load_config
from aggregator.store.database import make_engine
from aggregator.store.repository import Store
from tests.conftest import serving, write_config
from tests.feeds import any_dialect
from tests.server import FeedServer, Route

NEWSBOAT = shutil.which("newsboat")
pytestmark = pytest.mark.skipif(NEWSBOAT is None, reason="newsboat is not installed (.ci/run installs it)")
FEEDS, ITEMS = 12, 10


def unread(home: Path, url: str) -> tuple[int, set[str]]:
    (home / "urls").write_text(url + "\n")
    (home / "config").write_text("")
    result = subprocess.run(
        [NEWSBOAT or "newsboat", "-u", "urls", "-c", "cache.db", "-C", "config", "-l", "6", "-d", "newsboat.log",
         "-x", "reload", "print-unread"],
        cwd=home, env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.strip().split()[0])
    with sqlite3.connect(home / "cache.db") as db:
        guids = {row[0] for row in db.execute("select guid from rss_item")}
    return count, guids


def test_newsboat_sees_every_entry_once_and_nothing_new_after_a_rebuild(server: FeedServer, tmp_path: Path) -> None:
    sources = []
    for n in range(FEEDS):
        server.add(f"/f{n}", Route(body=any_dialect(n, ITEMS), etag=f'"{n}"'))
        sources.append({"name": f"feed {n}", "url": server.url(f"/f{n}"), "tags": ["world"]})
    # The feeds' items of one index report one made-up event in the same words ("talks resume
    # in Geneva ... on Tuesday"), which story matching may join; this test counts entries.
    config = write_config(tmp_path, sources, settings="story_matching: off")
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    home = tmp_path / "reader"
    home.mkdir()
    engine = make_engine(load_config(config).config.settings.database_url)
    try:
        with serving(Store(engine)) as base:
            url = f"{base}/feeds/world.atom"
            count, guids = unread(home, url)
            assert count == FEEDS * ITEMS
            assert all(g.startswith("tag:feeds.test.example,") for g in guids)

            assert main(["--config", str(config), "publish"]) == 0
            assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
            assert unread(home, url) == (FEEDS * ITEMS, guids)

            server.add("/f0", Route(body=any_dialect(0, ITEMS + 3), etag='"0-b"'))
            assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
            count, after = unread(home, url)
            assert count == FEEDS * ITEMS + 3, (home / "newsboat.log").read_text()[-3000:]
            assert guids < after and len(after - guids) == 3
    finally:
        engine.dispose()


def test_newsboat_reads_the_audio_of_a_republished_podcast(server: FeedServer, tmp_path: Path) -> None:
    from tests.test_enclosures import AUDIO, podcast

    server.add("/podcast", Route(body=podcast()))
    config = write_config(tmp_path, [{"name": "Weekly Show", "url": server.url("/podcast")}])
    assert main(["--config", str(config), "poll", "--once"]) == 0
    engine = make_engine(load_config(config).config.settings.database_url)
    try:
        with serving(Store(engine)) as base:
            for fmt in ("rss", "atom"):
                home = tmp_path / f"reader-{fmt}"
                home.mkdir()
                count, _guids = unread(home, f"{base}/feeds/world.{fmt}")
                assert count == 1
                with sqlite3.connect(home / "cache.db") as db:
                    rows = db.execute("select enclosure_url, enclosure_type, author from rss_item").fetchall()
                assert rows == [(AUDIO, "audio/mpeg", "Weekly Show")], fmt
    finally:
        engine.dispose()
