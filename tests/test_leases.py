"""Leases of dead workers are handed back at once, but only where their death can be seen."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.config import load_config
from aggregator.leases import reclaim_dead_leases, worker_id
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config


def test_a_dead_workers_leases_are_handed_back_only_on_its_host_and_in_its_pid_namespace(tmp_path: Path) -> None:
    # Workers in containers sharing the host's name (host networking) each see themselves as
    # pid 1: only a namespace in the id tells them apart, and only a process of our own
    # namespace can be seen to be dead.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    here = worker_id().rpartition(":")[0]
    host = socket.gethostname()
    assert here.startswith(f"{host}:") and worker_id() == f"{here}:{os.getpid()}"
    owners = {
        "dead here": f"{here}:{pid}",
        "alive here": worker_id(),
        "another namespace": f"{host}:0:{pid}",
        "another host": f"elsewhere.example:{here.rpartition(':')[2]}:{pid}",
        "an older version's id": f"{host}:{pid}",
    }
    config = write_config(
        tmp_path, [{"name": name, "url": f"https://s{n}.example/rss"} for n, name in enumerate(owners)]
    )
    settings = load_config(config).config
    engine = make_engine(settings.settings.database_url)
    ensure_schema(engine)
    store = Store(engine)
    try:
        now = datetime.now(UTC)
        store.sync_sources(settings.source_specs(), now)
        for owner in owners.values():
            assert len(store.claim_due(owner, now, 1, timedelta(minutes=5))) == 1
        assert reclaim_dead_leases(store) == 1
        assert sorted(store.lease_owners()) == sorted(o for name, o in owners.items() if name != "dead here")
    finally:
        engine.dispose()
