"""Storage against real databases: migrations, the schedule's leases, idempotent ingest."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select, text

from aggregator.cli import main
from aggregator.config import parse_config
from aggregator.errors import SchemaError, StorageError
from aggregator.records import Item, NewItem
from aggregator.store.database import (
    SCHEMA_HEAD,
    SQLITE_CACHE_KIB,
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
)
from aggregator.store.models import ArchiveRow, Base, FetchLogRow, StoryRow
from aggregator.store.repository import Store
from tests.conftest import KEYS_OUT_OF_STEP, postgres_database

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONFIG = """\
settings:
  public_url: https://news.example.org
sources:
  - name: One
    url: https://one.example.com/feed
    tags: [world]
  - name: Two
    url: https://two.example.com/feed
  - name: Three
    url: https://three.example.com/feed
    interval: 1h
outputs:
  - slug: world
    title: World
"""


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    store = Store(engine)
    store.sync_sources(parse_config(CONFIG).source_specs(), NOW)
    return store


def item(key: str, url: str | None = None, title: str = "A title", fingerprint: str = "f1") -> Item:
    return Item(
        key=key, guid=key, link=url, canonical_url=url, title=title, summary_html="<p>x</p>", content_html="",
        text="x", author=None, categories=("a",), published_at=NOW - timedelta(hours=1), updated_at=None,
        fingerprint=fingerprint,
    )  # fmt: skip


def _differences_from_the_models(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


MIGRATION_MODULES = "sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako', 'pygments'))"
"""What a process printing it still holds of what migrating imports (for ``python -c`` probes)."""


def test_migrations_reach_head_and_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    assert _differences_from_the_models(engine) == []


def test_archive_pages_come_back_in_chain_order_with_where_their_week_goes_on(store: Store) -> None:
    """A busy week's tenth page sorts after its ninth (not after its first, as the text does),
    and a page that is not its week's last says where the next one starts."""
    ends = (NOW - timedelta(days=3), 41)
    for label in ("2026-W47-10", "2026-W46", "2026-W47-9", "2026-W47", "2026-W47-2"):
        more = {"continues_at": ends[0], "continues_after": ends[1]} if label != "2026-W47-10" else {}
        row = ArchiveRow(
            slug="world", week=label, entries=1, updated_at=None, etag='"e"', created_at=NOW, atom=b"<feed/>",
            html=b"<p/>", **more,
        )  # fmt: skip
        assert store.save_archive(row)
    pages = store.archive_weeks("world")
    assert [p.week for p in pages] == ["2026-W46", "2026-W47", "2026-W47-2", "2026-W47-9", "2026-W47-10"]
    assert pages[-2].continues == ends and pages[-1].continues is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_archives_keep_their_documents_last_and_the_rows_they_had(database_url: str) -> None:
    """Migration 0010 rebuilds SQLite's archives table with the documents last (what streaming
    them into blobs relies on) and copies every row as it was."""
    engine = make_engine(database_url)
    command.upgrade(alembic_config(engine), "0009")
    row = {"slug": "world", "week": "2026-W47", "entries": 2, "updated_at": None, "etag": '"e"'}
    row |= {"created_at": NOW.replace(tzinfo=None), "atom": b"<feed/>" * 1000, "html": b"<p>\xe2\x80\x94</p>"}
    with engine.begin() as connection:
        columns = ", ".join(row)
        connection.execute(text(f"INSERT INTO archives ({columns}) VALUES (:{', :'.join(row)})"), row)
    ensure_schema(engine)
    with engine.connect() as connection:
        names = [r[1] for r in connection.execute(text("PRAGMA table_info(archives)"))]
        copied = connection.execute(text("SELECT * FROM archives")).mappings().one()
    assert names[-2:] == ["atom", "html"]
    assert {k: copied[k] for k in ("slug", "week", "entries", "etag", "atom", "html")} == {
        k: row[k] for k in ("slug", "week", "entries", "etag", "atom", "html")
    }
    stored = Store(engine)
    assert stored.archive("world", "2026-W47").atom == row["atom"]  # type: ignore[union-attr]
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_story_lookups_read_the_narrow_indexes_not_the_item_rows(engine: Engine) -> None:
    """Migrations 0011 to 0013: a story's first members and their sources, and the stories of
    the window's items, are read from indexes, never from the large ``items`` rows (SQLite
    takes the rowid unless told). Migration 0022: the stories carrying a key are read from the
    key's rows, without touching ``items`` at all."""
    from aggregator.store import matchkeys

    members, wanted = next(iter(matchkeys._STORY_MEMBER_REFS.batches("sqlite", [1, 2], since=NOW, per_story=3)))
    params = {"earliest": 0, "latest": 1, "fanout": 20, "sample": 50, "until": 1, "values_json": "[1, 2]"}
    with engine.connect() as connection:
        plans = {}
        for name, statement, values in (
            ("term", matchkeys._TERM_STORIES_SQLITE, params),
            ("copy", matchkeys._COPY_KEY_STORIES_SQLITE, params),
            ("members", members, wanted),
            ("window", matchkeys._STORIES_IN_WINDOW, {"earliest": NOW, "latest": NOW}),
        ):
            compiled = statement.compile(dialect=connection.dialect)
            bound = compiled.construct_params(values)
            raw = connection.connection.driver_connection
            assert raw is not None
            rows = raw.execute(f"EXPLAIN QUERY PLAN {compiled}", [bound[k] for k in compiled.positiontup or ()])
            plans[name] = [str(row[3]) for row in rows if "items" in str(row[3])]
    assert plans["term"] == [] and plans["copy"] == []
    assert plans["members"] == ["SEARCH items USING COVERING INDEX ix_items_story_members (story_id=? AND sort_at>?)"]
    assert plans["window"] == ["SEARCH items USING COVERING INDEX ix_items_sort (sort_at>? AND sort_at<?)"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_lookups_on_the_driver_see_the_transaction_and_fail_as_sqlalchemy_does(engine: Engine) -> None:
    """``sqlite_rows`` (two of story matching's lookups) runs on the driver's connection: it
    sees what its transaction wrote and has not committed, gives the rows ``execute`` gives, and
    a driver error comes as SQLAlchemy's, which the ingest transaction turns into a StorageError."""
    from sqlalchemy.exc import OperationalError

    from aggregator.store._sql import sqlite_rows

    statement = text("SELECT n, s FROM probe WHERE n >= :low ORDER BY n")
    with engine.begin() as connection:
        connection.execute(text("CREATE TEMP TABLE probe (n INTEGER, s TEXT)"))
        connection.execute(text("INSERT INTO probe VALUES (2, NULL), (1, 'a'), (0, 'z')"))
        rows = sqlite_rows(connection, statement, {"low": 1})
        assert rows == [(1, "a"), (2, None)] == [tuple(row) for row in connection.execute(statement, {"low": 1})]
        with pytest.raises(OperationalError, match="no such table: missing"):
            sqlite_rows(connection, text("SELECT n FROM missing WHERE n = :n"), {"n": 1})


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_connections_get_the_larger_page_cache(engine: Engine) -> None:
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB


def test_the_schema_head_constant_is_alembics_head() -> None:
    assert head_revision() == SCHEMA_HEAD


@pytest.mark.usefixtures("engine")  # migrated to head
def test_a_database_at_head_is_opened_without_importing_alembic(database_url: str) -> None:
    """Alembic (~8 MB) is imported to migrate, not to find that nothing needs migrating."""
    code = (
        "import sys\n"
        "from aggregator.store.database import current_revision, ensure_schema, make_engine\n"
        f"engine = make_engine({database_url!r})\n"
        "ensure_schema(engine)\n"
        "print(current_revision(engine), sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [SCHEMA_HEAD, "[]"]


def test_a_daemon_that_migrated_its_database_does_not_keep_alembic(database_url: str) -> None:
    """A daemon migrates once and runs on: the migration runs in a process of its own
    (``apart``), so Alembic, Mako and Pygments (~11 MB) are not kept in the daemon's memory."""
    code = (
        "import sys\n"
        "from aggregator.store.database import current_revision, ensure_schema, make_engine\n"
        f"engine = make_engine({database_url!r})\n"
        "assert current_revision(engine) is None\n"
        "ensure_schema(engine, apart=True)\n"
        f"print(current_revision(engine), {MIGRATION_MODULES})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [SCHEMA_HEAD, "[]"]
    engine = make_engine(database_url)
    try:  # and what the other process built is the schema Alembic's own migration builds
        assert _differences_from_the_models(engine) == []
    finally:
        engine.dispose()


def test_a_command_that_creates_its_database_migrates_it_apart(tmp_path: Path) -> None:
    """What the daemon's commands run at start (``aggregator poll``, ``run``, ``worker``)."""
    config = tmp_path / "feeds.yaml"
    outputs = "outputs:\n  - slug: world\n    title: World\n"
    config.write_text(f"settings:\n  database: sqlite:///{tmp_path / 'new.db'}\nsources: []\n{outputs}")
    code = (
        "import sys\n"
        "from aggregator.cli import main\n"
        f"code = main(['--config', {str(config)!r}, 'poll', '--once', '--all'])\n"
        f"print(code, {MIGRATION_MODULES})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.splitlines()[-1].split() == ["0", "[]"], done.stdout + done.stderr
    assert "database schema migrated from empty to " + SCHEMA_HEAD in done.stderr


def test_a_newer_schema_is_refused(engine: Engine, database_url: str, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with pytest.raises(SchemaError, match="newer than this aggregator knows"):
        ensure_schema(engine)
    with pytest.raises(SchemaError, match="newer than this aggregator knows"):
        ensure_schema(engine, apart=True)  # refused in the migrating process, raised here the same
    config = tmp_path / "feeds.yaml"
    config.write_text(f"settings:\n  database: {database_url}\n")
    assert main(["--config", str(config), "db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "newer than this aggregator knows" in err and "Traceback" not in err


def test_sync_adds_changes_and_removes_without_losing_items(store: Store) -> None:
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(item("id:1", "https://one.example.com/a"), None)], NOW, "news.example.org")
    edited = CONFIG.replace("https://two.example.com/feed", "https://two.example.com/new").replace(
        "  - name: Three\n    url: https://three.example.com/feed\n    interval: 1h\n", ""
    )
    edited = edited.replace("  - name: One", "  - name: Four\n    url: https://four.example.com/feed\n  - name: One")
    report = store.sync_sources(parse_config(edited).source_specs(), NOW)
    assert report.added == ("Four",)
    assert report.changed == ("Two",)
    assert report.removed == ("Three",)
    health = {h.name: h for h in store.health()}
    assert health["Three"].in_config is False and health["Three"].next_poll_at is None
    assert health["One"].items == 1
    assert store.counts()["items"] == 1


def test_claims_never_overlap_and_expired_leases_are_reclaimed(store: Store) -> None:
    lease = timedelta(minutes=5)
    first = store.claim_due("worker-a", NOW, 2, lease)
    second = store.claim_due("worker-b", NOW, 10, lease)
    assert len(first) == 2 and len(second) == 1
    assert {c.fetch.id for c in first}.isdisjoint({c.fetch.id for c in second})
    assert store.claim_due("worker-c", NOW, 10, lease) == []
    # worker-a was killed: after its lease expires, its sources are claimable again.
    later = store.claim_due("worker-c", NOW + lease + timedelta(seconds=1), 10, lease)
    assert {c.fetch.id for c in later} == {c.fetch.id for c in first} | {c.fetch.id for c in second}


def test_released_leases_are_claimable_at_once(store: Store) -> None:
    claimed = store.claim_due("worker-a", NOW, 10, timedelta(minutes=5))
    store.release([c.fetch.id for c in claimed], "worker-a")
    assert len(store.claim_due("worker-b", NOW, 10, timedelta(minutes=5))) == 3


def test_inserting_the_same_items_twice_stores_them_once(store: Store) -> None:
    batch = [NewItem(item("id:1", "https://x.example/1"), None), NewItem(item("id:2", "https://x.example/2"), None)]
    for _ in range(2):
        with store.ingest() as tx:
            tx.insert_items(1, batch, NOW, "news.example.org")
    assert store.counts() == {"sources": 3, "items": 2, "stories": 2}


def test_the_same_url_in_two_sources_is_one_story_with_a_stable_tag_id(store: Store) -> None:
    url = "https://wire.example/story"
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(item("id:a", url), None)], NOW, "news.example.org")
    with store.ingest() as tx:
        known = tx.stories_by_url([url])
        tx.insert_items(2, [NewItem(item("id:b", url), known[url])], NOW, "news.example.org")
    assert store.counts()["stories"] == 1
    candidates = store.candidates(None, None, 10)
    assert len({c.story_uid for c in candidates}) == 1
    assert candidates[0].story_uid.startswith("tag:news.example.org,2026-11-26:story/")


def test_a_story_is_found_by_an_items_canonical_url_else_by_its_link(store: Store) -> None:
    """``aggregator story <URL>``: by the indexed canonical URL first; an item whose link is no
    article's (a podcast's episodes all linking its home page) has none, and is found by its link."""
    home = "https://podcast.example/"
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(replace(item("id:ep", home), canonical_url=None), None)], NOW, "a.b")
        tx.insert_items(2, [NewItem(item("id:art", "https://n.example/a"), None)], NOW, "a.b")
    with store.session() as s:
        stories: dict[str, int] = dict(s.execute(text("select key, story_id from items")).all())
    article = store.story_by_url("https://n.example/a", "https://n.example/a?utm_source=x")
    episode = store.story_by_url("https://podcast.example", home)
    assert article is not None and article[0] == stories["id:art"]
    assert episode is not None and episode[0] == stories["id:ep"]
    assert store.story_by_url("https://nowhere.example/a", "https://nowhere.example/a") is None


def test_items_per_day_counts_items_on_the_day_their_feed_dates_them(store: Store) -> None:
    with store.ingest() as tx:
        backlog = [replace(item(f"id:b{n}"), published_at=NOW - timedelta(days=3, hours=n)) for n in range(2)]
        tx.insert_items(1, [NewItem(i, None) for i in (*backlog, item("id:today"))], NOW, "a.b")
        tx.insert_items(2, [NewItem(replace(item("id:old"), published_at=NOW - timedelta(days=30)), None)], NOW, "a.b")
    counted = store.items_per_day(NOW - timedelta(days=7))
    assert counted == {"One": {"2026-11-23": 2, "2026-11-26": 1}}  # all first seen today; Two's is older


def test_retention_deletes_old_items_keeps_protected_and_remembers_keys(store: Store) -> None:
    old = NOW - timedelta(days=200)
    with store.ingest() as tx:
        olds = [replace(item(f"id:old{i}", f"https://x.example/old{i}"), published_at=old) for i in range(3)]
        tx.insert_items(1, [NewItem(i, None) for i in olds], old, "a.b")
        tx.insert_items(1, [NewItem(item("id:new", "https://x.example/new"), None)], NOW, "a.b")
    with store.session() as s:
        rows: dict[str, int] = dict(s.execute(text("select key, id from items")).all())
    protected = {rows["id:old0"]}
    report = store.prune(NOW, timedelta(days=90), protected, fetch_log_keep=timedelta(days=14))
    assert (report.items, report.stories) == (2, 2)
    with store.session() as s:
        assert sorted(s.execute(text("select key from items")).scalars()) == ["id:new", "id:old0"]
    with store.ingest() as tx:
        assert tx.deleted_keys(1, ["id:old1", "id:old2", "id:new"]) == {"id:old1", "id:old2"}


def test_retention_off_keeps_every_item_and_still_trims_the_fetch_log_and_old_match_keys(store: Store) -> None:
    old = NOW - timedelta(days=200)
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(replace(item("id:old"), published_at=old), None, match_keys=(11, 12))], old, "a.b")
        tx.insert_items(1, [NewItem(item("id:new"), None, match_keys=(11, 13))], NOW, "a.b")
    with store.session() as s:
        s.add_all(
            FetchLogRow(source_id=1, fetched_at=at, duration_ms=5, status=200, outcome="ok")
            for at in (NOW - timedelta(days=20), NOW - timedelta(hours=1))
        )
    report = store.prune(NOW, None, set(), fetch_log_keep=timedelta(days=14))
    assert (report.items, report.stories, report.fetch_log, report.match_keys) == (0, 0, 1, 2)
    with store.session() as s:
        assert sorted(s.execute(text("select key from items")).scalars()) == ["id:new", "id:old"]
        kept_keys = s.execute(text("select k.key from item_match_keys k join items i on i.id = k.item_id")).scalars()
        assert sorted(kept_keys) == [11, 13]  # the new item's; the old one's were dated 200 days ago
        assert list(s.scalars(select(FetchLogRow.fetched_at))) == [NOW - timedelta(hours=1)]


