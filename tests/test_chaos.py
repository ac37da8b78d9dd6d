"""The short version of bench/chaos.py, run as CI runs it: real workers killed, a private
PostgreSQL cluster restarted under them, SQLite on a full tmpfs. The script checks the
database with SQL and exits 1 on any item lost, torn or duplicated, or a worker that did
not recover by itself; here its figures are also read back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


def chaos(*scenarios: str) -> str:
    result = subprocess.run(
        [sys.executable, str(CHAOS), "--short", "--scenarios", ",".join(scenarios)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT ok" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_kill_9_mid_ingest_loses_and_duplicates_nothing_and_the_schedule_resumes() -> None:
    out = chaos("kill9")
    assert "kills survived: 3/3" in out
    assert "items lost at a kill: 0; torn or doubled writes seen after kills: 0" in out
    assert re.search(r"final: 600 items of 600 expected, missing 0", out), out
    assert "afterwards 0 sources leased, 0 not scheduled ahead" in out
    assert "child processes (parse pool) still alive 5 s after their daemon was killed: 0" in out


@pytest.mark.skipif(shutil.which("runuser") is None and os.geteuid() == 0, reason="initdb as root needs runuser")
def test_postgresql_restarted_under_two_workers_both_recover_without_a_restart() -> None:
    out = chaos("pg")
    assert "workers still running afterwards: 2/2" in out
    assert "final: 600 items of 600, missing 0" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_sqlite_on_a_full_disk_fails_clearly_stays_intact_and_recovers() -> None:
    out = chaos("disk")
    assert "ERROR poll cycle failed: database error: database or disk is full" in out
    assert "integrity_check while full: ok; after: ok" in out
    assert "final: 600 items of 600, missing 0" in out
