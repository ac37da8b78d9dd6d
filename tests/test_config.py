"""feeds.yaml validation: every problem reported as file:line: field: message, no traceback."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import load_config, parse_config, parse_duration
from aggregator.errors import ConfigError

GOOD = """\
settings:
  public_url: https://news.example.org/
  default_interval: 15m
sources:
  - name: One
    url: https://one.example.com/feed
    tags: [world]
  - name: Two
    url: https://two.example.com/rss
    interval: 2h
outputs:
  - slug: world
    title: World
    tags: [world]
    exclude:
      - keywords: [sport]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "feeds.yaml")
    return caught.value.problems


def test_a_good_config_loads_with_defaults_filled_in() -> None:
    config = parse_config(GOOD)
    assert config.settings.public_url == "https://news.example.org"
    assert config.settings.default_interval == timedelta(minutes=15)
    assert config.sources[0].interval is None  # polled at default_interval
    assert config.sources[1].interval == timedelta(hours=2)
    assert config.outputs[0].exclude[0].keywords == ("sport",)
    assert config.settings.effective_user_agent.startswith("aggregator/")
    assert "https://news.example.org" in config.settings.effective_user_agent


def test_missing_url_names_file_line_and_field() -> None:
    found = problems(
        """\
        sources:
          - name: One
            url: https://one.example.com/feed
          - name: Two
            tags: [world]
        """
    )
    assert found == ["feeds.yaml:4: sources[1].url: required field is missing"]


def test_bad_url_points_at_its_line() -> None:
    found = problems(
        """\
        sources:
          - name: One
            url: ftp://one.example.com/feed
        """
    )
    assert found == ["feeds.yaml:3: sources[0].url: not an http(s) URL"]


def test_a_url_with_a_space_in_its_host_or_a_port_out_of_range_is_refused_at_its_line() -> None:
    # Both passed ``check`` and failed only when polled ("cannot resolve", "invalid URL").
    found = problems(
        """\
        sources:
          - name: One
            url: "http://exa mple.com/feed"
          - name: Two
            url: http://127.0.0.1:99999/feed
        """
    )
    assert found == [
        "feeds.yaml:3: sources[0].url: not an http(s) URL: its host 'exa mple.com' has a space or a control character",
        "feeds.yaml:5: sources[1].url: not an http(s) URL: the port of '127.0.0.1:99999' is not a number from 0 "
        "to 65535",
    ]


def test_a_section_with_nothing_under_it_is_empty_and_wrong_kinds_say_what_to_write() -> None:
    # Every line of settings commented out, as an operator trims the shipped file.
    config = parse_config("settings:\n#  data_dir: /srv\nsources:\noutputs:\n")
    assert (config.sources, config.outputs) == ((), ())
    found = problems(
        """\
        sources:
          - name: 2024
            url: https://one.example.com/feed
        outputs:
          - slug: world
            title: World
            sources: One
        """
    )
    assert found == [
        'feeds.yaml:2: sources[0].name: must be text; a number or a date meant as text is written in quotes ("2024")',
        "feeds.yaml:7: outputs[0].sources: must be a list: one '- value' per line, or [a, b] on one line",
    ]


def test_unknown_key_is_reported_where_it_is() -> None:
    found = problems(
        """\
        sources:
          - name: One
            url: https://one.example.com/feed
            intervall: 10m
        """
    )
    assert found == ["feeds.yaml:4: sources[0].intervall: unknown key"]


def test_duplicate_source_name_points_at_both() -> None:
    found = problems(
        """\
        sources:
          - name: One
            url: https://one.example.com/feed
          - name: One
            url: https://two.example.com/feed
        """
    )
    assert found == ["feeds.yaml:4: sources[1].name: duplicate source name 'One' (first at line 2)"]


def test_bad_indentation_is_a_yaml_error_with_a_line() -> None:
    found = problems(
        """\
        sources:
          - name: One
             url: https://one.example.com/feed
        """
    )
    assert len(found) == 1
    assert found[0].startswith("feeds.yaml:3: invalid YAML:")


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        """\
        settings:
          concurrency: 0
        sources:
          - name: One
            url: nope
        outputs:
          - slug: World News
            title: World
            sources: [Missing]
        """
    )
    assert "feeds.yaml:2: settings.concurrency: Input should be greater than or equal to 1" in found
    assert "feeds.yaml:5: sources[0].url: not an http(s) URL" in found
    assert any(p.startswith("feeds.yaml:7: outputs[0].slug: use lowercase") for p in found)


