"""Story matching on real labelled news, through the real pipeline: outlet feeds served over HTTP.

``bench/dedup.py`` scores the matching functions directly; this script asks what a user sees.
Each outlet (host) of a labelled set becomes one RSS feed served by a local HTTP server on
127.0.0.1, every feed one source of a fresh ``feeds.yaml``, and one real
``aggregator --config X poll --once --all`` (a subprocess of the installed CLI) fetches,
parses, matches and stores them all. The story each item ended in is then read back from the
database and scored against the labels, pairwise:

* precision: of the pairs of items the pipeline put in one story, the share that carry one label;
* recall: of the pairs that carry one label, the share the pipeline put in one story.

Sets (``../shared/stories``, see its README; the texts are publishers': measurement only):

* ``wikinews``: ``wikinews-dev.csv``. Publication times are mostly unknown, so a stream is
  simulated as the README says: each story's items arrive within ``--spread-hours`` of the
  story's start, and story starts are spread at random over ``--days`` days (seeded), so time
  alone does not give the labels away. Several seeds can be run (``--seeds``).
* ``semeval``: ``semeval2022-task8-en-pairs.csv``. Each pair's two articles are published by two
  outlets within an hour of each other, pairs spread over the same days; scored as the share of
  same-event pairs (Overall ≤ 1.5) and of different-event pairs (Overall ≥ 3.5) linked.

    .venv/bin/python bench/stories_pipeline.py                 # both sets, seed 1
    .venv/bin/python bench/stories_pipeline.py --seeds 1 2 3 --errors
    .venv/bin/python bench/stories_pipeline.py --days 3 --every 2   # rounds 2 h apart: ~1.5 min a seed and set
    .venv/bin/python bench/stories_pipeline.py --headlines-only   # feeds of headlines, no text
    .venv/bin/python bench/stories_pipeline.py --database-url postgresql://postgres@127.0.0.1:5432/test

One poll of everything is a first ingest of a backlog: each outlet's items arrive together,
outlet after outlet, so a story may be started by whichever report is polled first (a side
piece, say) rather than the first published. ``--every`` polls in rounds as a running service
does, and shows what the order costs.

Each figure is followed by the same items decided by the pure function in memory, in
publication order, on the features the pipeline stored for them (``in_memory``): the same
stream and the same features, so the difference is what the pipeline's order and its per-poll
reads cost, not a difference between two simulated streams.

With several seeds the last lines sum them (``Totals``): the figures of one seed move by tens of
pairs from one run to the next, since a first ingest decides feeds in the order their fetches
end, and a change to the matching is read on the sum, never on one seed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

from benchsupport import PairRates, database, own_tree_env, wilson_interval
from sqlalchemy import create_engine, text

from aggregator import cluster, stories, storystream

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT.parent / "shared" / "stories"


@dataclass(frozen=True)
class Article:
    ref: str  # unique within the run
    label: str  # same label = same story (for SemEval: the pair it belongs to)
    outlet: str
    url: str
    title: str
    lead: str
    published: datetime


def wikinews(seed: int, days: float, spread_hours: float, now: datetime) -> list[Article]:
    rows = list(csv.DictReader((STORIES / "wikinews-dev.csv").open(encoding="utf-8")))
    rng = random.Random(seed)
    first = now - timedelta(days=days + 1)
    starts = {story: first + timedelta(days=rng.uniform(0, days)) for story in sorted({r["story_id"] for r in rows})}
    articles = []
    for number, row in enumerate(rows):
        at = starts[row["story_id"]] + timedelta(hours=rng.uniform(0, spread_hours))
        articles.append(Article(f"w{number}", row["story_id"], row["host"], row["url"], row["title"], row["lead"], at))
    return articles


@dataclass(frozen=True)
class Pair:
    ligne: str
    overall: float


def semeval(seed: int, days: float, now: datetime, headlines: bool = False) -> tuple[list[Article], dict[str, Pair]]:
    rows = list(csv.DictReader((STORIES / "semeval2022-task8-en-pairs.csv").open(encoding="utf-8")))
    rng = random.Random(seed)
    first = now - timedelta(days=days + 1)
    articles, pairs = [], {}
    for row in rows:
        if not (row["title_1"] or row["lead_1"]) or not (row["title_2"] or row["lead_2"]):
            continue  # scraping failed for one side: nothing to match
        if headlines and not (row["title_1"] and row["title_2"]):
            continue  # nothing to match on headlines alone
        at = first + timedelta(days=rng.uniform(0, days))
        label = f"s{row['ligne']}"
        pairs[label] = Pair(row["ligne"], float(row["Overall"]))
        for side in ("1", "2"):
            articles.append(
                Article(
                    f"{label}-{side}",
                    label,
                    f"semeval-outlet-{side}-{rng.randrange(40)}",
                    f"https://{label}-{side}.semeval.example/article",
                    row[f"title_{side}"] or "(untitled)",
                    "" if headlines else row[f"lead_{side}"],
                    at + timedelta(minutes=rng.uniform(0, 60)),
                )
            )
    return articles, pairs


def rss(outlet: str, articles: list[Article]) -> bytes:
    items = []
    for a in sorted(articles, key=lambda a: a.published, reverse=True):
        items.append(
            "<item>"
            f"<title>{escape(a.title)}</title><link>{escape(a.url)}</link>"
            f'<guid isPermaLink="false">{escape(a.ref)}</guid>'
            f"<description>{escape(a.lead)}</description>"
            f"<pubDate>{format_datetime(a.published, usegmt=True)}</pubDate>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{escape(outlet)}</title><link>https://{escape(outlet)}/</link><description>x</description>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


class Feeds:
    """The outlet feeds on a free 127.0.0.1 port, one path per outlet: ``bodies`` gives the
    document at each path as it is now (None: no such path)."""

    def __init__(self, bodies: Callable[[str], bytes | None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = bodies(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Stored:
    """What the pipeline stored for an article: its story and what matching decided it on."""

    story_id: int
    source_id: int
    features: str | None
    signature: str | None
    reason: str | None  # why it joined its story or started one (``aggregator items`` shows it)


def run_pipeline(
    articles: list[Article],
    workdir: Path,
    extra_settings: list[str],
    every: timedelta | None = None,
    database_url: str | None = None,
) -> tuple[dict[str, Stored], float]:
    """Serve, poll with the real CLI, and return what was stored of each article and the polls' wall time.
    ``database_url``: a PostgreSQL server's, on which a fresh database is made for the run and
    dropped after it; None: the embedded default (SQLite in ``workdir``).

    ``every`` None: one poll of everything, as a first ingest of a backlog (each outlet's items
    arrive together, outlet after outlet). Otherwise the feeds are polled in rounds, as a
    running service polls them: at each round a feed holds only the articles published by the
    round's moment, rounds ``every`` apart from the first article to the last."""
    by_outlet: dict[str, list[Article]] = defaultdict(list)
    for a in articles:
        by_outlet[a.outlet].append(a)
    paths = {f"/feed/{n}.xml": outlet for n, outlet in enumerate(sorted(by_outlet))}
    moments = [max(a.published for a in articles)]
    if every is not None:
        first = min(a.published for a in articles)
        moments = [first + every * n for n in range(int((moments[0] - first) / every) + 2)]
    shown = [moments[0]]  # the moment the feeds are served as of

    def body(path: str) -> bytes | None:
        outlet = paths.get(path)
        if outlet is None:
            return None
        return rss(outlet, [a for a in by_outlet[outlet] if a.published <= shown[0]])

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(database(database_url, keep=False)) if database_url else None
        elapsed = poll(paths, body, workdir, extra_settings + ([f"database: {url!r}"] if url else []), moments, shown)
        engine = create_engine(url or f"sqlite:///{workdir / 'data' / 'aggregator.db'}")
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT guid, story_id, source_id, match_features, match_signature, match_reason FROM items")
                ).all()
        finally:
            engine.dispose()
    stored = {guid: Stored(*rest) for guid, *rest in rows}
    missing = [a.ref for a in articles if a.ref not in stored]
    if missing:
        print(f"  warning: {len(missing)} articles not stored, e.g. {missing[:3]}")
    return stored, elapsed


