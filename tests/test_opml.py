"""OPML round trip and import into feeds.yaml without losing the user's comments."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import load_config
from aggregator.opml import parse_opml

CONFIG = """\
# My sources — keep this comment
settings:
  public_url: https://news.example.org
sources:
  - name: One
    url: https://one.example.com/feed   # the first
    tags: [world]

  # a comment before outputs
outputs:
  - slug: world
    title: World
"""

FOREIGN = b"""<?xml version="1.0"?>
<opml version="1.0"><head><title>Reader export</title></head><body>
  <outline text="Europe">
    <outline type="rss" text="Two" xmlUrl="https://two.example.com/rss" category="/politics"/>
    <outline type="rss" text="One again" xmlUrl="https://one.example.com/feed"/>
  </outline>
  <outline type="rss" title="One" text="dup name" xmlUrl="https://other.example.com/feed"/>
</body></opml>
"""


def test_export_then_parse_round_trips_names_urls_and_tags(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out.opml"
    assert main(["--config", str(config), "opml", "export", "--output", str(out)]) == 0
    (source,) = parse_opml(out.read_bytes())
    assert (source.name, source.url, source.tags) == ("One", "https://one.example.com/feed", ("world",))


def test_import_adds_only_new_feeds_keeps_comments_and_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(CONFIG)
    foreign = tmp_path / "reader.opml"
    foreign.write_bytes(FOREIGN)
    assert main(["--config", str(config), "opml", "import", str(foreign)]) == 0
    printed = capsys.readouterr().out
    assert "name: Two" in printed and config.read_text() == CONFIG  # without --write nothing changes

    assert main(["--config", str(config), "opml", "import", str(foreign), "--write"]) == 0
    assert "added 2 sources" in capsys.readouterr().out
    text = config.read_text()
    assert "# My sources — keep this comment" in text and "# the first" in text and "# a comment before outputs" in text
    sources = {s.name: s for s in load_config(config).config.sources}
    assert set(sources) == {"One", "Two", "One (2)"}
    assert sources["Two"].tags == ("europe", "politics")
    assert sources["One (2)"].url == "https://other.example.com/feed"

    assert main(["--config", str(config), "opml", "import", str(foreign), "--write"]) == 0
    assert "nothing to import" in capsys.readouterr().out


def test_import_writes_through_a_symlink_and_keeps_the_configs_permissions(tmp_path: Path) -> None:
    # A config may hold a database password: an operator who made it readable by the service's
    # user alone must not find it readable by all after an import, nor the link replaced by a copy.
    real = tmp_path / "etc" / "feeds.yaml"
    real.parent.mkdir()
    real.write_text(CONFIG)
    real.chmod(0o600)
    link = tmp_path / "feeds.yaml"
    link.symlink_to(real)
    foreign = tmp_path / "reader.opml"
    foreign.write_bytes(FOREIGN)
    assert main(["--config", str(link), "opml", "import", str(foreign), "--write"]) == 0
    assert link.is_symlink() and "name: Two" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["feeds.yaml"]  # no temp file left


def test_export_to_a_place_that_cannot_be_written_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(CONFIG)
    for target in (tmp_path / "missing" / "out.opml", tmp_path):
        assert main(["--config", str(config), "opml", "export", "--output", str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"aggregator: cannot write {target}: ") and err.count("\n") == 1, err


def test_broken_opml_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(CONFIG)
    broken = tmp_path / "broken.opml"
    broken.write_bytes(b"<opml><body><outline></body>")
    assert main(["--config", str(config), "opml", "import", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{broken}:1: not valid OPML") and "Traceback" not in err


EXPORTED = b"""<?xml version="1.0"?>
<opml version="2.0"><head><title>Old reader</title></head><body>
  <outline type="rss" text="Podcast" xmlUrl="feed://pod.example.com/rss.xml"/>
  <outline type="rss" text="Wrapped" xmlUrl="feed:https://wrapped.example.com/atom"/>
  <outline type="rss" text="Mail list" xmlUrl="mailto:list@example.com"/>
  <outline type="rss" text="Gopher" xmlUrl="gopher://hole.example.com/1"/>
  <outline type="rss" text="No host" xmlUrl="http:///feed"/>
  <outline type="rss" text="Fine" xmlUrl="https://fine.example.com/feed"/>
</body></opml>
"""


def test_import_rewrites_feed_urls_and_lists_the_unusable_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(CONFIG)
    exported = tmp_path / "exported.opml"
    exported.write_bytes(EXPORTED)
    assert main(["--config", str(config), "opml", "import", str(exported), "--write"]) == 0
    captured = capsys.readouterr()
    assert "added 3 sources" in captured.out
    assert "Traceback" not in captured.err
    assert captured.err.splitlines() == [
        f"{exported}:3: 'Podcast': rewritten from feed://pod.example.com/rss.xml",
        f"{exported}:4: 'Wrapped': rewritten from feed:https://wrapped.example.com/atom",
        f"{exported}:5: skipped 'Mail list' (mailto:list@example.com): not an http(s) URL (scheme mailto:)",
        f"{exported}:6: skipped 'Gopher' (gopher://hole.example.com/1): not an http(s) URL (scheme gopher:)",
        f"{exported}:7: skipped 'No host' (http:///feed): no host name in the URL",
    ]
    urls = {s.name: s.url for s in load_config(config).config.sources}
    assert urls == {
        "One": "https://one.example.com/feed",
        "Podcast": "http://pod.example.com/rss.xml",
        "Wrapped": "https://wrapped.example.com/atom",
        "Fine": "https://fine.example.com/feed",
    }
