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
  two events is what precision counts; reading these is how it is counted here;
* what a subscriber reads of the stories several sources share: run 1 published as a World
  output of everything, its Atom feed parsed back, and how many of those stories' distinct
  headlines its entries show (``subscribers_view``): a headline an entry does not show is a
  report a reader of the feed cannot see, which is what a wrong link costs.

One poll of everything is a first ingest, and its outcome depends on the order the writer
gets the feeds in, which the fetches' finishing order decides: the story an item meets first
is the one it judges against. ``--runs N`` polls the corpus N times, each into a fresh
database, and prints what each run linked and which links across sources all runs agree on,
so that a figure from one run is not read as the corpus's.

    .venv/bin/python bench/corpus_joins.py              # every such story
    .venv/bin/python bench/corpus_joins.py --sample 20 --seed 3
    .venv/bin/python bench/corpus_joins.py --runs 3     # how much the poll order moves it
"""

from __future__ import annotations

import argparse
import itertools
import platform
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchsupport import own_tree_env  # noqa: E402

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
            env=own_tree_env(),
            check=False,
        )
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    if done.returncode != 0:
        raise SystemExit(f"aggregator poll failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(the poll printed no summary)")
    return workdir / "data" / "aggregator.db", elapsed


# Every pair of items of one story from two sources: (source, item key, title) of each.
LINKED = (
    "select i.story_id, s.name, i.key, i.title from items i join sources s on s.id = i.source_id "
    "where i.story_id in (select story_id from items group by story_id having count(distinct source_id) > 1)"
)
_SERVED = re.compile(r"127\.0\.0\.1:\d+")  # each run's server listens on another port


def linked_pairs(database: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """The pairs of items from two sources that share a story, each item named by its source
    and key (the serving port taken out, which differs from run to run), with their headlines."""
    stories: defaultdict[int, list[tuple[str, str]]] = defaultdict(list)
    with sqlite3.connect(database) as db:
        for story_id, source, key, title in db.execute(LINKED):
            stories[story_id].append((f"{source}|{_SERVED.sub('', key)}", title or ""))
    pairs = {}
    for members in stories.values():
        for (a, title_a), (b, title_b) in itertools.combinations(sorted(members), 2):
            if a.split("|", 1)[0] != b.split("|", 1)[0]:
                pairs[(a, b)] = (title_a, title_b)
    return pairs


def compare_runs(runs: list[dict[tuple[str, str], tuple[str, str]]], shown: int = 20) -> None:
    """Which links across sources every run made, and which only some did."""
    every = set.intersection(*(set(r) for r in runs))
    some = set.union(*(set(r) for r in runs)) - every
    counts = ", ".join(str(len(r)) for r in runs)
    print(f"pairs of items from two sources in one story, per run: {counts}")
    print(f"  made in every run: {len(every)}; in some only: {len(some)}")
    titles = {pair: names for r in runs for pair, names in r.items()}
    for pair in sorted(some, key=lambda p: titles[p])[:shown]:
        made = sum(pair in r for r in runs)
        print(f"  in {made} of {len(runs)} runs: {titles[pair][0][:60]!r} ~ {titles[pair][1][:60]!r}")
    if len(some) > shown:
        print(f"  ... and {len(some) - shown} more")


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


# Each story several sources carry: its uid (the output entry id), and its items' source and headline.
SHARED_STORIES = (
    "select st.uid, s.name, i.title from items i join sources s on s.id = i.source_id join stories st "
    "on st.id = i.story_id where i.story_id in (select story_id from items group by story_id "
    "having count(distinct source_id) > 1) order by i.story_id, i.sort_at, i.id"
)
WORLD = "outputs:\n  - slug: world\n    title: World\n    max_entries: 10000"


def subscribers_view(workdir: Path, database: Path) -> None:
    """What a subscriber reads of the stories several sources share: a World output of
    everything (``aggregator publish``), its Atom feed parsed back with feedparser, and each
    such story's entry: whether it names the other outlets, and which of its items' headlines
    a reader sees there (the lead's as the entry's title, the others' under "Also reported by",
    where they differ from the lead's)."""
    import feedparser
    import lxml.html

    config = workdir / "feeds.yaml"
    written = config.read_text(encoding="utf-8")
    if "outputs: []" not in written:  # serve_corpus's config has no outputs: this one gains World
        raise SystemExit(f"{config}: expected 'outputs: []' to replace with a World output")
    config.write_text(written.replace("outputs: []", WORLD), encoding="utf-8")
    command = [sys.executable, "-m", "aggregator", "--config", str(config), "--log-level", "warning", "publish"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=own_tree_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"aggregator publish failed ({done.returncode}):\n{done.stderr[-3000:]}")
    entries = {e.id: e for e in feedparser.parse((workdir / "data" / "feeds" / "world.atom").read_bytes()).entries}
    shared: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
    with sqlite3.connect(database) as db:
        for uid, source, title in db.execute(SHARED_STORIES):
            shared[uid].append((source, title or ""))
    found = naming = showing = 0
    headlines = seen = 0
    for uid, members in shared.items():
        entry = entries.get(uid)
        if entry is None:
            continue
        found += 1
        text = entry.content[0].value if entry.get("content") else entry.get("summary", "")
        naming += "Also reported by" in text
        # The list after the coverage line, not one of the lead's own text.
        listed = lxml.html.fromstring(f"<div>{text}</div>").xpath(
            "//p[contains(., 'Also reported by:')]/following-sibling::ul[1]/li"
        )
        shown = {entry.title.casefold()} | {li.text_content().split(": ", 1)[-1].casefold() for li in listed}
        showing += any(": " in li.text_content() for li in listed)
        distinct = {title.casefold() for _, title in members if title}
        headlines += len(distinct)
        seen += len(distinct & shown)
    print(
        f"\nwhat a subscriber reads (World of everything, its Atom feed parsed back): {len(shared)} stories several "
        f"sources carry, {found} of them in the feed; {naming} name the other outlets, {showing} with a headline "
        f"other than the lead's; of their {headlines} distinct headlines, {seen} can be read in the feed"
    )


def _independent_reports(database: Path) -> tuple[int, int]:
    """Stories an independent report joined across sources, and such reports."""
    with sqlite3.connect(database) as db:
        rows = db.execute(INDEPENDENT).fetchall()
    return len({story_id for _, story_id, _ in rows}), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="show this many of the stories, drawn at random")
    parser.add_argument("--seed", type=int, default=1, help="of the draw (--sample)")
    parser.add_argument("--runs", type=int, default=1, help="poll the corpus this many times, each afresh, and compare")
    args = parser.parse_args()
    if not (CORPUS / "INDEX.tsv").exists():
        raise SystemExit(f"no corpus at {CORPUS} (../shared/corpus beside the repository, or AGGREGATOR_CORPUS)")
    print(f"# bench/corpus_joins.py  python {platform.python_version()}  {platform.machine()}")
    print(f"# corpus: {CORPUS}; storage: the embedded SQLite; one poll of everything (a first ingest)")
    with tempfile.TemporaryDirectory() as tmp:
        databases = []
        for run in range(max(1, args.runs)):
            workdir = Path(tmp) / f"run{run + 1}"
            workdir.mkdir()
            database, elapsed = poll_corpus(workdir)
            print(f"poll: {elapsed:.1f} s")
            databases.append(database)
        if len(databases) > 1:
            for run, database in enumerate(databases, 1):
                stories, reports = _independent_reports(database)
                print(f"run {run}: {reports} independent reports joined {stories} stories across sources")
            compare_runs([linked_pairs(database) for database in databases])
            print("\nrun 1 in full:")
        report(databases[0], args.sample, args.seed)
        subscribers_view(Path(tmp) / "run1", databases[0])
    print(
        "\n+ marks the items that joined as independent reports, each with its explanation; "
        "read each story and count the ones that tie two events together"
    )


if __name__ == "__main__":
    main()
