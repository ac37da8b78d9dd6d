"""Who holds a claimed source: this process's lease owner id, and the leases of dead workers.

A lease names its owner as ``host:pid``, so a worker can tell, on its own host only, that
the holder of a lease no longer exists and hand its sources back at once.
"""

from __future__ import annotations

import logging
import os
import socket

from aggregator.store.repository import Store

log = logging.getLogger("aggregator")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reclaim_dead_leases(store: Store) -> int:
    """Release leases held by processes of this host that no longer exist.

    A killed worker's leases would otherwise block its sources until they expire; on
    this host we can tell for sure that the holder is gone, so there is no need to wait.
    Leases of other hosts are left to expire (we cannot see their processes).
    """
    host = socket.gethostname()
    released = 0
    for owner in store.lease_owners():
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        released += store.release_owner(owner)
    if released:
        log.info("released %d leases held by dead workers on this host", released)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