def _item_counts(engine: Engine) -> tuple[dict[int, int], dict[int, int]]:
    """Each source's count as the sources table keeps it (``item_count``), and its items counted
    in the items table (0 for a source with none), by source id."""
    with engine.connect() as connection:
        kept = {r[0]: r[1] for r in connection.execute(text("select id, item_count from sources"))}
        grouped = connection.execute(text("select source_id, count(*) from items group by source_id"))
        counted = dict.fromkeys(kept, 0) | {r[0]: r[1] for r in grouped}
    return kept, counted


def _new(prefix: str, count: int, published: datetime | None = None) -> list[NewItem]:
    """``count`` new items keyed and linked ``prefix``0, 1, …, each its own story."""
    made = [item(f"{prefix}{n}", f"https://x.example/{prefix}{n}") for n in range(count)]
    return [NewItem(replace(i, published_at=published) if published else i, None) for i in made]


def test_the_sources_item_counts_follow_inserts_retention_and_duplicates(store: Store, engine: Engine) -> None:
    """``sources.item_count`` is what /metrics, /status and ``aggregator sources`` report of the
    items stored: through inserts into several sources in one transaction (as a group commit
    writes them), a rolled-back transaction, a retention pass, and inserts that repeat stored
    keys or a key of their own batch, it equals a count of the items table, source by source."""
    ids = {label.name: label.id for label in store.source_labels()}
    one, two, three = ids["One"], ids["Two"], ids["Three"]
    old = NOW - timedelta(days=200)
    with store.ingest() as tx:
        tx.insert_items(three, _new("id:3-", 2), NOW, "a.b")
        tx.insert_items(one, _new("id:1-old", 4, old), old, "a.b")
        tx.insert_items(one, _new("id:1-new", 1), NOW, "a.b")  # the same source twice in one transaction
        tx.insert_items(two, _new("id:2-old", 3, old), old, "a.b")
    assert _item_counts(engine) == ({one: 5, two: 3, three: 2}, {one: 5, two: 3, three: 2})

    with pytest.raises(ZeroDivisionError), store.ingest() as tx:
        tx.insert_items(two, _new("id:2-lost", 2), NOW, "a.b")
        raise ZeroDivisionError("a fault after the insert: the transaction rolls back, count and all")
    assert _item_counts(engine) == ({one: 5, two: 3, three: 2}, {one: 5, two: 3, three: 2})

    with store.session() as s:
        keep = s.scalar(text("select id from items where key = 'id:1-old0'"))
    report = store.prune(NOW, timedelta(days=90), {keep}, fetch_log_keep=timedelta(days=14))
    assert report.items == 6  # three of One's old items, all of Two's
    assert _item_counts(engine) == ({one: 2, two: 0, three: 2}, {one: 2, two: 0, three: 2})

    again = item("id:2-again", "https://x.example/2-again")
    with store.ingest() as tx:
        # One's stored items again (the kept old one among them) and one new; a key twice in one
        # batch; Three's items again: only the new ones are inserted, and only they counted.
        tx.insert_items(one, [*_new("id:1-old", 1, old), *_new("id:1-new", 2)], NOW, "a.b")
        tx.insert_items(two, [NewItem(again, None), NewItem(again, None)], NOW, "a.b")
        tx.insert_items(three, _new("id:3-", 2), NOW, "a.b")
    expected = {one: 3, two: 1, three: 2}
    assert _item_counts(engine) == (expected, expected)
    assert store.stats(NOW).items == 6 == store.counts()["items"]
    assert {h.name: h.items for h in store.health()} == {"One": 3, "Two": 1, "Three": 2}


