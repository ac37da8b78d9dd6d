"""The command line finds the service's data, and says so when it is pointed elsewhere.

One order everywhere: --data-dir / $AGGREGATOR_DATA_DIR, then settings.data_dir, then
systemd's $STATE_DIRECTORY, then ./data. A command that only reads or edits a database
refuses to start a new empty one; ``check`` warns about sources no output selects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import DATA_DIR_ENV, Settings
from tests.conftest import postgres_database
from tests.server import FeedServer, Route

RSS = (
    b"<rss version='2.0'><channel><title>T</title><link>https://t.example/</link><description>d</description>"
    b"<item><title>Hello</title><link>https://t.example/1</link><guid>https://t.example/1</guid></item>"
    b"</channel></rss>"
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--data-dir sets $AGGREGATOR_DATA_DIR in the process; monkeypatch puts it back after the test."""
    monkeypatch.setenv(DATA_DIR_ENV, "")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("AGGREGATOR_DATABASE_URL", raising=False)


def service_config(path: Path, url: str, extra: str = "") -> Path:
    """A config like /etc/aggregator/feeds.yaml: no data_dir of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "settings:\n  allow_private_networks: true\n  parse_workers: 0\n"
        + extra
        + f"sources:\n  - name: Tee\n    url: {url}\noutputs:\n  - slug: world\n    title: World\n"
    )
    return path


def test_the_order_that_chooses_the_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().data_dir_choice == (Path("data"), "the default, ./data in the working directory")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/aggregator")
    assert Settings().resolved_data_dir == Path("/var/lib/aggregator")
    assert Settings(data_dir="/srv/agg").data_dir_choice == (Path("/srv/agg"), "settings.data_dir")
    monkeypatch.setenv(DATA_DIR_ENV, "/opt/state")
    assert Settings(data_dir="/srv/agg").resolved_data_dir == Path("/opt/state")
    assert Settings(data_dir="/srv/agg").database_url == "sqlite:////opt/state/aggregator.db"


def test_a_command_run_elsewhere_refuses_an_empty_database_and_finds_the_right_one(
    server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add("/t", Route(body=RSS))
    config = service_config(tmp_path / "etc" / "feeds.yaml", server.url("/t"))
    state = tmp_path / "state"
    # The service polls with its data directory (the systemd unit sets $AGGREGATOR_DATA_DIR).
    assert main(["--config", str(config), "--data-dir", str(state), "poll", "--once"]) == 0
    assert (state / "aggregator.db").exists() and (state / "feeds" / "world.atom").exists()
    os.environ[DATA_DIR_ENV] = ""
    capsys.readouterr()

    # An operator in their home directory forgets it: refused, nothing created.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    for command in (["sources"], ["items", "world"], ["pin", "world", "1"], ["publish"], ["db", "prune"]):
        assert main(["--config", str(config), *command]) == 1, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"no database at {home / 'data' / 'aggregator.db'}; data directory {home / 'data'} (the default" in err
        assert "--data-dir" in err and "aggregator db upgrade" in err
    assert list(home.iterdir()) == []

    # Each documented way finds the service's data.
    assert main(["--config", str(config), "--data-dir", str(state), "sources", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["Tee"]
    os.environ[DATA_DIR_ENV] = str(state)
    assert main(["--config", str(config), "sources", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["items"] == 1
    os.environ[DATA_DIR_ENV] = ""
    configured = service_config(tmp_path / "etc2" / "feeds.yaml", server.url("/t"), f"  data_dir: {state}\n")
    assert main(["--config", str(configured), "items", "world", "--json"]) == 0
    assert [row["title"] for row in json.loads(capsys.readouterr().out)] == ["Hello"]

    # db upgrade is how a new database is started on purpose.
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert "database migrated from empty" in capsys.readouterr().out
    assert main(["--config", str(config), "sources", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_data_directory_that_cannot_be_made_and_a_story_past_any_id_are_one_line_errors(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add("/t", Route(body=RSS))
    config = service_config(tmp_path / "etc" / "feeds.yaml", server.url("/t"))
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory")
    assert main(["--config", str(config), "--data-dir", str(in_the_way / "state"), "poll", "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aggregator: cannot create the directory {in_the_way / 'state'}: ") and err.count("\n") == 1

    state = tmp_path / "state"
    assert main(["--config", str(config), "--data-dir", str(state), "poll", "--once"]) == 0
    capsys.readouterr()
    huge = "9" * 20  # past a signed 64-bit integer, which the driver refuses to send
    for command in (["story", huge], ["pin", "world", huge]):
        assert main(["--config", str(config), "--data-dir", str(state), *command]) == 1, command
        err = capsys.readouterr().err
        assert err == f"aggregator: no story matches {huge!r} (use a story number, its tag: id, or an item URL)\n"


def test_an_empty_database_is_refused_on_both_backends(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = service_config(tmp_path / "feeds.yaml", "https://t.example/rss", f"  database: {database_url}\n")
    assert main(["--config", str(config), "sources"]) == 1
    err = capsys.readouterr().err
    assert ("is empty" in err or "no database at" in err) and "aggregator db upgrade" in err
    assert "settings.database" in err and "--data-dir" not in err  # no data directory to point elsewhere
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "sources"]) == 0


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    yield from postgres_database()


def test_a_postgres_url_as_libpq_and_hosting_services_write_it_is_postgresql(
    postgresql_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "postgres://" (libpq's own scheme, and the one many hosts hand out) was refused with
    # "Can't load plugin: sqlalchemy.dialects:postgres".
    short = "postgres://" + postgresql_url.split("://", 1)[1]
    config = service_config(tmp_path / "feeds.yaml", "https://t.example/rss", f"  database: {short}\n")
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "sources", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_check_warns_about_sources_no_output_selects_and_a_url_an_earlier_source_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "sources:\n"
        "  - name: World One\n    url: https://one.example/rss\n    tags: [world]\n"
        "  - name: Orphan\n    url: https://orphan.example/rss\n    tags: [sport]\n"
        "  - name: Named\n    url: https://named.example/rss\n"
        "  - name: World One again\n    url: https://one.example/rss\n    tags: [world]\n"
        "outputs:\n"
        "  - slug: world\n    title: World\n    tags: [world]\n    sources: [Named]\n"
        "  - slug: sport\n    title: Sport\n    tags: [sports]\n"
    )
    assert main(["--config", str(config), "check"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{config}:5: sources[1]: warning: no output selects 'Orphan' (no output names it or one of its tags sport)",
        f"{config}:10: sources[3]: warning: 'World One again' has the URL of 'World One' (sources[0]): its items "
        "would all be stored twice",
        f"{config}:18: outputs[1]: warning: no source is tagged 'sports', which 'sport' draws from",
    ]
    assert "ok (4 sources, 2 outputs)" in captured.out


def test_a_service_told_another_data_directory_will_not_start_empty_beside_the_configured_one(
    server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by the upgrade audit: the units set $AGGREGATOR_DATA_DIR, which outranks the
    # data_dir an installation from before them configured; the service began again, empty.
    custom = tmp_path / "custom"
    config = service_config(
        tmp_path / "etc" / "feeds.yaml", server.add("/f", Route(body=RSS)), f"  data_dir: {custom}\n"
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    assert (custom / "aggregator.db").is_file()
    state = tmp_path / "state"
    monkeypatch.setenv(DATA_DIR_ENV, str(state))
    for command in (["poll", "--once"], ["worker"]):
        assert main(["--config", str(config), *command]) == 1
        error = capsys.readouterr().err
        assert f"settings.data_dir in {config} is {custom}, which holds a database" in error
        assert f"chooses {state}, where there is none: refusing to start a new, empty one" in error
        assert not (state / "aggregator.db").exists()
    monkeypatch.setenv(DATA_DIR_ENV, str(custom))  # the same place, named either way: no objection
    assert main(["--config", str(config), "poll", "--once"]) == 0


def test_a_new_database_is_readable_by_its_owner_and_group_only(server: FeedServer, tmp_path: Path) -> None:
    # Found by the security audit: under a shell's usual umask (022) the database, which holds
    # every source URL (tokens in them too), was readable by every user of the machine.
    previous = os.umask(0o022)
    try:
        config = service_config(tmp_path / "feeds.yaml", server.add("/f", Route(body=RSS)), f"  data_dir: {tmp_path}\n")
        assert main(["--config", str(config), "poll", "--once"]) == 0
    finally:
        os.umask(previous)
    database = tmp_path / "aggregator.db"
    assert database.stat().st_mode & 0o777 == 0o640
    for companion in (tmp_path / "aggregator.db-wal", tmp_path / "aggregator.db-shm"):
        if companion.exists():  # SQLite gives them the database's own permissions
            assert companion.stat().st_mode & 0o777 == 0o640, companion
    assert (tmp_path / "feeds" / "world.atom").stat().st_mode & 0o004  # the outputs stay readable for a web server
