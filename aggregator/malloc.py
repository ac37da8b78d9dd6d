"""This process's C allocator (glibc's malloc): how many arenas it may keep, and handing its
free pages back to the system.

glibc gives each new thread that allocates an arena of its own, up to eight per core, and keeps
what is freed in each arena for that arena's later use rather than handing it back. The daemon's
threads (the commit slots' writers, the event loop, the HTTP server, the fetch pool) each
allocate through C: SQLite's page cache and statements, parsed documents, numpy's arrays. Memory
one thread freed then sits in its arena, out of reach of the others, and the process's resident
size grows in steps while malloc's own figures show it as free (``bench/soak.py`` prints both).
Two arenas keep that memory shared, and the threads, which take turns on the GIL and on the
matching lock, hardly contend for them.

The limit is glibc's ``M_ARENA_MAX`` (the ``MALLOC_ARENA_MAX`` variable, set through
``mallopt``): it bounds arenas made from then on, so it is set before any thread starts. An
operator's own ``MALLOC_ARENA_MAX`` wins; another C library (musl, macOS) has no such setting.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

M_ARENA_MAX = -8
"""``mallopt``'s parameter for the most arenas (``malloc.h``)."""
ARENAS = 2
ARENA_ENV = "MALLOC_ARENA_MAX"


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc's malloc keep at most ``arenas`` arenas in this process, unless
    ``MALLOC_ARENA_MAX`` already says how many. Whether the limit was set: False where the
    variable is set (glibc read it at start) or the C library has no ``mallopt``."""
    if ARENA_ENV in os.environ:
        return False
    mallopt = c_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``); False where
    there is no such call, and nothing happens.

    Freezing an archive week is the largest allocation a process makes (a first ingest
    freezes weeks of up to 5,000 entries), and it runs on an executor thread: the week cannot
    reuse what the ingest before it freed in other arenas (two of them under
    ``limit_arenas``), and the process's peak was that freed memory plus the week.
    """
    trim = c_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def c_function(name: str) -> Any:
    """The C library function ``name`` among the symbols this process already has loaded (the
    C library is), looked up once; None where there is none (another C library than glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None
