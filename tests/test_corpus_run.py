"""One run over the whole corpus: every file served over HTTP as a source, one `poll --once --all`.

tests/test_corpus.py feeds each file of ``shared/corpus`` to the parser; this feeds them all,
at once, to the product: each file is a source of one feeds.yaml, served by the real HTTP
server (``application/json`` for ``.json`` files, else ``application/xml`` without a charset,
so the document's own declaration decides as it did for the INDEX), polled by
``aggregator poll --once --all`` with a real parse pool into a real SQLite file, and again into
a real PostgreSQL database (with ``AGGREGATOR_TEST_DATABASE_URL``). The run must
exit 0 with no traceback, no source may hit the per-source fault boundary, and every source
without items must say why (or be a feed that simply has none).

Acceptance (issue 11): sources with at least one stored item are at least as many as the files
feedparser alone reads entries from (INDEX.tsv ``feedparser_entries`` > 0, bozo or not) plus
the ill-formed files (bozo, no entries for feedparser) we recovered items from. The counts and
the reasons for the rest are printed (they show without ``-s``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aggregator import metrics
from aggregator.cli import main
from aggregator.config import Output, load_config
from aggregator.curate import Curation
from aggregator.publisher import Publisher
from aggregator.store.database import make_engine
from aggregator.store.repository import Store
from tests.conftest import STORES, query_rows, store_url
from tests.corpusrun import CROSS_OUTLET_JOINS, serve_corpus
from tests.server import FeedServer
from tests.test_corpus import CORPUS

pytestmark = pytest.mark.skipif(
    not (CORPUS / "INDEX.tsv").is_file(), reason=f"feed corpus not found at {CORPUS} (set AGGREGATOR_CORPUS)"
)


@dataclass(frozen=True)
class SourceOutcome:
    path: str
    items: int
    last_error: str | None
    last_warning: str | None
    kind: str  # "json", "gzip" or "xml": what the body is
    feedparser_entries: int  # what feedparser alone reads (INDEX.tsv)
    feedparser_bozo: bool


def source_errors() -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics.SOURCE_ERRORS)
    return {
        sample.labels["error_class"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


@dataclass(frozen=True)
class CorpusRun:
    code: int  # of `aggregator poll --once --all`
    outcomes: dict[str, SourceOutcome]  # by corpus path (= source name)
    faults: dict[str, float]  # failed polls counted in this run, by error class
    seconds: float  # the poll command's wall time
    own_outlet_joins: list[tuple[str, str]]  # (source, title) of items joining their own source's story on names
    cross_outlet_joins: Counter[str]  # items that joined a story other sources are in, by how they joined
    world_dated: tuple[bool, ...]  # whether each entry of a World output with the default settings is dated


# Items that joined a story all of whose items come from their own source, by an explanation
# (``stories.Judgement.reason``) that is neither a copy's nor a shared URL's.
_OWN_OUTLET_JOINS = (
    "select s.name, i.title from items i join sources s on s.id = i.source_id where i.story_id in "
    "(select story_id from items group by story_id having count(distinct source_id) = 1 and count(*) > 1) "
    "and i.match_reason like 'joined%' and i.match_reason not like '%copies item%' "
    "and i.match_reason not like '%copies an item%' "
    "and i.match_reason not like '%same URL%' order by s.name, i.id"
)


@pytest.fixture(scope="module", params=STORES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole run on a real SQLite file and again on a real PostgreSQL database: the corpus's
    odd feeds meet two stores that accept different things (PostgreSQL refuses a NUL character
    in text, and checks types and lengths that SQLite lets through). Once per module: the run
    takes a minute, and every test here reads the same one."""
    yield from store_url(request.param, tmp_path_factory.mktemp("corpus-db"))


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> CorpusRun:
    """Serve every INDEX file and poll them all once through the CLI."""
    tmp_path = tmp_path_factory.mktemp("corpus-run")
    server = FeedServer().start()
    try:
        rows, config = serve_corpus(server, tmp_path, database_url)
        before = source_errors()
        started = time.monotonic()
        code = main(["--config", str(config), "poll", "--once", "--all"])
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    after = source_errors()
    faults = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    world = _world_curation(config)
    stored = {
        str(name): (int(str(count)), None if error is None else str(error), None if warning is None else str(warning))
        for name, count, error, warning in query_rows(
            database_url,
            "select s.name, count(i.id), s.last_error, s.last_warning from sources s "
            "left join items i on i.source_id = s.id group by s.id",
        )
    }
    own_outlet_joins = [(str(name), str(title)) for name, title in query_rows(database_url, _OWN_OUTLET_JOINS)]
    cross_outlet_joins = Counter({str(how): int(str(n)) for how, n in query_rows(database_url, CROSS_OUTLET_JOINS)})
    outcomes = {
        row["path"]: SourceOutcome(
            row["path"],
            *stored[row["path"]],
            _kind(CORPUS / row["path"]),
            int(row["feedparser_entries"] or 0),
            row["feedparser_bozo"] == "1",
        )
        for row in rows
    }
    world_dated = tuple(entry.lead.dated for entry in world.entries)
    return CorpusRun(code, outcomes, faults, elapsed, own_outlet_joins, cross_outlet_joins, world_dated)


