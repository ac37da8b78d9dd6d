"""The Publisher: its decisions without a database, the CLI publishing without the poll
machinery, and what an output with no entries says."""

from __future__ import annotations

import asyncio
import calendar
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from aggregator.cli import main, resolve_story
from aggregator.config import Output, Settings, load_config
from aggregator.pipeline import Pipeline, poll_once
from aggregator.publish import Rendering, render_all
from aggregator.publisher import Publisher, affected_outputs, config_fingerprint, is_stale, outputs_to_publish
from aggregator.records import etag_of
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.feeds import rss2
from tests.server import FeedServer, Route

WORLD = Output(slug="world", title="World")  # every source
SCIENCE = Output(slug="science", title="Science", tags=("science",))
BBC = Output(slug="bbc", title="BBC", sources=("BBC",))
OUTPUTS = (WORLD, SCIENCE, BBC)


def slugs(outputs: list[Output]) -> list[str]:
    return [o.slug for o in outputs]


@pytest.mark.parametrize(
    ("changed", "stale", "expected"),
    [
        ({}, (), []),  # nothing new (all 304s), nothing stale: nothing is rendered
        ({"Reuters": ("world",)}, (), ["world"]),
        ({"Nature": ("science",)}, (), ["world", "science"]),
        ({"BBC": ()}, (), ["world", "bbc"]),
        ({"Nature": ("science",), "BBC": ()}, (), ["world", "science", "bbc"]),
        ({}, ("bbc",), ["bbc"]),  # settings changed: re-rendered without a new item
        ({"BBC": ()}, ("science", "bbc"), ["world", "science", "bbc"]),  # config order, each once
        ({}, ("gone",), []),  # a stale slug no longer configured is not published
    ],
)
def test_a_poll_publishes_the_outputs_its_changes_touch_and_the_stale_ones(
    changed: dict[str, tuple[str, ...]], stale: tuple[str, ...], expected: list[str]
) -> None:
    assert slugs(outputs_to_publish(OUTPUTS, changed, stale)) == expected


def test_affected_outputs_follow_the_outputs_rules_for_sources_and_tags() -> None:
    assert slugs(affected_outputs(OUTPUTS, {"Nature": ("science", "europe")})) == ["world", "science"]
    assert slugs(affected_outputs(OUTPUTS, {"bbc": ()})) == ["world"]  # source names are exact
    assert affected_outputs((SCIENCE, BBC), {}) == []


def test_an_output_is_stale_unrendered_under_other_settings_or_behind_a_source_that_changed() -> None:
    at = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert is_stale("f", None, [])  # never rendered whole
    assert is_stale("f", ("g", at), [])  # under other settings, or by another version
    assert not is_stale("f", ("f", at), [at, at - timedelta(hours=1)])  # its sources' changes are in it
    assert is_stale("f", ("f", at), [at - timedelta(hours=1), at + timedelta(seconds=1)])  # one came after


def test_the_config_fingerprint_moves_with_what_the_bytes_depend_on_only() -> None:
    settings = Settings(public_url="https://news.example")
    base = config_fingerprint(WORLD, settings)
    assert config_fingerprint(WORLD, Settings(public_url="https://news.example")) == base
    assert config_fingerprint(WORLD, settings.model_copy(update={"listen": "0.0.0.0:9000"})) == base
    assert config_fingerprint(WORLD, Settings(public_url="https://other.example")) != base
    assert config_fingerprint(WORLD, settings.model_copy(update={"websub_hub": "https://hub.example/"})) != base
    assert config_fingerprint(WORLD.model_copy(update={"max_entries": 5}), settings) != base
    assert config_fingerprint(BBC, settings) != base


def test_one_etag_for_published_bytes() -> None:
    body = b"<feed/>"
    assert etag_of(body) == etag_of(b"<feed/>")
    assert etag_of(body) != etag_of(b"<feed></feed>")
    assert etag_of(body).startswith('"') and etag_of(body).endswith('"') and len(etag_of(body)) == 34
    assert Rendering("world", "atom", "application/atom+xml", body).etag == etag_of(body)


# Runs a CLI command in a fresh interpreter, then reports what it left running or loaded.
PROBE = """
import json, multiprocessing, sys, threading
from aggregator.cli import main
code = main(sys.argv[1:])
print(json.dumps({
    "code": code,
    "pipeline_loaded": "aggregator.pipeline" in sys.modules,
    "children": len(multiprocessing.active_children()),
    "threads": sorted(t.name for t in threading.enumerate()),
}))
"""


