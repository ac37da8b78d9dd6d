from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import FeedServer


@pytest.fixture
def server() -> Iterator[FeedServer]:
    srv = FeedServer().start()
    yield srv
    srv.stop()


def write_config(
    tmp_path: Path, sources: list[dict[str, object]], *, settings: str = "", outputs: str | None = None
) -> Path:
    """A feeds.yaml in tmp_path with a real SQLite file beside it; private networks allowed (127.0.0.1)."""
    lines = [
        "settings:",
        f"  data_dir: {tmp_path / 'data'}",
        "  allow_private_networks: true",
        "  public_url: http://feeds.test.example",
        "  parse_workers: 0",
        "  per_host_concurrency: 8",
        "  connect_timeout: 2",
        "  read_timeout: 2",
        "  total_timeout: 5",
    ]
    lines += ["  " + line for line in textwrap.dedent(settings).strip().splitlines()] if settings.strip() else []
    lines.append("sources:" if sources else "sources: []")
    for source in sources:
        first = True
        for key, value in source.items():
            rendered = f"[{', '.join(map(str, value))}]" if isinstance(value, list | tuple) else str(value)
            lines.append(f"  {'- ' if first else '  '}{key}: {rendered}")
            first = False
    if outputs is None:
        outputs = """
        outputs:
          - slug: world
            title: World
            max_entries: 10000
        """
    lines += textwrap.dedent(outputs).strip().splitlines()
    path = tmp_path / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