def poll(
    paths: dict[str, str],
    body: Callable[[str], bytes | None],
    workdir: Path,
    extra_settings: list[str],
    moments: list[datetime],
    shown: list[datetime],
) -> float:
    """Serve the feeds and poll them all with the installed CLI at each of ``moments`` (the
    moment ``body`` serves the feeds as of, ``shown[0]``); the polls' wall time."""
    feeds = Feeds(body)
    try:
        config = workdir / "feeds.yaml"
        lines = [
            "settings:",
            f"  data_dir: {workdir / 'data'}",
            "  allow_private_networks: true",
            "  public_url: http://stories.bench.example",
            "  per_host_concurrency: 16",
            *(f"  {line}" for line in extra_settings),
            "sources:",
        ]
        for path, outlet in sorted(paths.items(), key=lambda kv: kv[1]):
            lines += [f"  - name: {outlet!r}", f"    url: http://127.0.0.1:{feeds.port}{path}"]
        lines += ["outputs:", "  - slug: world", "    title: World"]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        started = time.monotonic()
        for moment in moments:
            shown[0] = moment
            done = subprocess.run(
                [sys.executable, "-m", "aggregator", "--config", str(config), "poll", "--once", "--all"],
                capture_output=True,
                text=True,
                cwd=workdir,
                env=own_tree_env(),
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"aggregator poll failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return time.monotonic() - started
    finally:
        feeds.close()


def in_memory(articles: list[Article], stored: dict[str, Stored]) -> dict[str, int]:
    """Each stored article's story when the pure decision takes the same items, with the
    features the pipeline stored for them, in publication order (``storystream.Stream``): what
    the pipeline's figure would be if the poll saw every item in time order and storage answered
    each item's lookups over exactly its own window. The gap to the pipeline's figure is what
    the order of a first ingest and the per-poll reads cost together."""
    stream = storystream.Stream(stories.TERM_WINDOW)
    story_of = {}
    for number, a in enumerate(sorted((a for a in articles if a.ref in stored), key=lambda a: (a.published, a.ref))):
        kept = stored[a.ref]
        if kept.features is None:
            continue  # stored without features (matching off or lexical): nothing to decide on
        signature = cluster.Signature.loads(kept.signature) if kept.signature else None
        features = stories.Features.loads(kept.features, signature)
        story_of[a.ref], _ = stream.add(number, a.published, features, None, kept.source_id)
    return {ref: stream.story_of(story) for ref, story in story_of.items()}


@dataclass(frozen=True)
class Pairwise(PairRates):
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    merged: list[tuple[Article, Article]]


def score(articles: list[Article], story_of: dict[str, int]) -> Pairwise:
    stored = [a for a in articles if a.ref in story_of]
    true = predicted = correct = 0
    merged = []
    for a, b in itertools.combinations(stored, 2):
        same_label = a.label == b.label
        same_story = story_of[a.ref] == story_of[b.ref]
        true += same_label
        predicted += same_story
        correct += same_label and same_story
        if same_story and not same_label:
            merged.append((a, b))
    return Pairwise(true, predicted, correct, merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["wikinews", "semeval"], choices=["wikinews", "semeval"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--days", type=float, default=10.0, help="story starts spread over this many days")
    parser.add_argument("--spread-hours", type=float, default=6.0, help="a story's items arrive within this")
    parser.add_argument(
        "--setting", action="append", default=[], help="extra settings line, e.g. 'story_matching: lexical'"
    )
    parser.add_argument(
        "--errors", action="store_true", help="list wrongly merged pairs, and SemEval's same-event pairs not linked"
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL server to store on (a fresh database per run, dropped after it), e.g. "
        "postgresql://postgres@127.0.0.1:5432/test; default: the embedded SQLite",
    )
    parser.add_argument(
        "--headlines-only", action="store_true", help="feeds carry headlines and no text, as title-only feeds do"
    )
    parser.add_argument(
        "--every",
        type=float,
        metavar="HOURS",
        help="poll in rounds this many hours apart, each showing what was published by then, as a "
        "running service does (default: one poll of everything, as a first ingest of a backlog)",
    )
    args = parser.parse_args()
    every = timedelta(hours=args.every) if args.every else None
    if not STORIES.is_dir():
        raise SystemExit(f"no labelled stories at {STORIES}")
    print(f"# bench/stories_pipeline.py  python {platform.python_version()}  {platform.machine()}")
    print(f"# run: {' '.join(sys.argv[1:]) or '(defaults)'}; settings: {args.setting or 'defaults'}")
    print(f"# storage: {'PostgreSQL, a fresh database per run' if args.database_url else 'the embedded SQLite'}")
    print(f"# polls: {f'rounds every {args.every:g} h' if every else 'one poll of everything (a first ingest)'}")
    if args.headlines_only:
        print("# items: headlines only, no text")
    now = datetime.now(UTC).replace(microsecond=0)
    totals = Totals()
    for seed in args.seeds:
        if "wikinews" in args.sets:
            totals.wikinews.append(report_wikinews(seed, args, now, every))
        if "semeval" in args.sets:
            totals.semeval.append(report_semeval(seed, args, now, every, totals))
    if len(args.seeds) > 1:
        totals.report(args.seeds)


@dataclass
class Totals:
    """Every seed's figures, summed: one run's seeds vary by tens of pairs each (a first
    ingest's order is the order the fetches end), and a change is read on the sum."""

    wikinews: list[tuple[Pairwise, Pairwise | None]] = field(default_factory=list)
    semeval: list[tuple[Linked, Linked | None]] = field(default_factory=list)
    same_linked: list[tuple[frozenset[str], frozenset[str]]] = field(default_factory=list)
    """Per seed: the same-event pairs (labels), and those of them linked."""

    def report(self, seeds: list[int]) -> None:
        named = f"seeds {' '.join(map(str, seeds))}"
        pipeline = [result for result, _ in self.wikinews]
        pure = [ideal for _, ideal in self.wikinews if ideal is not None]
        for label, scores in ((f"wikinews-dev, {named}: ", pipeline), ("  in memory: ", pure)):
            if scores:
                true, predicted, correct = (sum(getattr(s, f) for s in scores) for f in _PAIR_COUNTS)
                summed = Pairwise(true, predicted, correct, [])  # sums only: no merged pairs listed
                print(
                    f"{label}pairs true {summed.true_pairs}, linked {summed.predicted_pairs}, correct "
                    f"{summed.correct_pairs}, wrong {summed.predicted_pairs - summed.correct_pairs}: "
                    f"P {summed.precision:.4f} R {summed.recall:.4f}"
                )
        linked = [result for result, _ in self.semeval]
        pure_linked = [ideal for _, ideal in self.semeval if ideal is not None]
        for label, counts in ((f"semeval, {named}: ", linked), ("  in memory: ", pure_linked)):
            if counts:
                same, same_of, different, different_of = (sum(c[n] for c in counts) for n in range(4))
                print(
                    f"{label}same event linked {same}/{same_of} = {same / max(1, same_of):.1%}; "
                    f"different linked {different}/{different_of} = {different / max(1, different_of):.1%}"
                )
        if self.same_linked:
            self._pair_spread()

    def _pair_spread(self) -> None:
        """How far the seeds' SemEval figure can be read: every seed judges the same few dozen
        same-event pairs, only placed at other times, so a pair is a few points of the share and
        the seeds are not more pairs. The interval is taken on the distinct pairs."""
        pairs = frozenset().union(*(same for same, _ in self.same_linked))
        runs = len(self.same_linked)
        times = {p: sum(p in linked for _, linked in self.same_linked) for p in pairs}
        always, never = sum(n == runs for n in times.values()), sum(n == 0 for n in times.values())
        share = sum(times.values()) / max(1, runs * len(pairs))
        low, high = wilson_interval(round(share * len(pairs)), len(pairs))
        print(
            f"  {len(pairs)} distinct same-event pairs (one is {1 / max(1, len(pairs)):.1%}): linked in every seed "
            f"{always}, in some {len(pairs) - always - never}, in none {never}; share {share:.1%}, "
            f"95% interval on {len(pairs)} pairs (Wilson) {low:.0%} to {high:.0%}"
        )


_PAIR_COUNTS = ("true_pairs", "predicted_pairs", "correct_pairs")
Linked = tuple[int, int, int, int]
"""SemEval pairs: same-event pairs linked, of how many; different-event pairs linked, of how many."""


def report_wikinews(
    seed: int, args: argparse.Namespace, now: datetime, every: timedelta | None
) -> tuple[Pairwise, Pairwise | None]:
    articles = wikinews(seed, args.days, args.spread_hours, now)
    if args.headlines_only:
        articles = [replace(a, lead="") for a in articles]
    with tempfile.TemporaryDirectory() as tmp:
        stored, elapsed = run_pipeline(articles, Path(tmp), args.setting, every, args.database_url)
    story_of = {ref: kept.story_id for ref, kept in stored.items()}
    result = score(articles, story_of)
    outlets = len({a.outlet for a in articles})
    print(
        f"wikinews-dev seed {seed}: {len(story_of)} items from {outlets} outlets, "
        f"{len(set(story_of.values()))} stories formed (140 labelled); "
        f"pairs true {result.true_pairs}, linked {result.predicted_pairs}, correct {result.correct_pairs}: "
        f"P {result.precision:.4f} R {result.recall:.4f}; poll {elapsed:.1f} s"
    )
    ideal = None
    if pure := in_memory(articles, stored):
        ideal = score(articles, pure)
        print(
            f"  the same stored features in memory, in publication order: linked {ideal.predicted_pairs}, "
            f"correct {ideal.correct_pairs}: P {ideal.precision:.4f} R {ideal.recall:.4f}"
        )
    if args.errors:
        show_merged_stories(articles, stored, result.merged)
    return result, ideal


MERGED_SHOWN = 20
"""Stories holding several labels that ``--errors`` lists, with their members' explanations."""


def show_merged_stories(
    articles: list[Article], stored: dict[str, Stored], merged: list[tuple[Article, Article]]
) -> None:
    """Each story the pipeline formed across labels: its members in publication order, with
    their labels and the explanation stored for each (which story it joined, on what evidence,
    what it merged), so that a wrong link shows how it was made, not only that it was."""
    stories = sorted({stored[a.ref].story_id for a, _ in merged})
    for story in stories[:MERGED_SHOWN]:
        members = sorted((a for a in articles if a.ref in stored and stored[a.ref].story_id == story),
                         key=lambda a: (a.published, a.ref))  # fmt: skip
        labels = Counter(a.label for a in members)
        wrong = sum(x * y for x, y in itertools.combinations(labels.values(), 2))
        print(f"    story {story}, {wrong} wrong pairs: " + ", ".join(f"{n} of {label}" for label, n in labels.items()))
        for a in members:
            print(f"      {a.published:%m-%d %H:%M} {a.label} {a.outlet[:24]:24} {a.title[:60]!r}")
            print(f"          {(stored[a.ref].reason or '')[:400]}")
    if len(stories) > MERGED_SHOWN:
        print(f"    and {len(stories) - MERGED_SHOWN} more stories across labels")


def report_semeval(
    seed: int, args: argparse.Namespace, now: datetime, every: timedelta | None, totals: Totals
) -> tuple[Linked, Linked | None]:
    """One seed's SemEval run, reported; its same-event pairs and those linked go to ``totals``."""
    articles, pairs = semeval(seed, args.days, now, args.headlines_only)
    with tempfile.TemporaryDirectory() as tmp:
        stored, elapsed = run_pipeline(articles, Path(tmp), args.setting, every, args.database_url)
    story_of = {ref: kept.story_id for ref, kept in stored.items()}
    same = [p for p in pairs if pairs[p].overall <= 1.5]
    different = [p for p in pairs if pairs[p].overall >= 3.5]

    def linked(label: str, story_of: dict[str, int] = story_of) -> bool:
        a, b = story_of.get(f"{label}-1"), story_of.get(f"{label}-2")
        return a is not None and a == b

    same_linked = sum(linked(p) for p in same)
    totals.same_linked.append((frozenset(same), frozenset(p for p in same if linked(p))))
    different_linked = sum(linked(p) for p in different)
    cross = score(articles, story_of)
    print(
        f"semeval seed {seed}: {len(pairs)} pairs; same event (Overall ≤ 1.5) linked "
        f"{same_linked}/{len(same)} = {same_linked / max(1, len(same)):.1%}; different (≥ 3.5) linked "
        f"{different_linked}/{len(different)} = {different_linked / max(1, len(different)):.1%}; "
        f"items of different pairs merged: {len(cross.merged)} pairs; poll {elapsed:.1f} s"
    )
    ideal = None
    if pure := in_memory(articles, stored):
        ideal = (sum(linked(p, pure) for p in same), len(same), sum(linked(p, pure) for p in different), len(different))
        print(
            f"  the same stored features in memory, in publication order: same event linked "
            f"{ideal[0]}/{ideal[1]}; different linked {ideal[2]}/{ideal[3]}"
        )
    if args.errors:
        title = {a.ref: a.title for a in articles}
        for p in same:
            if not linked(p):
                one, two = title.get(f"{p}-1", ""), title.get(f"{p}-2", "")
                print(f"    same event not linked: ligne {pairs[p].ligne}: {one[:50]!r} ~ {two[:50]!r}")
        for p in different:
            if linked(p):
                print(f"    linked though different: ligne {pairs[p].ligne} (Overall {pairs[p].overall})")
        for a, b in cross.merged[:40]:  # articles of two pairs in one story (not labelled either way)
            print(f"    merged across pairs {a.label}/{b.label}: {a.title[:60]!r} ~ {b.title[:60]!r}")
    return (same_linked, len(same), different_linked, len(different)), ideal


if __name__ == "__main__":
    main()