def test_the_daily_pass_sets_right_item_counts_changed_outside_the_store(store: Store, engine: Engine) -> None:
    """Items deleted by hand, or stored by a worker of a version that kept no counts, leave a
    source's count wrong for good; the daily retention pass counts every source's items again
    and says how many counts were off, with ``retention: null`` too."""
    ids = {label.name: label.id for label in store.source_labels()}
    one, two, three = ids["One"], ids["Two"], ids["Three"]
    with store.ingest() as tx:
        tx.insert_items(one, _new("id:1-", 4), NOW, "a.b")
        tx.insert_items(two, _new("id:2-", 3), NOW, "a.b")
    with engine.begin() as connection:
        connection.execute(text("delete from items where key in ('id:1-0', 'id:1-1')"))  # an operator's DELETE
        connection.execute(text("update sources set item_count = 7 where id = :id"), {"id": three})
    assert _item_counts(engine) == ({one: 4, two: 3, three: 7}, {one: 2, two: 3, three: 0})
    report = store.prune(NOW, None, set(), fetch_log_keep=timedelta(days=14))
    assert report.recounted == 2 and report.items == 0
    assert _item_counts(engine) == ({one: 2, two: 3, three: 0}, {one: 2, two: 3, three: 0})
    assert store.prune(NOW, None, set(), fetch_log_keep=timedelta(days=14)).recounted == 0


