"""The garbage collector's pace in a polling process (``aggregator.collector``)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from aggregator import collector
from aggregator.cli import main
from tests.conftest import write_config
from tests.feeds import rss2
from tests.server import FeedServer, Route


@pytest.fixture
def default_pace() -> tuple[int, int, int]:
    """CPython's default thresholds for the test, whatever the process had (conftest's
    ``collector_pace`` puts those back after it)."""
    gc.set_threshold(700, 10, 10)
    return gc.get_threshold()


def test_a_poll_collects_young_objects_at_the_services_pace(
    server: FeedServer, tmp_path: Path, default_pace: tuple[int, int, int]
) -> None:
    server.add("/f", Route(body=rss2(1, 3)))
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}])
    assert main(["--config", str(config), "poll", "--once"]) == 0
    assert gc.get_threshold() == (collector.YOUNG_ALLOCATIONS, *default_pace[1:])


def test_the_pace_is_set_once_whatever_the_calls(default_pace: tuple[int, int, int]) -> None:
    collector.pace_for_service()
    collector.pace_for_service()
    assert gc.get_threshold() == (collector.YOUNG_ALLOCATIONS, 10, 10)
    assert default_pace[0] < collector.YOUNG_ALLOCATIONS
