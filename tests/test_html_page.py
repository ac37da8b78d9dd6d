"""The HTML page of an output, opened in a real headless Chromium: entries shown, no feed script runs.

A positive control page (served without our sanitizer or CSP) proves the harness would
see a script run; then the aggregator's page, built from a feed stuffed with script
payloads, must show its entries and none of the payloads' effects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import load_config
from aggregator.store.database import make_engine
from aggregator.store.repository import Store
from tests.conftest import serving, write_config
from tests.server import FeedServer, Route

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")

PAYLOADS = (
    "<script>document.title='PWNED'</script>"
    "<img src='/nonexistent.png' onerror=\"document.body.setAttribute('data-pwned','img')\">"
    "<svg onload=\"document.body.setAttribute('data-pwned','svg')\"></svg>"
    "<a href=\"javascript:document.body.setAttribute('data-pwned','js')\" id='jslink'>click</a>"
    "<iframe srcdoc=\"<script>parent.document.body.setAttribute('data-pwned','iframe')</script>\"></iframe>"
    '<p style="background:url(javascript:alert(1))">styled</p>'
)


def dump_dom(url: str, profile: Path) -> str:
    result = subprocess.run(
        [
            CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def rss_with_payloads() -> bytes:
    from xml.sax.saxutils import escape

    items = "".join(
        f"<item><title>Harmless headline {n}</title><link>https://news.example.com/{n}</link>"
        f"<guid>https://news.example.com/{n}</guid><description>{escape(f'<p>Story {n} body.</p>' + PAYLOADS)}"
        "</description></item>"
        for n in range(3)
    )
    return f"<rss version='2.0'><channel><title>Hostile</title><link>https://h.example/</link><description>x</description>{items}</channel></rss>".encode()


def test_the_harness_notices_a_script_that_runs(server: FeedServer, tmp_path: Path) -> None:
    control = f"<!doctype html><html><head><title>ok</title></head><body>{PAYLOADS}</body></html>".encode()
    server.add("/control", Route(body=control, content_type="text/html; charset=utf-8"))
    dom = dump_dom(server.url("/control"), tmp_path / "profile")
    assert "PWNED" in dom or "data-pwned" in dom


def test_feed_content_never_runs_script_in_the_output_page(server: FeedServer, tmp_path: Path) -> None:
    server.add("/hostile", Route(body=rss_with_payloads()))
    config = write_config(tmp_path, [{"name": "hostile", "url": server.url("/hostile")}])
    assert main(["--config", str(config), "poll", "--once"]) == 0
    engine = make_engine(load_config(config).config.settings.database_url)
    try:
        with serving(Store(engine)) as base:
            dom = dump_dom(f"{base}/feeds/world", tmp_path / "profile")
    finally:
        engine.dispose()
    for n in range(3):
        assert f"Harmless headline {n}" in dom and f"Story {n} body." in dom
    assert "PWNED" not in dom
    assert "data-pwned" not in dom
    assert "<script" not in dom.lower()
    assert "javascript:" not in dom.lower()
    assert "<iframe" not in dom.lower()
    assert 'rel="alternate" type="application/atom+xml"' in dom  # feed auto-discovery


def test_the_page_marks_undated_items_and_shows_thumbnails_and_audio(server: FeedServer, tmp_path: Path) -> None:
    from tests.test_enclosures import AUDIO, COVER, podcast
    from tests.test_undated import columns

    server.add("/podcast", Route(body=podcast()))
    server.add("/opinion", Route(body=columns()))
    config = write_config(
        tmp_path,
        [{"name": "Weekly Show", "url": server.url("/podcast")}, {"name": "Opinion", "url": server.url("/opinion")}],
    )
    assert main(["--config", str(config), "poll", "--once"]) == 0
    engine = make_engine(load_config(config).config.settings.database_url)
    try:
        with serving(Store(engine)) as base:
            dom = dump_dom(f"{base}/feeds/world", tmp_path / "profile")
    finally:
        engine.dispose()
    # All 20 came in the opinion feed's first fetch, with no date at all.
    assert dom.count("undated · age unknown: in its feed when first read") == 20
    assert f'src="{COVER}"' in dom and f'src="{AUDIO}"' in dom and "<audio" in dom
    assert dom.count('<span class="outlet" dir="auto">Opinion</span>') == 20
    assert dom.index("Episode 42") < dom.index("opinion column-00")  # of unknown age: after dated news