@pytest.fixture
def one_source_on_postgresql() -> Iterator[tuple[Store, Engine, int]]:
    """A store on a fresh PostgreSQL database with one source, and the source's id."""
    for url in postgres_database():
        engine = make_engine(url)
        try:
            ensure_schema(engine)
            store = Store(engine)
            store.sync_sources(parse_config(CONFIG).source_specs()[:1], NOW)
            (source,) = [label.id for label in store.source_labels()]
            yield store, engine, source
        finally:
            engine.dispose()


def _recount(store: Store) -> int:
    """The daily pass with ``retention: null``: how many sources' counts it set right."""
    return store.prune(NOW, None, set(), fetch_log_keep=timedelta(days=14)).recounted


@pytest.mark.postgres
def test_a_recount_leaves_out_a_polls_uncommitted_items_which_the_poll_then_adds(
    one_source_on_postgresql: tuple[Store, Engine, int],
) -> None:
    """A poll's transaction has inserted items but neither committed them nor added them to its
    source's count while the daily pass counts the source again: the recount neither waits for
    it (the items' foreign key locks the source's row only against a change of its key) nor
    counts them, and the poll adds them as it commits."""
    import threading

    store, engine, source = one_source_on_postgresql
    inserted, recounted = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def poll() -> None:
        try:
            with store.ingest() as tx:
                tx.insert_items(source, _new("id:", 3), NOW, "a.b")
                inserted.set()
                assert recounted.wait(30)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    assert inserted.wait(30)
    fixed = _recount(store)
    recounted.set()
    thread.join()
    assert failures == [] and fixed == 0  # nothing committed yet: 0 was right
    assert _item_counts(engine) == ({source: 3}, {source: 3})


