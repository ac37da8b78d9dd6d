"""A reload (SIGHUP or an edited feeds.yaml) applies every setting, or names what needs a restart.

One test per class of setting, each on a real daemon process sent SIGHUP after its
config file was rewritten: what the fetcher sends and refuses, the story-id authority,
the scheduler's tick, and the settings only a restart can apply.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from aggregator.config import Settings
from aggregator.daemon import RESTART_SETTINGS, restart_needed
from aggregator.pipeline import fetch_options
from tests.conftest import write_config
from tests.feeds import any_dialect, rss2
from tests.server import FeedServer, Route
from tests.test_daemon import aggregator, free_port, wait_for

FAST = "tick_seconds: 0.2"


@contextmanager
def daemon(config: Path, cwd: Path, command: str = "worker") -> Iterator[subprocess.Popen[str]]:
    process = aggregator("--config", str(config), command, cwd=cwd)
    try:
        wait_for(lambda: "sources: " in log_of(cwd))
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_of(cwd)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in log_of(cwd)


def log_of(cwd: Path) -> str:
    path = cwd / "daemon.log"
    return path.read_text() if path.exists() else ""


def reload(process: subprocess.Popen[str], cwd: Path) -> None:
    """SIGHUP, and wait until the daemon says it reloaded (the file watcher may beat it to it)."""
    before = log_of(cwd).count("config reloaded")
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: log_of(cwd).count("config reloaded") > before)


def query(db: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def user_agents(server: FeedServer) -> set[str]:
    return {r.headers.get("user-agent", "") for r in server.requests}


def test_fetch_settings_apply_on_reload(server: FeedServer, tmp_path: Path) -> None:
    """User agent, limits and the private-network guard live in the Fetcher: it is rebuilt."""
    server.add("/f", Route(body=any_dialect(1, 3)))
    sources = [{"name": "feed", "url": server.url("/f"), "interval": 1}]
    write_config(tmp_path, sources, settings=f"{FAST}\nuser_agent: first-agent/1")
    with daemon(tmp_path / "feeds.yaml", tmp_path) as process:
        wait_for(lambda: "first-agent/1" in user_agents(server))
        write_config(tmp_path, sources, settings=f"{FAST}\nuser_agent: second-agent/2")
        reload(process, tmp_path)
        wait_for(lambda: "second-agent/2" in user_agents(server))
        # The guard: 127.0.0.1 is refused once private networks are no longer allowed.
        write_config(tmp_path, sources, settings=f"{FAST}\nuser_agent: second-agent/2\nallow_private_networks: false")
        reload(process, tmp_path)
        db = tmp_path / "data" / "aggregator.db"
        wait_for(lambda: "private, loopback" in (query(db, "select last_error from sources")[0][0] or ""))
    assert "user_agent changed" not in log_of(tmp_path)


def test_story_ids_follow_a_new_public_url(server: FeedServer, tmp_path: Path) -> None:
    """Stories first seen after the reload get the new authority; existing ids never change."""
    server.add("/f", Route(body=rss2(1, 2)))
    sources = [{"name": "feed", "url": server.url("/f"), "interval": 1}]
    # The generated items are one template with other numbers: semantic matching would rightly
    # take the later ones as more reports of the first two, and no new story would be minted.
    matching = "story_matching: lexical"
    write_config(tmp_path, sources, settings=f"{FAST}\n{matching}\npublic_url: http://first.example")
    db = tmp_path / "data" / "aggregator.db"

    def authorities() -> list[str]:
        return sorted(uid.split(",")[0] for (uid,) in query(db, "select uid from stories"))

    with daemon(tmp_path / "feeds.yaml", tmp_path) as process:
        wait_for(lambda: authorities() == ["tag:first.example"] * 2)
        write_config(tmp_path, sources, settings=f"{FAST}\n{matching}\npublic_url: http://second.example")
        reload(process, tmp_path)
        server.add("/f", Route(body=rss2(1, 2, start=2)))  # two new stories
        wait_for(lambda: len(authorities()) == 4)
    assert authorities() == ["tag:first.example"] * 2 + ["tag:second.example"] * 2


def test_a_new_tick_interval_applies_on_reload(server: FeedServer, tmp_path: Path) -> None:
    """With an hour between ticks, a source added by the reload is polled only if the tick
    interval changed with it."""
    server.add("/a", Route(body=any_dialect(1, 3)))
    server.add("/b", Route(body=any_dialect(2, 3)))
    first = [{"name": "a", "url": server.url("/a")}]
    write_config(tmp_path, first, settings="tick_seconds: 3600")
    with daemon(tmp_path / "feeds.yaml", tmp_path) as process:
        wait_for(lambda: bool(server.hits("/a")))
        write_config(tmp_path, [*first, {"name": "b", "url": server.url("/b")}], settings=FAST)
        reload(process, tmp_path)
        wait_for(lambda: bool(server.hits("/b")))


def test_serve_alone_follows_an_edit_of_its_config_and_never_touches_the_sources(
    server: FeedServer, tmp_path: Path
) -> None:
    # The HTTP-only process of a deployment whose workers poll, given a config of its own with
    # the outputs and no sources (it reads only what they publish): an output added there (and
    # published by a worker) appears on its front page and in its OPML, and its reload leaves
    # the workers' sources alone. It used to mark every one of them removed, which stopped
    # all polling.
    from aggregator.cli import main

    server.add("/a", Route(body=any_dialect(1, 3)))
    port = free_port()
    sources = [{"name": "a", "url": server.url("/a")}]
    worker = write_config(tmp_path, sources)
    assert main(["--config", str(worker), "poll", "--once"]) == 0
    web = tmp_path / "web"
    web.mkdir()
    settings = f"{FAST}\nlisten: 127.0.0.1:{port}\ndata_dir: {tmp_path / 'data'}"
    config = write_config(web, [], settings=settings)
    process = aggregator("--config", str(config), "serve", cwd=web)
    try:
        wait_for(lambda: "serving on" in log_of(web))
        assert "/feeds/news" not in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        outputs = "outputs:\n  - slug: world\n    title: World\n  - slug: news\n    title: News\n"
        write_config(web, [], settings=settings, outputs=outputs)
        write_config(tmp_path, sources, outputs=outputs)
        assert main(["--config", str(worker), "publish"]) == 0
        wait_for(lambda: "/feeds/news" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text)
        assert 'title="News"' in httpx.get(f"http://127.0.0.1:{port}/opml", timeout=5).text
        assert query(tmp_path / "data" / "aggregator.db", "select name, in_config from sources") == [("a", 1)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_of(web)
    finally:
        process.kill()
    assert "Traceback" not in log_of(web)


def test_a_config_emptied_while_it_is_rewritten_stops_no_source(server: FeedServer, tmp_path: Path) -> None:
    # ": > feeds.yaml" then a new copy: the watch may read the file in between.
    server.add("/a", Route(body=any_dialect(1, 3)))
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}], settings=FAST)
    good = config.read_text()
    with daemon(config, tmp_path):
        config.write_text("")
        wait_for(lambda: "lists no sources (being rewritten?)" in log_of(tmp_path))
        assert query(tmp_path / "data" / "aggregator.db", "select name, in_config from sources") == [("a", 1)]
        config.write_text(good)
    assert "1 removed" not in log_of(tmp_path)


def test_settings_that_need_a_restart_are_named_in_the_log(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    settings = f"{FAST}\nlisten: 127.0.0.1:{port}\nparse_workers: 0"
    write_config(tmp_path, [], settings=settings)
    with daemon(tmp_path / "feeds.yaml", tmp_path, "run") as process:
        # "sources: " (what ``daemon`` waits for) can come before the listener is up on a busy machine.
        wait_for(lambda: "serving on" in log_of(tmp_path))
        changed = f"{FAST}\nlisten: 127.0.0.1:{other}\nparse_workers: 1\ndatabase: sqlite:///{tmp_path}/other.db"
        write_config(tmp_path, [], settings=changed)
        reload(process, tmp_path)
        log = log_of(tmp_path)
        assert "listen changed: takes effect after restart" in log
        assert "parse_workers changed: takes effect after restart" in log
        assert "database changed: takes effect after restart" in log
        # Until then the daemon keeps serving where it was.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["status"] == "ok"


# Each setting with a value other than its default. The test below fails when a setting is
# added without being placed: applied by the reload, or named as needing a restart.
OTHER_VALUES: dict[str, object] = {
    "data_dir": "/elsewhere",
    "database": "sqlite:////elsewhere/x.db",
    "output_dir": "/elsewhere/feeds",
    "listen": "127.0.0.1:9999",
    "public_url": "http://other.example",
    "user_agent": "other/1",
    "default_interval": timedelta(hours=2),
    "min_interval": timedelta(minutes=1),
    "max_interval": timedelta(days=2),
    "max_backoff": timedelta(days=2),
    "concurrency": 3,
    "per_host_concurrency": 1,
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
    "total_timeout": 1.0,
    "max_body_bytes": 4096,
    "max_redirects": 1,
    "allow_private_networks": True,
    "parse_workers": 3,
    "tick_seconds": 1.0,
    "retire_after": timedelta(days=30),
    "status_page": False,
    "websub_hub": "https://hub.example/",
    "retention": None,
    "fetch_log_retention": timedelta(days=1),
    "story_matching": "lexical",
}
# Read from pipeline.config where they are used (scheduling, retention, publishing), so a
# reload applies them by replacing the config.
READ_WHERE_USED = {
    "output_dir", "default_interval", "min_interval", "max_interval", "max_backoff",
    "retire_after", "websub_hub", "retention", "fetch_log_retention", "story_matching",
}  # fmt: skip
REBUILT = {"public_url": "story-id authority (Pipeline.reconfigure)", "tick_seconds": "rescheduled tick"}


def classify(name: str, old: Settings, new: Settings) -> str | None:
    if restart := restart_needed(old, new):
        return f"restart: {restart}"
    if fetch_options_of(old) != fetch_options_of(new):
        return "fetcher rebuilt"
    if name in REBUILT:
        return REBUILT[name]
    if name in READ_WHERE_USED:
        return "read where used"
    return None


def fetch_options_of(settings: Settings) -> object:
    from aggregator.config import Config

    return fetch_options(Config(settings=settings))


def test_every_setting_is_applied_by_a_reload_or_named_as_needing_a_restart() -> None:
    assert set(OTHER_VALUES) == set(Settings.model_fields), "place the new setting in OTHER_VALUES and a class"
    default = Settings()
    for name, value in OTHER_VALUES.items():
        changed = default.model_copy(update={name: value})
        placed = classify(name, default, changed)
        assert placed is not None, f"{name}: neither applied on reload nor named as needing a restart"
    assert restart_needed(default, default.model_copy(update={"data_dir": "/elsewhere"})) == ["database"]
    assert set(restart_needed(default, default.model_copy(update=OTHER_VALUES))) == set(RESTART_SETTINGS)
    # A worker has no listener, a server no parse pool: only what concerns the process is named.
    listen = default.model_copy(update={"listen": "127.0.0.1:9999", "parse_workers": 3})
    assert restart_needed(default, listen, http=False) == ["parse_workers"]
    assert restart_needed(default, listen, poll=False) == ["listen"]