def test_output_naming_an_unknown_source_is_an_error() -> None:
    found = problems(
        """\
        sources:
          - name: One
            url: https://one.example.com/feed
        outputs:
          - slug: world
            title: World
            sources: [One, Tow]
        """
    )
    assert found == ["feeds.yaml:7: outputs[0].sources[1]: no source is named 'Tow'"]


def test_duplicate_yaml_keys_are_not_silently_merged() -> None:
    found = problems(
        """\
        settings:
          listen: 127.0.0.1:8080
          listen: 0.0.0.0:8080
        """
    )
    assert found == ["feeds.yaml:3: settings.listen: duplicate key (first at line 2)"]


def test_rules_are_validated_at_load_time() -> None:
    found = problems(
        """\
        outputs:
          - slug: world
            title: World
            include:
              - pattern: "([unclosed"
              - keywords: [a]
                pattern: b
        """
    )
    assert found[0].startswith("feeds.yaml:5: outputs[0].include[0].pattern: not a valid regular expression")
    assert found[1] == "feeds.yaml:6: outputs[0].include[1]: a rule needs exactly one of 'keywords' or 'pattern'"


def test_a_rule_or_language_that_could_match_nothing_is_refused_at_its_line() -> None:
    found = problems(
        """\
        outputs:
          - slug: world
            title: World
            language: ""
            include:
              - keywords: []
              - keywords: [flood, " "]
              - pattern: storm
                fields: []
        """
    )
    assert found == [
        "feeds.yaml:4: outputs[0].language: must be a language code such as 'en'; leave it out to keep items in "
        "any language",
        "feeds.yaml:6: outputs[0].include[0].keywords: needs at least one keyword, and no empty one: this rule would "
        "match nothing",
        "feeds.yaml:7: outputs[0].include[1].keywords: needs at least one keyword, and no empty one: this rule would "
        "match nothing",
        "feeds.yaml:9: outputs[0].include[2].fields: needs at least one field to search (title, summary, content, "
        "categories, author, link)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (90, timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
    ],
)
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "-5m", 0, True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_database_url_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(GOOD)
    monkeypatch.delenv("AGGREGATOR_DATABASE_URL", raising=False)
    assert config.settings.database_url.startswith("sqlite:///")
    monkeypatch.setenv("AGGREGATOR_DATABASE_URL", "postgresql://db.example/agg")
    assert config.settings.database_url == "postgresql://db.example/agg"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("AGGREGATOR_CONFIG", str(path))
    assert load_config().path == path


def test_the_shipped_feeds_yaml_is_valid() -> None:
    loaded = load_config(Path(__file__).resolve().parents[1] / "feeds.yaml")
    world = [o for o in loaded.config.outputs if o.slug == "world"]
    assert world and world[0].title == "World"
    assert len([s for s in loaded.config.sources if "world" in s.tags]) >= 12


def test_check_command_exit_codes_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert main(["--config", str(good), "check"]) == 0
    assert "ok (2 sources, 1 outputs)" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            sources:
              - name: One
                url: https://one.example.com/feed
                colour: blue
              - name: One
                url: https://two.example.com/feed
              - name: Three
            """
        )
    )
    assert main(["--config", str(bad), "check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{bad}:4: sources[0].colour: unknown key",
        f"{bad}:5: sources[1].name: duplicate source name 'One' (first at line 2)",
        f"{bad}:7: sources[2].url: required field is missing",
    ]
    assert "Traceback" not in "\n".join(err)


def test_help_and_check_leave_the_store_unimported(tmp_path: Path) -> None:
    """``aggregator --help`` and ``check`` open no database, and import none of the store
    (SQLAlchemy, every table): in a fresh process that was half of their time."""
    import subprocess
    import sys

    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    probe = (
        "import contextlib, io, sys\n"
        "from aggregator.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(sys.argv[1:])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy' or m.startswith('aggregator.store')))\n"
    )
    for args in (["--help"], ["--config", str(good), "check"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "[]", (args, done.stdout[:300])


def test_check_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "check"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_bad_arguments_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 1
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_a_slug_ending_in_a_newline_is_refused() -> None:
    # YAML's double-quoted "world\n" is a slug with a newline: match() with "$" let it through
    # (found by the security audit), and it named files and URLs.
    found = problems(
        """
        sources:
          - name: One
            url: https://one.example/feed
        outputs:
          - slug: "world\\n"
            title: World
        """
    )
    assert any(p.startswith("feeds.yaml:6: outputs[0].slug: use lowercase") for p in found), found