WORLD = Output(slug="world", title="World")


def _world_curation(config_path: Path) -> Curation:
    """What a World output of every source, with the default settings, would show of the
    database the run filled (the run's config has no outputs: publishing is not its subject)."""
    config = load_config(config_path).config
    engine = make_engine(config.settings.database_url)
    try:
        return Publisher(config, Store(engine)).curation(WORLD, datetime.now(UTC))
    finally:
        engine.dispose()


def test_one_run_over_the_corpus_exits_0_and_no_source_hits_the_fault_boundary(corpus_run: CorpusRun) -> None:
    code, outcomes, faults = corpus_run.code, corpus_run.outcomes, corpus_run.faults
    assert code == 0
    assert {k: v for k, v in faults.items() if k not in ("fetch", "parse")} == {}
    assert faults.get("fetch", 0) == 0  # every file was served
    # Every source without items says why in one line, or is a feed that has no entries.
    unexplained = [
        o.path for o in outcomes.values() if o.last_error is not None and (not o.last_error or "\n" in o.last_error)
    ]
    assert unexplained == []


def test_at_least_as_many_sources_have_items_as_feedparser_reads_plus_the_recovered(
    corpus_run: CorpusRun, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = corpus_run.outcomes
    with_items = [o for o in outcomes.values() if o.items]
    feedparser_reads = [o for o in outcomes.values() if o.feedparser_entries > 0]
    beyond = [o for o in with_items if o.feedparser_entries == 0]
    # Ill-formed XML that feedparser (strict, then loose) reads no entry from, and we stored items of.
    recovered = [o for o in beyond if o.kind == "xml" and o.feedparser_bozo]
    lost = [o for o in feedparser_reads if not o.items]
    without = [o for o in outcomes.values() if not o.items]
    reasons = Counter(_reason(o) for o in without)
    with capsys.disabled():
        print(
            f"\ncorpus run over {len(outcomes)} files ({corpus_run.seconds:.1f} s): "
            f"{len(with_items)} sources with stored items; "
            f"feedparser alone reads entries from {len(feedparser_reads)}; "
            f"recovered ill-formed XML: {len(recovered)}; "
            f"other sources beyond feedparser: {dict(Counter(o.kind for o in beyond))}; "
            f"read by feedparser but no item stored: {len(lost)} {[f'{o.path}: {o.last_warning}' for o in lost]}"
        )
        joins = ", ".join(f"{count} {how}" for how, count in sorted(corpus_run.cross_outlet_joins.items()))
        print(f"items that joined another source's story: {joins or 'none'}")
        print(f"{len(without)} sources without items, by reason:")
        for reason, count in reasons.most_common():
            print(f"  {count:5d}  {reason}")
    assert len(with_items) >= len(feedparser_reads) + len(recovered)
    # What feedparser reads and we store nothing of: only documents cut short in their only
    # entry, whose unfinished entry is dropped on purpose (parse.py) and which say so.
    assert [o.path for o in lost if "truncated document" not in (o.last_warning or "")] == []


def test_no_story_takes_its_own_outlets_items_on_names_alone(corpus_run: CorpusRun) -> None:
    """Real feeds repeat their own names in every item (a fire brigade's dates and "Uhr", a
    broker desk's ticker, a podcast's title), and a feed's items share them as reports of one
    event do: so only a copy joins a story whose members all come from the item's own source
    (``stories``). The labelled sets, with an item or two per outlet, cannot show what that
    rule is worth; the corpus, a feed per source, can: without it, stories here gather one
    feed's different items (listings, insider sales, callouts)."""
    assert corpus_run.own_outlet_joins == []
    # The explanations still read as the queries expect: the corpus links items across sources in
    # all three ways (else the check above could pass on wording alone).
    assert set(corpus_run.cross_outlet_joins) == {"by URL", "as copies", "as independent reports"}


def test_world_leads_with_dated_news_after_one_poll_of_the_corpus(corpus_run: CorpusRun) -> None:
    """About half of the corpus's feeds date none of their items. Read for the first time, their
    items are of an age nobody can tell; placed at the moment they were first seen, they once
    filled World, above every dated report (``poll.ages_unknown``)."""
    assert len(corpus_run.world_dated) == WORLD.max_entries
    assert all(corpus_run.world_dated)


def _kind(path: Path) -> str:
    head = path.read_bytes()[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return "gzip" if head.startswith(b"\x1f\x8b") else "json" if head[:1] in (b"{", b"[") else "xml"


def _reason(outcome: SourceOutcome) -> str:
    """A source's reason for having no items, with line/column and counts taken out so alike ones group."""
    if outcome.last_error is None:
        warning = (outcome.last_warning or "").split(" at line ")[0].split(" (")[0]
        return f"a feed with no entries (warning: {warning})" if warning else "a feed with no entries"
    reason = outcome.last_error.split(" at line ")[0]
    return reason if len(reason) <= 100 else reason[:99] + "…"