@pytest.mark.postgres
def test_a_recount_waits_for_a_poll_that_recorded_itself_and_counts_its_items(
    one_source_on_postgresql: tuple[Store, Engine, int],
) -> None:
    """A poll that recorded itself on its source's row (``record_poll`` does so first) and
    inserted items, while the daily pass sets right a count gone wrong: the recount waits for
    the poll's commit and then counts its items. Counted as of before the wait, it would set 0
    where the poll's items make it 2."""
    import threading

    store, engine, source = one_source_on_postgresql
    with engine.begin() as connection:
        connection.execute(text("update sources set item_count = 7"))  # gone wrong, as by hand
    inserted = threading.Event()
    failures: list[BaseException] = []
    fixed: list[int] = []

    def recorded_poll() -> None:
        try:
            with store.ingest() as tx:
                recorded = text("update sources set last_polled_at = :now where id = :id")
                tx.c.execute(recorded, {"now": NOW, "id": source})
                tx.insert_items(source, _new("id:", 2), NOW, "a.b")
                inserted.set()
                time.sleep(1.0)  # the recount starts meanwhile and waits for this row
        except BaseException as exc:
            failures.append(exc)

    polling = threading.Thread(target=recorded_poll)
    polling.start()
    assert inserted.wait(30)
    counting = threading.Thread(target=lambda: fixed.append(_recount(store)))
    counting.start()
    polling.join()
    counting.join()
    assert failures == [] and fixed == [1]
    assert _item_counts(engine) == ({source: 2}, {source: 2})


def test_concurrent_ingests_into_the_same_sources_count_each_stored_item_once(store: Store, engine: Engine) -> None:
    """Workers ingesting at once into the same sources (on PostgreSQL truly at once; SQLite takes
    them in turn) each add what they inserted to the counts, which the database adds up: a count
    read and written back would lose one worker's items. A key two workers insert is stored and
    counted once."""
    import threading

    ids = sorted(label.id for label in store.source_labels())
    workers, rounds, width = 4, 8, 6
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for turn in range(rounds):
                # Each worker's keys overlap the next one's: most are inserted by two workers.
                keys = range(worker, worker + width)
                for attempt in range(5):
                    try:
                        with store.ingest() as tx:
                            for source in ids:
                                new = [NewItem(item(f"{turn}-{k}", f"https://x.example/{source}/{turn}/{k}"), None)
                                       for k in keys]  # fmt: skip
                                tx.insert_items(source, new, NOW, "a.b")
                        break
                    except StorageError as exc:  # a deadlock or lock timeout the database broke
                        if not exc.transient or attempt == 4:
                            raise
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    per_source = rounds * (workers - 1 + width)
    assert _item_counts(engine) == (dict.fromkeys(ids, per_source), dict.fromkeys(ids, per_source))


def test_migration_0018_counts_the_items_a_database_already_holds(store: Store, engine: Engine) -> None:
    """A database of the previous schema, with items, gets each source's exact count from the
    migration: here fewer than the count the store kept before going back to 0017, since an
    item was deleted while the column was gone."""
    from sqlalchemy import inspect

    ids = {label.name: label.id for label in store.source_labels()}
    with store.ingest() as tx:
        tx.insert_items(ids["One"], _new("id:1-", 3), NOW, "a.b")
        tx.insert_items(ids["Two"], _new("id:2-", 2), NOW, "a.b")
    command.downgrade(alembic_config(engine), "0017")
    assert "item_count" not in {c["name"] for c in inspect(engine).get_columns("sources")}
    with engine.begin() as connection:
        assert connection.execute(text("select count(*) from items")).scalar() == 5  # the downgrade kept them
        connection.execute(text("delete from items where key = 'id:1-0'"))
    command.upgrade(alembic_config(engine), "head")
    expected = {ids["One"]: 2, ids["Two"]: 2, ids["Three"]: 0}
    assert _item_counts(engine) == (expected, expected)
    assert _differences_from_the_models(engine) == []


def test_migration_0022_gives_the_match_keys_a_database_holds_their_items_stories(store: Store, engine: Engine) -> None:
    """Keys stored before 0022 had no story of their own: the migration copies each item's, so
    that lookups, which read the key rows alone, find the stories of a database's old items."""
    with store.ingest() as tx:
        kept = tx.insert_items(1, [NewItem(i.item, None, match_keys=(7, 8)) for i in _new("id:k-", 3)], NOW, "a.b")
    stories = {i.item_id: i.story_id for i in kept.values()}
    assert len(set(stories.values())) == 3
    command.downgrade(alembic_config(engine), "0021")
    with engine.connect() as connection:
        assert len(connection.execute(text("select * from item_match_keys")).all()) == 6  # the downgrade kept them
    command.upgrade(alembic_config(engine), "head")
    with engine.connect() as connection:
        rows = connection.execute(text("select item_id, story_id from item_match_keys")).all()
    assert sorted(rows) == sorted((item_id, story) for item_id, story in stories.items() for _ in (7, 8))
    with store.ingest() as tx:
        found = tx.term_stories([7, 8], NOW - timedelta(days=1), NOW, 50)
    every = frozenset(stories.values())
    assert {key: carriers.stories for key, carriers in found.items()} == {7: every, 8: every}
    assert _differences_from_the_models(engine) == []


