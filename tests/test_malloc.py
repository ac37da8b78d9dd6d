"""The C allocator's arena limit, counted by glibc itself in fresh processes."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import pytest

from aggregator import cli, malloc

real_parser = cli.build_parser

# A fresh interpreter: optionally limits the arenas as aggregator's commands do, lets eight
# threads allocate through malloc at once, and prints how many arenas glibc's malloc_info lists.
PROGRAM = """
import ctypes, ctypes.util, sys, tempfile, threading
from aggregator import malloc
print(malloc.limit_arenas() if sys.argv[1] == "limit" else "-")
start = threading.Barrier(8)
def allocate():
    start.wait()
    kept = [bytearray(4096) for _ in range(2000)]  # past Python's small-object allocator
    start.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile() as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(report.read().decode().count("<heap nr="))
"""


def arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True, env=env, timeout=60
    )
    limited, count = done.stdout.split()
    return limited, int(count)


def test_the_commands_limit_keeps_a_threaded_process_to_two_malloc_arenas() -> None:
    """Eight threads allocating at once get arenas of their own; with the limit set before they
    start, glibc keeps two. This machine's C library must be glibc: the service's is."""
    assert platform.libc_ver()[0] == "glibc"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert arenas("none", env)[1] > 2
    assert arenas("limit", env) == ("True", 2)


def test_an_operators_malloc_arena_max_is_left_as_it_is() -> None:
    """An operator who set ``MALLOC_ARENA_MAX`` (glibc reads it at start) keeps that number."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "3"}
    assert arenas("limit", env) == ("False", 3)


def test_the_command_limits_the_arenas_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """``aggregator`` limits the arenas first thing, before it even reads its arguments (so
    before the daemon or a poll starts a thread), whatever it is asked."""
    calls: list[str] = []

    def limit() -> bool:
        calls.append("limit")
        return True

    def parser() -> argparse.ArgumentParser:
        calls.append("parse")
        return real_parser()

    monkeypatch.setattr(malloc, "limit_arenas", limit)
    monkeypatch.setattr(cli, "build_parser", parser)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == ["limit", "parse"]
