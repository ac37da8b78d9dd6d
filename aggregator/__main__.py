"""The ``aggregator`` command (its console script calls ``main``) and ``python -m aggregator``.

This module imports nothing at the top, on purpose. A parse worker process imports the main
module of the process that started it (multiprocessing's start-up runs it as ``__mp_main__``),
and for the installed command that is the console script, which imports this module. With the
CLI imported here, every parse worker of the daemon carried SQLAlchemy, aiohttp, pydantic,
Jinja and the rest, which parsing never uses, and which ``parseworker`` keeps out of a
worker for the memory they cost.
"""

from __future__ import annotations


def main() -> int:
    from aggregator.cli import main as run_command

    return run_command()


if __name__ == "__main__":
    raise SystemExit(main())
