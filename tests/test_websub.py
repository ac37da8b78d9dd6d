"""WebSub: the hub is pinged when an output changes, retried when it fails, never in the way."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from aggregator.cli import main
from aggregator.websub import ping_hub
from tests.conftest import write_config
from tests.feeds import rss2
from tests.server import FeedServer, Route


class Hub:
    """A WebSub hub on 127.0.0.1 that records publish pings and can fail the first ones."""

    def __init__(self, failures: int = 0) -> None:
        self.pings: list[dict[str, list[str]]] = []
        self.failures = failures
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                status = 500 if hub.failures > 0 else 204
                hub.failures -= 1
                if status == 204:
                    hub.pings.append(form)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub() -> Iterator[Hub]:
    running = Hub()
    yield running
    running.close()


def test_a_changed_output_pings_the_hub_for_each_feed(hub: Hub, server: FeedServer, tmp_path: Path) -> None:
    server.add("/f", Route(body=rss2(1, 3), etag='"1"'))
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}], settings=f"websub_hub: {hub.url}")
    assert main(["--config", str(config), "poll", "--once"]) == 0
    urls = sorted(p["hub.url"][0] for p in hub.pings)
    assert urls == [f"http://feeds.test.example/feeds/world.{fmt}" for fmt in ("atom", "json", "rss")]
    assert all(p["hub.mode"] == ["publish"] for p in hub.pings)
    assert hub.url in (tmp_path / "data" / "feeds" / "world.atom").read_text()

    hub.pings.clear()
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0  # 304: nothing changed
    assert hub.pings == []


def test_pings_are_retried_with_backoff() -> None:
    flaky = Hub(failures=2)
    try:
        ok = asyncio.run(ping_hub(flaky.url, ["https://x.example/feeds/w.atom"], user_agent="t", backoff=0.01))
    finally:
        flaky.close()
    assert ok is True
    assert len(flaky.pings) == 1


def test_a_dead_hub_gives_up_quietly() -> None:
    ok = asyncio.run(ping_hub("http://127.0.0.1:1/", ["https://x.example/a"], user_agent="t", attempts=2, backoff=0.01))
    assert ok is False