def test_match_keys_name_the_story_their_item_is_in_through_merges_splits_and_late_updates(
    store: Store, engine: Engine
) -> None:
    """``MatchKeyRow.story_id`` follows its item: a merge, a split, and an update planned from a
    story read before another worker merged it (the plan's stored story is stale by then)."""
    from aggregator.records import ItemUpdate

    with store.ingest() as tx:
        made = tx.insert_items(1, [NewItem(i.item, None, match_keys=(7, 8)) for i in _new("id:m-", 3)], NOW, "a.b")
        planned = tx.stored_items(1, ["id:m-0"])["id:m-0"]  # as a worker's plan reads it
    first, second, third = (made[f"id:m-{n}"].story_id for n in range(3))

    def out_of_step() -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(KEYS_OUT_OF_STEP))]

    with store.ingest() as tx:
        tx.merge_stories([(first, second)])
    assert out_of_step() == []
    with store.ingest() as tx:  # the plan made before the merge lands after it
        assert planned.story_id == first
        tx.update_items([ItemUpdate(planned, replace(item("id:m-0"), title="New"), match_keys=(7, 9))], NOW, 1)
    assert out_of_step() == []
    with store.ingest() as tx:
        split = tx.split_off(second, [made["id:m-0"].item_id], NOW, "tag:a.b,2026:split", "split:1")
    assert out_of_step() == []
    with store.ingest() as tx:
        found = {k: c.stories for k, c in tx.term_stories([7, 8, 9], NOW - timedelta(days=1), NOW, 50).items()}
    assert found == {7: {split, second, third}, 8: {second, third}, 9: {split}}


def test_a_story_holding_more_items_than_a_statement_takes_parameters_merges_with_its_keys(
    store: Store, engine: Engine
) -> None:
    """A story merged away moves its items' keys in a statement that does not grow with it:
    PostgreSQL takes at most 65,535 parameters in one, and a story joined by one URL (a feed
    whose every item links to its own home page) can hold more items than that."""
    many = 65_536
    with store.ingest() as tx:
        first = tx.insert_items(1, [NewItem(item("id:a"), None, match_keys=(1,))], NOW, "a.b")["id:a"].story_id
        into = tx.insert_items(2, [NewItem(item("id:b"), None, match_keys=(1,))], NOW, "a.b")["id:b"].story_id
        tx.insert_items(1, [NewItem(item(f"id:{n}"), first, match_keys=(2,)) for n in range(many)], NOW, "a.b")
    with store.ingest() as tx:
        tx.merge_stories([(first, into)])
    with engine.connect() as connection:
        assert connection.execute(text(KEYS_OUT_OF_STEP)).all() == []
        moved = connection.execute(text("select count(*) from item_match_keys where story_id = :s"), {"s": into})
        assert moved.scalar() == many + 2


def test_a_retention_pass_told_to_stop_stops_between_transactions_and_the_next_pass_goes_on(store: Store) -> None:
    old = NOW - timedelta(days=200)
    with store.ingest() as tx:
        olds = [replace(item(f"id:old{i}"), published_at=old) for i in range(3)]
        tx.insert_items(1, [NewItem(i, None, match_keys=(7,)) for i in olds], old, "a.b")
    asked = 0

    def stop_after_the_first() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1

    cut = store.prune(NOW, timedelta(days=90), set(), fetch_log_keep=timedelta(days=14), stopping=stop_after_the_first)
    assert (cut.items, cut.stories, cut.match_keys, cut.complete) == (3, 0, 0, False)
    rest = store.prune(NOW, timedelta(days=90), set(), fetch_log_keep=timedelta(days=14))
    assert (rest.items, rest.stories, rest.complete) == (0, 3, True)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(StoryRow)) == 0


def test_db_prune_with_retention_off_says_so_and_still_trims_the_fetch_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import write_config

    config = write_config(tmp_path, [{"name": "One", "url": "http://127.0.0.1:9/feed"}], settings="retention: null")
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'aggregator.db'}")
    store = Store(engine)
    store.sync_sources(parse_config(config.read_text()).source_specs(), NOW)
    with store.session() as s:
        s.add(FetchLogRow(source_id=1, fetched_at=NOW - timedelta(days=400), duration_ms=5, status=200, outcome="ok"))
    capsys.readouterr()
    assert main(["--config", str(config), "db", "prune"]) == 0
    out = capsys.readouterr().out
    assert "removed 0 items (settings.retention: null keeps every item)" in out and "1 fetch-log rows" in out
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(FetchLogRow)) == 0
    engine.dispose()


def test_a_write_waiting_for_sqlite_gets_its_turn_while_retention_deletes_many_keys(tmp_path: Path) -> None:
    """Retention deletes in short transactions with pauses: a poll's write that waits for the
    lock at most 300 ms (the service waits 30 s) is never refused while it runs. In one
    transaction, deleting these keys held the lock for seconds."""
    import sqlite3
    import threading

    url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    store = Store(engine)
    store.sync_sources(parse_config(CONFIG).source_specs(), NOW)
    old = NOW - timedelta(days=60)
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(replace(item("id:old"), published_at=old), None)], old, "a.b")
    with engine.begin() as connection:
        stale = [(key, int(old.timestamp()), 1) for key in range(400_000)]
        connection.exec_driver_sql("INSERT INTO item_match_keys (key, sort_epoch, item_id) VALUES (?, ?, ?)", stale)
    reports = []
    pruning = threading.Thread(
        target=lambda: reports.append(store.prune(NOW, None, set(), fetch_log_keep=timedelta(days=14)))
    )
    pruning.start()
    writer = sqlite3.connect(tmp_path / "aggregator.db", timeout=0.3, isolation_level=None)
    written = 0
    try:
        for _ in range(10):
            time.sleep(0.03)
            writer.execute("BEGIN IMMEDIATE")  # refused with "database is locked" after 300 ms of waiting
            writer.execute("UPDATE sources SET error_count = error_count + 1 WHERE id = 1")
            writer.execute("COMMIT")
            written += 1
        still_pruning = pruning.is_alive()
    finally:
        writer.close()
        pruning.join()
        engine.dispose()
    assert written == 10
    assert still_pruning, "retention ended before the writes: they tested nothing"
    assert reports and reports[0].match_keys == 400_000