@pytest.mark.parametrize("command", [["publish"], ["items", "world"], ["pin", "world", "1"]])
def test_publishing_commands_start_no_parse_pool_and_no_writer_threads(
    command: list[str], server: FeedServer, tmp_path: Path
) -> None:
    server.add("/f", Route(body=rss2(0, 5)))
    config = write_config(tmp_path, [{"name": "n", "url": server.url("/f")}], settings="parse_workers: 2")
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    atom = tmp_path / "data" / "feeds" / "world.atom"
    atom.unlink()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "--config", str(config), *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    # No Pipeline could have been built: its module (parse pool, writer threads) is never loaded.
    assert report["pipeline_loaded"] is False
    assert report["children"] == 0
    assert report["threads"] == ["MainThread"]
    if command[0] == "items":
        assert sum(line.startswith("+ ") for line in done.stdout.splitlines()) == 5  # all five curated in
    else:  # publish (forced files) and pin (republished: the missing file is written again)
        assert len(feedparser.parse(atom.read_bytes()).entries) == 5


def test_an_empty_output_says_when_it_last_changed_and_keeps_its_bytes(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """A fresh install's World feed, or an output whose rules match nothing yet, is a feed with
    no entries. Its ``updated`` (RSS lastBuildDate) must be a real time, not 1970, which feed
    readers show as the feed's date, and must not move at every publish (304s keep coming)."""
    server.add("/f", Route(body=rss2(0, 1)))
    config = load_config(
        write_config(tmp_path, [{"name": "n", "url": server.url("/f")}], settings=f"database: {database_url}")
    ).config
    engine = make_engine(database_url)
    ensure_schema(engine)
    store = Store(engine)
    atom_file = Path(config.settings.resolved_output_dir) / "world.atom"
    rss_file = atom_file.with_suffix(".rss")
    start = datetime(2026, 12, 4, 9, 30, 15, 250_000, tzinfo=UTC)

    def updated() -> tuple[datetime, datetime]:
        atom, rss = feedparser.parse(atom_file.read_bytes()), feedparser.parse(rss_file.read_bytes())
        return (
            datetime.fromisoformat(atom.feed.updated),
            datetime.fromtimestamp(calendar.timegm(rss.feed.updated_parsed), UTC),
        )

    Publisher(config, store, clock=lambda: start).publish()  # nothing polled yet
    assert feedparser.parse(atom_file.read_bytes()).entries == []
    assert updated() == (start.replace(microsecond=0),) * 2
    first = atom_file.read_bytes()
    assert Publisher(config, store, clock=lambda: start + timedelta(hours=1)).publish() == []  # nothing changed
    assert atom_file.read_bytes() == first

    # Entries come, then the output empties (its only story blocked): that is when it changed.
    polled = start + timedelta(hours=2)
    store.sync_sources(config.source_specs(), polled)
    asyncio.run(poll_once(Pipeline(config, store, clock=lambda: polled), all_sources=True))
    Publisher(config, store, clock=lambda: polled).publish()
    assert len(feedparser.parse(atom_file.read_bytes()).entries) == 1
    emptied = start + timedelta(hours=3)
    story, _ = resolve_story(store, "https://news.example.com/feed0/story0")
    store.set_editorial("world", story, "block", emptied)
    Publisher(config, store, clock=lambda: emptied).publish()
    assert feedparser.parse(atom_file.read_bytes()).entries == []
    assert updated() == (emptied.replace(microsecond=0),) * 2

    # An install whose stored empty feed says 1970 (as this one's did) gets a real time.
    output = config.outputs[0]
    for old in render_all(output, [], config.settings.public_url):
        store.save_published(old.slug, old.format, old.media_type, old.body, old.etag, emptied)
    assert b"1970-01-01" in store.published("world", "atom").body  # type: ignore[union-attr]
    upgraded = start + timedelta(days=1)
    Publisher(config, store, clock=lambda: upgraded).publish()
    assert updated() == (upgraded.replace(microsecond=0),) * 2
    engine.dispose()


def test_an_output_removed_from_the_config_is_withdrawn_and_its_archives_kept(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add("/f", Route(body=rss2(1, 5)))
    outputs = """
        outputs:
          - slug: world
            title: World
          - slug: extra
            title: Extra
        """
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}], outputs=outputs)
    assert main(["--config", str(config), "poll", "--once"]) == 0
    feeds = tmp_path / "data" / "feeds"
    assert {"extra.atom", "extra.rss", "extra.json", "extra.html"} <= {p.name for p in feeds.iterdir()}
    archives = sorted((feeds / "extra" / "archive").iterdir())  # the weeks before this one, frozen
    assert archives

    # The output leaves the config: the next poll, though nothing changed, withdraws it.
    config.write_text(config.read_text().replace("  - slug: extra\n    title: Extra\n", ""))
    assert "extra" not in config.read_text()
    assert main(["--config", str(config), "poll", "--once"]) == 0
    assert not any(p.name.startswith("extra.") for p in feeds.iterdir())
    assert sorted((feeds / "extra" / "archive").iterdir()) == archives and (feeds / "world.atom").exists()
    loaded = load_config(config)
    engine = make_engine(loaded.config.settings.database_url)
    try:
        store = Store(engine)
        assert store.published("extra", "atom") is None and store.published("world", "atom") is not None
        assert "extra" not in store.published_slugs()
    finally:
        engine.dispose()
    assert "output extra is no longer configured" in capsys.readouterr().err


