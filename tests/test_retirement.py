"""Retirement: only 410 Gone by default; settings.retire_after for sources failing too long."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.config import load_config
from aggregator.pipeline import Pipeline, poll_once
from aggregator.schedule import retirement
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.server import FeedServer

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_retirement_is_off_unless_configured() -> None:
    assert retirement(NOW - timedelta(days=365), NOW, None) is None
    assert retirement(NOW - timedelta(hours=1), NOW, timedelta(days=1)) is None
    reason = retirement(NOW - timedelta(days=2), NOW, timedelta(days=1))
    assert reason == "no successful poll since 2026-11-24 12:00Z (settings.retire_after: 1d)"


def test_a_source_failing_longer_than_retire_after_is_retired_and_revived_by_re_adding(
    server: FeedServer, tmp_path: Path
) -> None:
    url = server.add("/down", status=500)
    sources = [{"name": "down", "url": url}]
    config_path = write_config(tmp_path, sources, settings="retire_after: 1h")
    config = load_config(config_path).config
    engine = make_engine(config.settings.database_url)
    ensure_schema(engine)
    store = Store(engine)
    try:
        store.sync_sources(config.source_specs(), datetime.now(UTC))
        later = datetime.now(UTC) + timedelta(hours=2)  # the source was added two hours "ago"
        asyncio.run(poll_once(Pipeline(config, store, clock=lambda: later)))
        (health,) = store.health()
        assert health.retired_reason is not None and "settings.retire_after: 1h" in health.retired_reason
        assert health.next_poll_at is None
        assert store.claim_due("w", later + timedelta(days=30), 10, timedelta(minutes=5)) == []

        empty = write_config(tmp_path, [], settings="retire_after: 1h")
        store.sync_sources(load_config(empty).config.source_specs(), later)
        store.sync_sources(
            load_config(write_config(tmp_path, sources, settings="retire_after: 1h")).config.source_specs(), later
        )
        (health,) = store.health()
        assert health.retired_reason is None and health.error_count == 0

        # A fresh start: retire_after counts from it, not from the last success long before,
        # so its first failure backs off instead of retiring it again at once.
        soon = later + timedelta(minutes=1)
        asyncio.run(poll_once(Pipeline(config, store, clock=lambda: soon)))
        (health,) = store.health()
        assert health.retired_reason is None and health.error_count == 1 and health.next_poll_at is not None
        # The same for a source the config points at another URL.
        moved = [{"name": "down", "url": server.add("/down-too", status=503)}]
        store.sync_sources(
            load_config(write_config(tmp_path, moved, settings="retire_after: 1h")).config.source_specs(), later
        )
        asyncio.run(poll_once(Pipeline(config, store, clock=lambda: soon)))
        (health,) = store.health()
        assert health.retired_reason is None and health.error_count == 1
        # Failing for longer than retire_after since: retired, and the reason says what failed.
        asyncio.run(poll_once(Pipeline(config, store, clock=lambda: later + timedelta(hours=3))))
        (health,) = store.health()
        assert health.retired_reason is not None
        assert health.retired_reason.startswith(f"no successful poll since {later:%Y-%m-%d %H:%M}Z")
        assert "; last error: HTTP 503" in health.retired_reason
    finally:
        engine.dispose()