def test_match_candidates_find_shared_keys_in_the_window_and_drop_stock_phrases(store: Store) -> None:
    from aggregator.store.repository import MAX_KEY_FANOUT

    def keyed(key: str, keys: tuple[int, ...]) -> NewItem:
        return NewItem(item(key, f"https://x.example/{key}"), None, match_signature=f"sig-{key}", match_keys=keys)

    stock = 99
    common = tuple(keyed(f"id:c{n}", (stock,)) for n in range(MAX_KEY_FANOUT + 1))
    with store.ingest() as tx:
        tx.insert_items(1, [keyed("id:a", (1, 2)), keyed("id:b", (2, 3)), *common], NOW, "news.example.org")
    hour = timedelta(hours=1)
    with store.ingest() as tx:
        found = tx.match_candidates([2, 3, 9, stock], NOW - 2 * hour, NOW)
        outside = tx.match_candidates([1], NOW - 10 * hour, NOW - 2 * hour)
    assert sorted(found) == [2, 3]  # the stock phrase is carried by more than MAX_KEY_FANOUT items
    assert sorted(c.signature for c in found[2]) == ["sig-id:a", "sig-id:b"]
    assert [c.signature for c in found[3]] == ["sig-id:b"]
    assert outside == {}  # the items are dated an hour ago: outside that window


def test_migration_0006_converts_match_keys_both_ways(store: Store, engine: Engine) -> None:
    from alembic import command

    from aggregator.cluster import HEADLINE_KEY
    from aggregator.store.database import alembic_config

    keys = (0x0A1B2C3D, 7, HEADLINE_KEY + 0xFFFFFFFF)
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(item("id:k"), None, match_signature="s", match_keys=keys)], NOW, "n.example")
    sort_epoch = int((NOW - timedelta(hours=1)).timestamp())

    def rows() -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            return sorted(tuple(r) for r in connection.execute(text("SELECT * FROM item_match_keys")))

    current = sorted((key, sort_epoch, 1) for key in keys)
    assert [(r[0], r[1]) for r in rows()] == [(k, e) for k, e, _ in current]
    command.downgrade(alembic_config(engine), "0005")
    with engine.connect() as connection:
        old = sorted(connection.execute(text("SELECT key, sort_at FROM item_match_keys")).all())
    assert [k for k, _ in old] == ["h" + "f" * 8, "p00000007", "p0a1b2c3d"]
    assert all(str(at).startswith("2026-11-26 11:00:00") for _, at in old)
    command.upgrade(alembic_config(engine), "head")
    assert [(r[0], r[1]) for r in rows()] == [(k, e) for k, e, _ in current]


def test_lookups_by_many_awkward_keys_find_exactly_the_stored_ones(store: Store) -> None:
    # A poll's keys travel as one array parameter (JSON on SQLite): quotes, backslashes,
    # non-ASCII and a list longer than any IN list we would render must all come back intact.
    from aggregator.store.repository import IN_CHUNK

    awkward = ['id:"quoted"', "id:back\\slash", "id:naïve-東京-🙂", "id:'single'", "id:tab\tand space"]
    stored = awkward + [f"id:{n}" for n in range(IN_CHUNK + 20)]
    with store.ingest() as tx:
        new = [NewItem(item(key, f"https://x.example/{n}?q={key}"), None) for n, key in enumerate(stored)]
        inserted = tx.insert_items(1, new, NOW, "a.b")
        assert sorted(inserted) == sorted(stored) and len({i.item_id for i in inserted.values()}) == len(stored)
    asked = [*stored, "id:absent", "id:NAÏVE-東京-🙂"]
    with store.ingest() as tx:
        found = tx.stored_items(1, asked)
        assert sorted(found) == sorted(stored)
        assert all(found[key].key == key for key in stored)
        assert tx.stored_items(2, asked) == {}  # another source's keys are its own
        urls = [f"https://x.example/{n}?q={key}" for n, key in enumerate(stored)]
        by_url = tx.stories_by_url([*urls, "https://x.example/absent"])
        assert sorted(by_url) == sorted(urls) and len(set(by_url.values())) == len(urls)
        assert tx.deleted_keys(1, asked) == set()


def test_story_ids_are_the_uuid5_of_the_story_key() -> None:
    # Output entry ids must never churn: story_uid computes uuid5 by hand, so it is pinned
    # to the standard library's uuid5 here.
    import uuid

    from aggregator.store.repository import STORY_NAMESPACE, story_uid

    day = datetime(2026, 11, 26, 23, 59, tzinfo=UTC)
    for key in ["url:https://x.example/a", "item:3:id:ü-東京", "id:" + "x" * 500, ""]:
        assert story_uid(key, "news.example.org", day) == (
            f"tag:news.example.org,2026-11-26:story/{uuid.uuid5(STORY_NAMESPACE, key).hex}"
        )
    # And to one id minted before the rewrite: published ids must stay what they were.
    minted = "tag:a.b,2026-11-26:story/dffac0fb46ec5c369d06b256447b7d3a"
    assert story_uid("url:https://x.example/a", "a.b", day) == minted


def test_undated_items_sort_by_their_placement_and_ties_by_document_order(store: Store) -> None:
    undated = [replace(item(f"id:u{n}", f"https://one.example.com/u{n}"), published_at=None) for n in range(4)]
    # Stored before placement existed: all four share their first-seen time, in document order.
    placed = [replace(i, placed_at=NOW - timedelta(minutes=n)) for n, i in enumerate(undated[2:])]
    with store.ingest() as tx:
        tx.insert_items(1, [NewItem(i, None) for i in undated[:2]], NOW - timedelta(hours=2), "a.b")
        tx.insert_items(2, [NewItem(i, None) for i in reversed(placed)], NOW, "a.b")
    found = store.candidates(None, None, limit=10)
    assert [c.link for c in found] == [f"https://one.example.com/u{n}" for n in (2, 3, 0, 1)]
    assert not any(c.dated for c in found)


