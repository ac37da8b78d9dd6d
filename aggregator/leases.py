"""Who holds a claimed source: this process's lease owner id, and the leases of dead workers.

A lease names its owner as ``host:pid-namespace:pid``, so a worker can tell, on its own host
and in its own PID namespace only, that the holder of a lease no longer exists and hand its
sources back at once. Without the namespace, workers in containers that share the host's name
(host networking) all had the id ``host:1``: one handing back its own leases after a failed
cycle handed back the others', and a source was fetched by two workers at once.
"""

from __future__ import annotations

import logging
import os
import socket

from aggregator.store.repository import Store

log = logging.getLogger("aggregator")


def worker_id() -> str:
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}"


def _pid_namespace() -> str:
    """This process's PID namespace (its inode number on Linux, "-" where it cannot be read)."""
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return "-"


def reclaim_dead_leases(store: Store) -> int:
    """Release leases held by processes of this host that no longer exist.

    A killed worker's leases would otherwise block its sources until they expire; on
    this host we can tell for sure that the holder is gone, so there is no need to wait.
    Leases of other hosts are left to expire (we cannot see their processes).
    """
    here = f"{socket.gethostname()}:{_pid_namespace()}"
    released = 0
    for owner in store.lease_owners():
        where, _, pid = owner.rpartition(":")
        # An owner of another host or namespace (or of an older version's "host:pid") is left
        # to its lease's expiry: its process cannot be seen from here.
        if where != here or not pid.isdigit() or _alive(int(pid)):
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