def _entries(path: Path) -> set[str]:
    return {item["url"] for item in json.loads(path.read_text())["items"]}


def test_items_a_failed_publish_left_out_are_published_by_the_next_poll_though_it_brings_nothing(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add("/f", Route(body=rss2(1, 3)))
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}])
    assert main(["--config", str(config), "poll", "--once"]) == 0
    feeds = tmp_path / "data" / "feeds"
    assert len(_entries(feeds / "world.json")) == 3

    # New items are stored, and publishing them fails: the output directory cannot be written.
    server.add("/f", Route(body=rss2(1, 5)))
    feeds.rename(tmp_path / "moved")
    feeds.write_text("not a directory")
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 2
    assert "cannot write" in capsys.readouterr().err
    feeds.unlink()
    (tmp_path / "moved").rename(feeds)

    # The next poll has nothing due and nothing new, and publishes what was left out.
    assert main(["--config", str(config), "poll", "--once"]) == 0
    assert "polled 0 sources" in capsys.readouterr().out
    assert len(_entries(feeds / "world.json")) == 5


def test_a_file_behind_its_stored_feed_and_another_workers_directory_are_brought_up_to_it(
    server: FeedServer, tmp_path: Path
) -> None:
    server.add("/f", Route(body=rss2(1, 3)))
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_config(tmp_path / "a", [{"name": "one", "url": server.url("/f")}], settings=f"database: {database}")
    second = write_config(tmp_path / "b", [{"name": "one", "url": server.url("/f")}], settings=f"database: {database}")
    assert main(["--config", str(first), "poll", "--once"]) == 0
    mine, theirs = tmp_path / "a" / "data" / "feeds", tmp_path / "b" / "data" / "feeds"
    older = (mine / "world.atom").read_bytes()
    server.add("/f", Route(body=rss2(1, 5)))
    assert main(["--config", str(first), "poll", "--once", "--all"]) == 0
    # A process killed between storing the new rendering and writing its file leaves this.
    (mine / "world.atom").write_bytes(older)

    # Another worker's poll with nothing new writes its own directory from the stored feeds.
    assert main(["--config", str(second), "poll", "--once"]) == 0
    assert len(_entries(theirs / "world.json")) == 5
    assert (theirs / "world.atom").read_bytes() != older
    # And the first worker's next poll, with nothing new, mends its file.
    assert main(["--config", str(first), "poll", "--once"]) == 0
    assert (mine / "world.atom").read_bytes() == (theirs / "world.atom").read_bytes()

    # Killed before it recorded the output as rendered, too: the next poll renders it again, the
    # same bytes as stored, and still mends the file.
    (mine / "world.atom").write_bytes(older)
    engine = make_engine(database)
    try:
        Store(engine).mark_rendered("world", "config", "another version's", datetime(2020, 1, 1, tzinfo=UTC))
    finally:
        engine.dispose()
    assert main(["--config", str(first), "poll", "--once"]) == 0
    assert (mine / "world.atom").read_bytes() == (theirs / "world.atom").read_bytes()


def test_a_publish_reads_only_the_files_written_since_it_last_checked_them(
    server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon checks every output's files against the stored feeds at every cycle
    # (restore_files); it hashed each file whole every time, changed or not.
    import aggregator.publisher as publisher_module

    server.add("/f", Route(body=rss2(1, 3)))
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}])
    assert main(["--config", str(config), "poll", "--once"]) == 0
    from aggregator.publish import etag_of_file as real

    hashed: list[str] = []

    def counted(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(publisher_module, "etag_of_file", counted)
    feeds = tmp_path / "data" / "feeds"
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'aggregator.db'}")
    try:
        publisher = Publisher(load_config(config).config, Store(engine))
        assert publisher.restore_files(feeds) == []
        assert sorted(hashed) == ["world.atom", "world.html", "world.json", "world.rss"]
        hashed.clear()
        assert publisher.restore_files(feeds) == []
        assert hashed == []  # none written since: none read again
        (feeds / "world.json").write_text("{}")
        assert publisher.restore_files(feeds) == ["world.json"]
        assert hashed == ["world.json"] and len(_entries(feeds / "world.json")) == 3
    finally:
        engine.dispose()
