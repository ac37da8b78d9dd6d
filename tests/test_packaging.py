"""What users and scripts rely on outside the code: docs, CI, the systemd unit, the wheel."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.cli import build_parser
from aggregator.config import Output, Settings, Source

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands(parser: argparse.ArgumentParser, prefix: str = "aggregator") -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                found += nested or [f"{prefix} {name}"]
    return found


def test_every_cli_command_is_documented() -> None:
    commands = _commands(build_parser())
    assert "aggregator db upgrade" in commands
    missing = [c for c in commands if f"`{c}" not in README]
    assert missing == []


@pytest.mark.parametrize("model", [Settings, Source, Output])
def test_every_config_key_is_documented(model: type) -> None:
    missing = [key for key in model.model_fields if f"`{key}`" not in README]  # type: ignore[attr-defined]
    assert missing == []


def test_ci_runs_the_readme_test_line_verbatim() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_line = next(line for line in blocks if "pytest" in line)
    assert test_line in (ROOT / ".ci" / "run").read_text().splitlines()


def test_quickstart_runs_the_daemon_on_the_shipped_config() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert blocks[0].endswith("aggregator run")
    assert (ROOT / "feeds.yaml").exists()


UNITS = {  # unit file -> (the name it is verified as, the command it runs)
    "aggregator.service": ("aggregator.service", "run"),
    "aggregator-worker@.service": ("aggregator-worker@1.service", "worker"),
    "aggregator-serve.service": ("aggregator-serve.service", "serve"),
}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_verifies(tmp_path: Path, name: str) -> None:
    unit = (ROOT / "systemd" / name).read_text()
    installed, command = UNITS[name]
    for setting in ("DynamicUser=yes", "StateDirectory=", "Restart=on-failure", "ProtectSystem=strict",
                    "NoNewPrivileges=yes", "PrivateTmp=yes", "Type=notify", "WatchdogSec=",
                    "Environment=AGGREGATOR_DATA_DIR=%S/aggregator"):  # fmt: skip
        assert setting in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[-1] == command
    # verify checks that ExecStart exists: point it at this environment's console script.
    executable = Path(sys.executable).with_name("aggregator")
    (tmp_path / installed).write_text(unit.replace("/opt/aggregator/bin/aggregator", str(executable)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / installed)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert installed not in result.stderr, result.stderr


def test_every_unit_of_one_host_runs_as_one_user_sharing_its_state() -> None:
    """A worker's instances and the server share the host's state directory (the published
    files nginx may serve): a dynamic user per unit would own it by turns. aggregator.service's
    dynamic user is named after it, "aggregator"; the others name it so."""
    users = set()
    for name in UNITS:
        unit = (ROOT / "systemd" / name).read_text()
        named = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("User=")]
        users.add(named[0] if named else name.removesuffix(".service"))
        assert "StateDirectory=aggregator\n" in unit
    assert users == {"aggregator"}


def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    """A non-editable install must still be able to migrate: alembic/ goes into the wheel."""
    pip = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
        str(ROOT),
    ]
    if subprocess.run([sys.executable, "-c", "import hatchling"], capture_output=True).returncode != 0:
        pip.remove("--no-build-isolation")
    result = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    import zipfile

    (wheel,) = tmp_path.glob("aggregator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "aggregator/_migrations/env.py" in names
    assert any(n.startswith("aggregator/_migrations/versions/0001_") for n in names)
