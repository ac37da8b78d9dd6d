"""Story matching's cost counted in instructions: what ``bench/dedup.py --storage-only`` times,
counted by valgrind's callgrind instead of a clock, so that two trees can be compared exactly.

Why: this machine's speed moves by up to a third from one run to the next (the cores of a shared
host run at different speeds from minute to minute), so a change to matching smaller than that
cannot be timed here, even with both trees side by side (``dedup.py --against``). Callgrind
counts the same instructions for the same program and input whatever else the machine does.
A count is not a time (a cache miss costs more than an add, and no wait on the disk is
counted): it says which of two trees does less work and by how much, not what either costs in
µs, which ``dedup.py --storage-only`` says.

What is counted: the calls of ``StoryMatcher.match`` for the last 2,000 items of
``dedup.storage_cost`` (the templated stream of about 20,000 items through a real SQLite
database, polls of 10), the calls its µs figure is taken over: the lookups' queries, SQLite's
work in them and the decision, not the inserts. How: the run goes under callgrind with the
instrumentation off (several times slower rather than some 70 times) until those items, on
from there, and collecting only inside ``operator.call`` (``--toggle-collect=_operator_call``),
through which this script makes just those calls. That needs the interpreter's symbol table
(CPython built from source keeps it; a stripped one collects nothing, reported as an error).
The hash seed is fixed, so sets and dicts iterate alike in every run.

``--against CHECKOUT``: the same count with CHECKOUT's ``aggregator`` package (this tree's
bench and templated stream, so both trees do the same work; CHECKOUT must take the calls
``storage_cost`` makes), both runs at once (their counts do not depend on it), and the ratio.
Each run prints its quality line, so the two can be seen to decide alike.

Run from the repository root (needs Debian's ``valgrind``; about 6 minutes)::

    .venv/bin/python bench/instructions.py [--against CHECKOUT]
"""

from __future__ import annotations

import argparse
import operator
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLLECTED = "_operator_call"
"""The C function of ``operator.call``, inside which callgrind collects (``--toggle-collect``)."""
TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)
ITEMS = re.compile(r"^counted +(\d+) items", re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="CHECKOUT", type=Path, help="another checkout's aggregator package")
    parser.add_argument(
        "--reads",
        action="store_true",
        help="count only inside the lookups' queries (StoryLookups), not the decision: the most a match index "
        "kept in the writer's memory could save",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child, reads=args.reads)
    print(
        f"command      .venv/bin/python bench/instructions.py{f' --against {args.against}' if args.against else ''}"
        f"{' --reads' if args.reads else ''}"
        f"  (Python {platform.python_version()}, {platform.machine()})"
    )
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"error        {' and '.join(missing)} not found: install Debian's valgrind package")
        return 1
    trees = {"this tree": ROOT}
    if args.against is not None:
        other = args.against.resolve()
        if not (other / "aggregator" / "__init__.py").is_file():
            print(f"error        {other} has no aggregator package: not a checkout of this project")
            return 1
        trees[other.name] = other
    with tempfile.TemporaryDirectory() as directory:
        runs = {
            name: _start(tree, Path(directory) / f"{n}.out", args.reads) for n, (name, tree) in enumerate(trees.items())
        }
        what = "in the lookups' queries" if args.reads else "of matching"
        counts = {}
        for name, (run, out) in runs.items():
            stdout, stderr = run.communicate()
            found = _count(run.returncode, stdout, out)
            if isinstance(found, str):
                print(f"error        {name}: {found}")
                print(stdout + stderr[-3000:])
                for other_run, _ in runs.values():
                    other_run.kill()  # the other tree's run, if it is still going: its count is no use alone
                return 1
            counts[name] = found
            quality = next((line.strip() for line in stdout.splitlines() if line.strip().startswith("quality")), "?")
            total, items = found
            print(
                f"{name:12} {total / items:,.0f} instructions/item {what} ({total:,} over {items:,} items); {quality}"
            )
    if args.against is not None:
        this, that = (total / items for total, items in counts.values())
        print(f"ratio        this tree's instructions per item to {args.against.name}'s: {this / that:.4f}")
    return 0


def _start(tree: Path, out: Path, reads: bool) -> tuple[subprocess.Popen[str], Path]:
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
        f"--toggle-collect={COLLECTED}", f"--callgrind-out-file={out}",
        sys.executable, str(Path(__file__).resolve()), "--child", str(tree), *(["--reads"] if reads else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


def _count(returncode: int, stdout: str, out: Path) -> tuple[int, int] | str:
    """(instructions, items) of one run, or what went wrong."""
    if returncode:
        return f"the run under valgrind exited with {returncode}"
    items = ITEMS.search(stdout)
    totals = TOTALS.search(out.read_text(encoding="utf-8")) if out.is_file() else None
    if items is None or totals is None:
        return "no count: the run printed no items or callgrind wrote no totals"
    if int(totals.group(1)) == 0:
        return f"callgrind collected nothing inside {COLLECTED}: is the interpreter stripped of its symbols?"
    return int(totals.group(1)), int(items.group(1))


def child(tree: Path, reads: bool) -> int:
    """The run under valgrind: ``dedup.storage_cost`` on ``tree``'s ``aggregator`` package, the
    last 2,000 items' matching calls made through ``operator.call`` with the instrumentation on
    (``reads``: the calls of the lookups' methods they make, instead)."""
    sys.path.insert(0, str(tree))
    import aggregator  # first, from ``tree``: dedup puts this tree's root on the path

    if Path(aggregator.__file__).resolve().parent != (tree / "aggregator").resolve():
        print(f"error        aggregator was imported from {aggregator.__file__}, not {tree}")
        return 1
    sys.path.insert(1, str(ROOT / "bench"))
    import dedup

    counted = [0]
    if reads:
        from aggregator.store.matchkeys import StoryLookups

        for name, method in list(vars(StoryLookups).items()):
            if callable(method) and not name.startswith("_"):
                setattr(StoryLookups, name, _collected(method, counted))

    def measured(match: Callable[[], Any], items: int) -> Any:
        if not counted[0]:  # the first of them: instrumenting from here on
            subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
        counted[0] += items
        return match() if reads else operator.call(match)

    dedup.storage_cost(measured=measured)
    print(f"counted      {counted[0]} items")
    return 0


def _collected(method: Callable[..., Any], counted: list[int]) -> Callable[..., Any]:
    """``method`` called through ``operator.call`` (collected) once the measured items began."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return operator.call(method, *args, **kwargs) if counted[0] else method(*args, **kwargs)

    return call


if __name__ == "__main__":
    raise SystemExit(main())