def test_candidates_come_from_the_given_sources_only_and_dated_when_asked(store: Store) -> None:
    ids = {label.name: label.id for label in store.source_labels()}
    assert sorted(ids) == ["One", "Three", "Two"]
    undated = replace(item("id:c", "https://x.example/c"), published_at=None)
    with store.ingest() as tx:
        tx.insert_items(ids["One"], [NewItem(item("id:a", "https://x.example/a"), None)], NOW, "a.b")
        tx.insert_items(ids["Two"], [NewItem(item("id:b", "https://x.example/b"), None)], NOW, "a.b")
        tx.insert_items(ids["Two"], [NewItem(undated, None)], NOW, "a.b")
    assert sorted(c.link or "" for c in store.candidates({ids["Two"]}, None, 10)) == [
        "https://x.example/b",
        "https://x.example/c",
    ]
    assert [c.link for c in store.candidates({ids["Two"]}, None, 10, dated_only=True)] == ["https://x.example/b"]
    assert len(store.candidates(None, None, 10)) == 3  # None: every source
    assert store.candidates(set(), None, 10) == []  # no source: nothing, not everything
    story = store.candidates({ids["One"]}, None, 10)[0].story_id
    assert store.story_candidates({ids["Two"]}, [story]) == []
    assert [c.source_name for c in store.story_candidates(None, [story])] == ["One"]


def test_candidates_are_the_newest_in_order_whether_their_last_days_hold_enough_or_not(store: Store) -> None:
    """``candidates`` first looks at the last ``CANDIDATE_HORIZON`` (from the newest item
    stored, or from where the page before ended) and at all of them only when that holds too
    few: the pages are the newest items in order either way, across the horizon's edge too."""
    from aggregator.store.outputs import CANDIDATE_HORIZON

    ids = {label.name: label.id for label in store.source_labels()}
    # One every twelfth of a horizon, four horizons back, in two sources; a third, quiet source's newest item
    # is older than any horizon of the others.
    stamps = [NOW - k * CANDIDATE_HORIZON / 12 for k in range(48)]
    with store.ingest() as tx:
        for k, at in enumerate(stamps):
            dated = replace(item(f"id:{k}", f"https://x.example/{k}"), published_at=at)
            tx.insert_items(ids["One" if k % 2 else "Two"], [NewItem(dated, None)], NOW, "a.b")
        old = replace(item("id:quiet", "https://x.example/quiet"), published_at=NOW - 5 * CANDIDATE_HORIZON)
        tx.insert_items(ids["Three"], [NewItem(old, None)], NOW, "a.b")
    newest = [f"https://x.example/{k}" for k in range(48)]
    both = {ids["One"], ids["Two"]}
    first = store.candidates(both, None, 10)  # within the last horizon
    assert [c.link for c in first] == newest[:10]
    second = store.candidates(both, None, 20, after=(first[-1].published_at, first[-1].item_id))
    assert [c.link for c in second] == newest[10:30]  # past the horizon's edge
    assert [c.link for c in store.candidates(both, None, 40)] == newest[:40]  # the horizon holds 13
    assert [c.link for c in store.candidates({ids["Three"]}, None, 10)] == ["https://x.example/quiet"]
    assert [c.link for c in store.candidates({ids["Two"]}, NOW - CANDIDATE_HORIZON * 2, 100)] == [
        f"https://x.example/{k}" for k in range(0, 25, 2)
    ]


def test_a_sqlite_file_that_cannot_be_read_is_not_called_unreachable_and_a_full_disk_is_named(tmp_path: Path) -> None:
    from aggregator.store.database import _unreachable

    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        full = _unreachable(engine, "disk I/O error")
        assert full.startswith(
            f"cannot open the database sqlite:///{tmp_path / 'a.db'}: disk I/O error; is its disk full?"
        )
        assert _unreachable(engine, "file is not a database").endswith(": file is not a database")
    finally:
        engine.dispose()
    engine = make_engine("postgresql://aggregator:secret@db.invalid/aggregator")
    try:
        assert _unreachable(engine, "could not translate host name") == (
            "cannot reach the database postgresql://aggregator:***@db.invalid/aggregator: could not translate host name"
        )
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_sqlite_migration_that_fails_midway_leaves_nothing_behind_and_runs_again(database_url: str) -> None:
    """Found by the upgrade audit: on SQLite a migration's first CREATE TABLE was committed on
    its own, so a migration stopped after it (killed, or failing) left the table behind, and
    every later upgrade failed on "table item_match_keys_new already exists"."""
    engine = make_engine(database_url)
    command.upgrade(alembic_config(engine), "0004")
    with engine.begin() as connection:  # a key whose item is gone: 0005's copy refuses it
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.execute(text("INSERT INTO item_match_keys (key, sort_at, item_id) VALUES ('k', '2026-01-01', 999)"))
    engine.dispose()
    engine = make_engine(database_url)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        command.upgrade(alembic_config(engine), "0005")

    def tables() -> set[str]:
        with engine.connect() as connection:
            return {r[0] for r in connection.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}

    assert "item_match_keys_new" not in tables() and current_revision(engine) == "0004"
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM item_match_keys WHERE item_id = 999"))
        # As a run of an earlier version, killed after its CREATE TABLE, left the file:
        connection.execute(text("CREATE TABLE item_match_keys_new (key VARCHAR(16))"))
    ensure_schema(engine)
    assert current_revision(engine) == head_revision() and "item_match_keys_new" not in tables()
    engine.dispose()
