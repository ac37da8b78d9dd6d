"""Which stories real feeds share, for a reader to judge: one real pipeline run over ``../shared/corpus``.

The corpus (about 2,400 real and broken feeds, no labels) is the only outside data where
stories form as a user's would: from feeds nobody here wrote, published at their real times.
No label says which of its stories are right, so this prints them for a person to read. Every
file of its ``INDEX.tsv`` is served by a local HTTP server on 127.0.0.1, each one source of a
fresh ``feeds.yaml``, and one ``aggregator --config X poll --once --all`` (a subprocess of the
installed CLI) fetches, parses, matches and stores them all, as ``tests/test_corpus_run.py``
does. Then, from the database:

* how the items that joined a story holding another source's items joined it: by a shared URL,
  as a lead copy, or as an independent report (names and meaning, ``stories.judge``);
* each story an independent report joined across sources: its items (source, time, headline)
  and each such report's explanation, as ``aggregator story ID`` would show it. A link between
  two events is what precision counts; reading these is how it is counted here.

    .venv/bin/python bench/corpus_joins.py              # every such story
    .venv/bin/python bench/corpus_joins.py --sample 20 --seed 3
"""

from __future__ import annotations

import argparse
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.corpusrun import CROSS_OUTLET_JOINS, serve_corpus  # noqa: E402
from tests.server import FeedServer  # noqa: E402
from tests.test_corpus import CORPUS  # noqa: E402

# Items that joined, as independent reports, a story holding another source's items.
INDEPENDENT = (
    "select i.id, i.story_id, i.match_reason from items i where i.match_reason like 'joined%' "
    "and i.match_reason not like '%copies item%' and i.match_reason not like '%copies an item%' "
    "and i.match_reason not like '%same URL%' "
    "and exists (select 1 from items j where j.story_id = i.story_id and j.source_id != i.source_id) order by i.id"
)
MEMBERS = (
    "select i.id, s.name, i.sort_at, i.title from items i join sources s on s.id = i.source_id "
    "where i.story_id = ? order by i.sort_at, i.id"
)


def poll_corpus(workdir: Path) -> tuple[Path, float]:
    """Serve every corpus file and poll them all once with the installed CLI: the database and
    the poll's wall time."""
    server = FeedServer().start()
    try:
        _, config = serve_corpus(server, workdir)
        command = [sys.executable, "-m", "aggregator", "--config", str(config), "--log-level", "warning"]
        started = time.monotonic()
        done = subprocess.run(
            [*command, "poll", "--once", "--all"],
            capture_output=True,
            text=True,
            cwd=workdir,
            check=False,
        )
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    if done.returncode != 0:
        raise SystemExit(f"aggregator poll failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(the poll printed no summary)")
    return workdir / "data" / "aggregator.db", elapsed


def report(database: Path, sample: int | None, seed: int) -> None:
    with sqlite3.connect(database) as db:
        print("items that joined a story holding another source's items:")
        for how, count in sorted(db.execute(CROSS_OUTLET_JOINS)):
            print(f"  {count:5d}  {how}")
        reasons: defaultdict[int, dict[int, str]] = defaultdict(dict)
        for item_id, story_id, reason in db.execute(INDEPENDENT):
            reasons[story_id][item_id] = reason
        chosen = sorted(reasons)
        if sample is not None and sample < len(chosen):
            chosen = sorted(random.Random(seed).sample(chosen, sample))
        print(
            f"stories an independent report joined across sources: {len(reasons)} "
            f"({sum(map(len, reasons.values()))} such reports); shown: {len(chosen)}"
        )
        for story_id in chosen:
            print(f"\nstory {story_id}")
            for item_id, source, sort_at, title in db.execute(MEMBERS, (story_id,)):
                mark = "+" if item_id in reasons[story_id] else " "
                print(f"  {mark} {sort_at[:16]}  {source[-44:]:44}  {title[:100]}")
                if item_id in reasons[story_id]:
                    print(f"      {reasons[story_id][item_id][:400]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="show this many of the stories, drawn at random")
    parser.add_argument("--seed", type=int, default=1, help="of the draw (--sample)")
    args = parser.parse_args()
    if not (CORPUS / "INDEX.tsv").exists():
        raise SystemExit(f"no corpus at {CORPUS} (../shared/corpus beside the repository, or AGGREGATOR_CORPUS)")
    print(f"# bench/corpus_joins.py  python {platform.python_version()}  {platform.machine()}")
    print(f"# corpus: {CORPUS}; storage: the embedded SQLite; one poll of everything (a first ingest)")
    with tempfile.TemporaryDirectory() as tmp:
        database, elapsed = poll_corpus(Path(tmp))
        print(f"poll: {elapsed:.1f} s")
        report(database, args.sample, args.seed)
    print(
        "\n+ marks the items that joined as independent reports, each with its explanation; "
        "read each story and count the ones that tie two events together"
    )


if __name__ == "__main__":
    main()
