"""What the log says: one line per entry, whoever logged it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from aggregator import logs


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_librarys_multi_line_warning_is_one_entry_and_a_traceback_keeps_its_lines(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", fmt)
    logging.getLogger("psycopg").warning(
        "error ignored terminating %r: flush request failed: %s",
        "<psycopg.Pipeline [BAD]>",
        "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n",
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "flush request failed: server closed the connection unexpectedly / This probably means" in lines[0]
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        logging.getLogger("aggregator").exception("poll cycle failed unexpectedly")
    err = capsys.readouterr().err
    assert "Traceback" in err and ("\n" in err.strip() if fmt == "text" else "\\n" in err)
