"""One source's trouble stays its own: regressions and the per-source fault boundary.

Driven from outside where it can be: the ``aggregator`` CLI (``poll --once --all``) against a
real HTTP server and a real database (SQLite file and PostgreSQL), the stored state read back.
"""

from __future__ import annotations

import contextlib
import html
import json
import random
import string
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from aggregator import metrics, normalize, parseworker
from aggregator.cli import main
from aggregator.dedupe import decide_ingest
from aggregator.fetch import Fetcher
from aggregator.records import FetchResult, SourceToFetch
from aggregator.status import render_status
from aggregator.store.database import make_engine
from aggregator.store.repository import IngestTransaction, Store
from tests.conftest import items_per_source, query_rows, write_config
from tests.feeds import rss2
from tests.server import FeedServer, Route

STORIES_OF_POD = (
    "select count(distinct story_id) from items i join sources s on s.id = i.source_id where s.name = 'pod'"
)


def shared_link_rss(count: int) -> bytes:
    """A link blog / podcast shape: every entry has its own guid but the same link."""
    items = "".join(
        f"<item><title>Episode {n}</title><link>https://pod.example.com/</link>"
        f"<guid isPermaLink='false'>episode-{n}</guid><description>Show notes {n}</description></item>"
        for n in range(count)
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Pod</title>"
        f"<link>https://pod.example.com/</link>{items}</channel></rss>"
    ).encode()


def poll_all(config: Path) -> int:
    return main(["--config", str(config), "poll", "--once", "--all"])


def test_new_items_sharing_a_link_are_all_stored_and_the_run_goes_on(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """Defect 1: two new items with one link made insert_items compare Items (TypeError), which
    aborted the whole `poll --once --all` run after that source."""
    sources = [{"name": "pod", "url": server.add("/pod", body=shared_link_rss(3))}]
    sources += [{"name": f"news {n}", "url": server.add(f"/news{n}", body=rss2(n, 4))} for n in range(3)]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")

    assert poll_all(config) == 0
    counts = items_per_source(database_url)
    assert counts == {"pod": 3, "news 0": 4, "news 1": 4, "news 2": 4}
    # Three stories: a link all the episodes share is the podcast's, not an article's URL.
    stories = query_rows(database_url, STORIES_OF_POD)
    assert stories == [(3,)]
    errors = query_rows(database_url, "select name, error_count, last_error from sources where error_count > 0")
    assert errors == []


# --- the per-source fault boundary ----------------------------------------------------------

BAD_FEED = 99  # rss2(BAD_FEED, …) links read https://news.example.com/feed99/…


def _is_bad(items: object) -> bool:
    return any(f"/feed{BAD_FEED}/" in (getattr(i, "link", None) or "") for i in items)  # type: ignore[attr-defined]


def _inject(monkeypatch: pytest.MonkeyPatch, stage: str) -> str:
    """Make one stage raise, for the 'bad' source only: a bug no real input produces today.

    Returns the exception class the source must record.
    """
    if stage == "fetch":
        real_fetch = Fetcher.fetch

        async def fetch(self: Fetcher, source: SourceToFetch) -> FetchResult:
            if source.name == "bad":
                raise RuntimeError("boom in fetch")
            return await real_fetch(self, source)

        monkeypatch.setattr(Fetcher, "fetch", fetch)
        return "RuntimeError"
    if stage == "parse":
        real_parse = parseworker.document_to_feed

        def parse(body: bytes, url: str, *args: Any) -> Any:
            if url.endswith("/bad"):
                raise ValueError("boom in parse")
            return real_parse(body, url, *args)

        monkeypatch.setattr(parseworker, "document_to_feed", parse)
        return "ValueError"
    if stage == "match":

        def decide(items: Any, *args: Any) -> Any:
            if _is_bad(items):
                raise KeyError("boom in match")
            return decide_ingest(items, *args)

        monkeypatch.setattr("aggregator.poll.decide_ingest", decide)  # where the poll decision calls it
        return "KeyError"
    # store: the items are inserted, then the transaction fails: they must be rolled back
    real_insert = IngestTransaction.insert_items

    def insert(self: IngestTransaction, source_id: int, new: Any, *args: Any, **kwargs: Any) -> Any:
        inserted = real_insert(self, source_id, new, *args, **kwargs)
        if _is_bad(n.item for n in new):
            raise ZeroDivisionError("boom in store")
        return inserted

    monkeypatch.setattr(IngestTransaction, "insert_items", insert)
    return "ZeroDivisionError"


def _source_errors(error_class: str) -> float:
    registry = CollectorRegistry()
    registry.register(metrics.SOURCE_ERRORS)
    return registry.get_sample_value("aggregator_source_errors_total", {"error_class": error_class}) or 0.0


@pytest.mark.parametrize("stage", ["fetch", "parse", "match", "store"])
def test_an_unexpected_error_costs_its_source_alone_and_is_recorded_on_it(
    server: FeedServer,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stage: str,
) -> None:
    sources = [{"name": "bad", "url": server.add("/bad", body=rss2(BAD_FEED, 3))}]
    sources += [{"name": f"news {n}", "url": server.add(f"/news{n}", body=rss2(n, 4))} for n in range(3)]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    error_class = _inject(monkeypatch, stage)
    counted = _source_errors(error_class)

    assert poll_all(config) == 0
    counts = items_per_source(database_url)
    assert counts == {"bad": 0, "news 0": 4, "news 1": 4, "news 2": 4}  # "store": its inserts rolled back
    [(errors, last_error, reason, lease, body_hash)] = query_rows(
        database_url,
        "select error_count, last_error, next_poll_reason, lease_owner, body_hash from sources where name = 'bad'",
    )
    assert (errors, last_error, reason, lease, body_hash) == (
        1, f"{error_class}: {'boom in ' + stage!r}" if error_class == "KeyError" else f"{error_class}: boom in {stage}",
        "backoff after 1 error", None, None,
    )  # fmt: skip
    assert _source_errors(error_class) == counted + 1
    out, err = capsys.readouterr()
    assert "1 failed" in out
    about_bad = [line for line in err.splitlines() if "'bad'" in line]
    assert len(about_bad) == 1 and "WARNING" in about_bad[0] and f"boom in {stage}" in about_bad[0]
    assert "Traceback" not in err

    # The source keeps its error where operators look...
    assert main(["--config", str(config), "sources", "--json"]) == 0
    health = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert health["bad"]["status"] == "failing (200)" if stage != "fetch" else "failing"
    assert error_class in str(health["bad"]["last_error"])

    # ...and once the bug is gone, the same bytes are handled again: nothing was lost.
    monkeypatch.undo()
    assert poll_all(config) == 0
    assert items_per_source(database_url)["bad"] == 3
    assert query_rows(database_url, "select error_count, last_error from sources where name = 'bad'") == [(0, None)]


def test_a_source_whose_failure_cannot_be_recorded_either_still_costs_only_itself(
    server: FeedServer,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sources = [{"name": "bad", "url": server.add("/bad", body=rss2(BAD_FEED, 3))}]
    sources += [{"name": f"news {n}", "url": server.add(f"/news{n}", body=rss2(n, 4))} for n in range(2)]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    real_record = IngestTransaction.record_poll

    def record_poll(self: IngestTransaction, source_id: int, result: FetchResult, record: Any) -> None:
        if result.url.endswith("/bad"):
            raise AttributeError("boom in record_poll")
        real_record(self, source_id, result, record)

    monkeypatch.setattr(IngestTransaction, "record_poll", record_poll)
    counted = _source_errors("AttributeError")

    assert poll_all(config) == 0
    assert items_per_source(database_url) == {"bad": 0, "news 0": 4, "news 1": 4}
    # Nothing could be written about it: its lease stays until it expires, then it is retried.
    [(lease, errors)] = query_rows(database_url, "select lease_owner, error_count from sources where name = 'bad'")
    assert lease is not None and errors == 0
    assert _source_errors("AttributeError") == counted + 1
    out, err = capsys.readouterr()
    assert "polled 3 sources" in out and "1 failed" in out
    [line] = [line for line in err.splitlines() if "'bad'" in line]
    assert " ERROR " in line and "AttributeError: boom in record_poll, and recording it failed too" in line
    assert "Traceback" not in err


def long_identity_rss() -> bytes:
    """One entry with a 9 KB guid, one with a 9 KB link: random, so no index compresses them."""
    rng = random.Random(11)
    guid = "".join(rng.choices(string.ascii_letters, k=9000))
    link = "https://news.example.com/" + "".join(rng.choices(string.ascii_letters, k=9000))
    return (
        "<?xml version='1.0'?><rss version='2.0'><channel><title>Long</title>"
        f"<item><guid isPermaLink='false'>{guid}</guid><title>Long guid</title></item>"
        f"<item><link>{link}</link><title>Long link</title></item></channel></rss>"
    ).encode()


def test_ids_and_urls_too_long_to_index_are_stored_by_hash(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL refuses an index entry past ~2.7 KB: a 9 KB guid stopped the whole run (exit 2)."""
    sources = [
        {"name": "long", "url": server.add("/long", body=long_identity_rss())},
        {"name": "news", "url": server.add("/news", body=rss2(1, 2))},
    ]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    assert poll_all(config) == 0
    assert poll_all(config) == 0  # and the same items again are the same items
    assert items_per_source(database_url) == {"long": 2, "news": 2}
    keys = query_rows(database_url, "select i.key, length(i.link) from items i join sources s on s.id = i.source_id "
                 "where s.name = 'long' order by i.key")  # fmt: skip
    [(link_key, link_length), (guid_key, _)] = keys
    assert str(link_key).startswith("hash:") and str(guid_key).startswith("id-hash:")
    assert link_length == len("https://news.example.com/") + 9000  # the link is kept, just not matched on


def test_values_the_database_refuses_fail_their_source_not_the_run(
    server: FeedServer, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the identity cap, PostgreSQL refuses the 9 KB key: that source fails, alone."""
    monkeypatch.setattr(normalize, "MAX_IDENTITY_BYTES", 1 << 20)
    sources = [
        {"name": "long", "url": server.add("/long", body=long_identity_rss())},
        {"name": "news", "url": server.add("/news", body=rss2(1, 2))},
    ]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    assert poll_all(config) == 0
    counts = items_per_source(database_url)
    [(errors, last_error)] = query_rows(database_url, "select error_count, last_error from sources where name = 'long'")
    if database_url.startswith("sqlite"):  # SQLite has no such limit
        assert (counts, errors, last_error) == ({"long": 2, "news": 2}, 0, None)
    else:
        assert (counts, errors) == ({"long": 0, "news": 2}, 1)
        assert str(last_error).startswith("ProgramLimitExceeded: database error: index row")


def _break_database(database_url: str) -> None:
    """Make the database fail for real: PostgreSQL's is dropped (connections killed), SQLite's
    files are overwritten in place (the open connection then finds no database in them)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        for suffix in ("", "-wal", "-shm"):  # WAL mode: the newest pages may be in the -wal file
            with contextlib.suppress(FileNotFoundError), open(url.database + suffix, "r+b") as file:
                file.write(b"\0" * 4096)
        return
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')


def test_a_failed_database_stops_the_run_with_one_line_and_exit_2(
    server: FeedServer, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the database itself failing stops `poll --once`: here it fails while a fetch is in flight."""
    sources = [{"name": "slow", "url": server.add("/slow", Route(body=rss2(1, 3), delay=6))}]
    sources += [{"name": f"news {n}", "url": server.add(f"/news{n}", body=rss2(n, 4))} for n in range(3)]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")

    def fast_ones_committed() -> bool:
        try:
            counts = items_per_source(database_url)
        except SQLAlchemyError:  # the schema may not be there yet
            return False
        return all(counts.get(f"news {n}") == 4 for n in range(3))

    def breaker() -> None:
        # Broken once the fast sources have committed (a fixed wait was too short where the
        # parse pool is slow to start) and while "slow" is still waiting for its answer.
        deadline = time.monotonic() + 5
        while not (server.hits("/slow") and fast_ones_committed()) and time.monotonic() < deadline:
            time.sleep(0.05)
        _break_database(database_url)

    thread = threading.Thread(target=breaker)
    thread.start()
    try:
        code = poll_all(config)
    finally:
        thread.join()
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aggregator: database error: ")


# --- lenient parsing ------------------------------------------------------------------------

CLEAN = rss2(7, 5)
ILL_FORMED = {
    # What the real web serves: each is read by feedparser's loose parser after the strict one gave up.
    "bare ampersand": (CLEAN.replace(b"talks resume", b"talks & resume"), 5, "ill-formed XML: not well-formed"),
    "unclosed tag": (CLEAN.replace(b"<title>Feed 7 story 1", b"<title><b>Feed 7 story 1"), 5, "mismatched tag"),
    "junk after the end": (CLEAN + b"<p>Powered by</p>", 5, "junk after document element"),
    "control characters": (CLEAN.replace(b"talks resume", b"talks \x01\x1b resume"), 5, "not well-formed"),
    # Cut in the third entry: the two whole ones are kept, the half one dropped.
    "truncated": (CLEAN[: CLEAN.index(b"<item>", CLEAN.index(b"story2")) - 30], 2, "truncated document"),
}


@pytest.mark.parametrize("case", sorted(ILL_FORMED))
def test_ill_formed_documents_give_their_readable_items_and_a_warning_on_the_source(
    server: FeedServer, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    body, expected, warning = ILL_FORMED[case]
    sources = [{"name": "sloppy", "url": server.add("/sloppy", body=body)}]
    sources.append({"name": "tidy", "url": server.add("/tidy", body=rss2(1, 3))})
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    assert main(["--config", str(config), "db", "upgrade"]) == 0  # so that a new database is no warning either
    capsys.readouterr()

    assert poll_all(config) == 0
    assert items_per_source(database_url) == {"sloppy": expected, "tidy": 3}
    err = capsys.readouterr().err
    assert "Traceback" not in err and " WARNING " not in err  # a forgiven document is no failure

    assert main(["--config", str(config), "sources", "--json"]) == 0
    health = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert (health["sloppy"]["status"], health["sloppy"]["error_count"], health["sloppy"]["last_error"]) == (
        "ok", 0, None,
    )  # fmt: skip
    assert warning in str(health["sloppy"]["last_warning"])
    assert health["tidy"]["last_warning"] is None
    assert main(["--config", str(config), "sources"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sloppy")]
    assert "warning: " in line
    engine = make_engine(database_url)
    try:
        page = render_status(Store(engine)).decode()
    finally:
        engine.dispose()
    assert f'<div class="warning">warning: {html.escape(health["sloppy"]["last_warning"])}</div>' in page

    # The publisher fixes the feed: the warning goes, the items stay once each.
    server.routes["/sloppy"] = Route(body=CLEAN)
    assert poll_all(config) == 0
    assert items_per_source(database_url) == {"sloppy": 5, "tidy": 3}
    assert query_rows(database_url, "select last_warning from sources where name = 'sloppy'") == [(None,)]


def oversized_rss() -> bytes:
    """One entry whose fields are far past any article's: a 10.5 MB description (lxml refuses
    to write a text node past 10 MB), a 20,000-character title, a 5,000-character author and
    300 categories; and one ordinary entry after it."""
    return (
        "<?xml version='1.0'?><rss version='2.0'><channel><title>Huge</title>"
        f"<item><guid isPermaLink='false'>huge-1</guid><title>{'headline ' * 2_500}</title>"
        f"<author>{'x' * 5_000}</author>"
        f"{''.join(f'<category>c{n}</category>' for n in range(300))}"
        f"<description>{'word ' * 2_100_000}</description></item>"
        "<item><guid isPermaLink='false'>fine-1</guid><title>An ordinary report</title>"
        "<description>Text.</description></item>"
        "</channel></rss>"
    ).encode()


def test_an_item_past_every_bound_is_cut_and_every_output_still_publishes(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """Found by the security audit: one 10.5 MB description stopped the publish of every
    output, the ones not drawing from its source too, at every poll from then on."""
    sources = [
        {"name": "huge", "url": server.add("/huge", body=oversized_rss()), "tags": ["huge"]},
        {"name": "news", "url": server.add("/news", body=rss2(1, 2)), "tags": ["news"]},
    ]
    outputs = """
    outputs:
      - slug: everything
        title: Everything
      - slug: news-only
        title: News only
        tags: [news]
    """
    config = write_config(tmp_path, sources, settings=f"database: {database_url}", outputs=outputs)
    assert poll_all(config) == 0
    assert items_per_source(database_url) == {"huge": 2, "news": 2}
    [(title, author, summary, categories)] = query_rows(
        database_url,
        "select i.title, i.author, length(i.summary_html), i.categories from items i where i.guid = 'huge-1'",
    )
    assert len(str(title)) <= normalize.MAX_TITLE_CHARS + 1 and str(title).endswith("…")
    assert len(str(author)) <= normalize.MAX_NAME_CHARS + 1
    assert isinstance(summary, int) and summary <= normalize.MAX_HTML_CHARS + 100
    assert len(categories if isinstance(categories, list) else json.loads(str(categories))) == normalize.MAX_CATEGORIES
    feeds = tmp_path / "data" / "feeds"
    from lxml import etree

    for slug, titles in (("everything", 4), ("news-only", 2)):
        root = etree.parse(str(feeds / f"{slug}.atom"))
        assert len(root.findall("{http://www.w3.org/2005/Atom}entry")) == titles, slug


def test_an_output_that_cannot_be_written_does_not_hold_back_the_others(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outputs were published in config order and the first failure ended the publish."""
    sources = [{"name": "news", "url": server.add("/news", body=rss2(1, 3))}]
    outputs = """
    outputs:
      - slug: blocked
        title: Blocked
      - slug: fine
        title: Fine
    """
    config = write_config(tmp_path, sources, outputs=outputs)
    feeds = tmp_path / "data" / "feeds"
    (feeds / "blocked.atom").mkdir(parents=True)  # where its file goes: nothing can be renamed onto it
    assert poll_all(config) == 2  # a runtime failure, named
    error = capsys.readouterr().err
    assert "1 output(s) not published: cannot write" in error and "blocked.atom: Is a directory" in error
    from lxml import etree

    assert len(etree.parse(str(feeds / "fine.atom")).findall("{http://www.w3.org/2005/Atom}entry")) == 3
    (feeds / "blocked.atom").rmdir()
    assert main(["--config", str(config), "publish"]) == 0  # stale, so the next publish writes it
    assert len(etree.parse(str(feeds / "blocked.atom")).findall("{http://www.w3.org/2005/Atom}entry")) == 3


def test_control_characters_from_a_server_reach_neither_a_request_nor_the_terminal(
    server: FeedServer, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the security audit: an ETag carrying an escape was stored and sent back, and
    every later request failed before it left ("Forbidden control character"), for good; and
    a reason phrase's escapes reached the log and `aggregator sources` raw."""
    sources = [
        {"name": "tagged", "url": server.add("/tagged", body=rss2(1, 2), etag='"\x1b[31m"')},
        {
            "name": "shouting",
            "url": server.add("/shouting", Route(status=500, reason="\x1b[31mRED\x1b]0;x\x07 \x9b2J")),
        },
    ]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    assert poll_all(config) == 0
    assert poll_all(config) == 0
    rows = {
        str(name): str(error)
        for name, error in query_rows(database_url, "select name, coalesce(last_error, '') from sources")
    }
    assert rows["tagged"] == ""  # polled twice, fine both times
    assert rows["shouting"] == "HTTP 500 \\x1b[31mRED\\x1b]0;x\\x07 \\udc9b2J"  # a byte not UTF-8: a surrogate
    assert main(["--config", str(config), "sources"]) == 0
    shown = capsys.readouterr()
    assert "\\x1b[31mRED" in shown.err + shown.out
    assert not any(c in shown.err + shown.out for c in "\x1b\x07\x9b")


def test_texts_an_earlier_version_stored_with_characters_xml_cannot_carry_still_publish(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """Found by the upgrade audit: versions before 6abfa8e stored C0 controls (a corpus feed's
    summary carries \\x0f), and after an upgrade every publish of that output failed, and the
    daemon stopped at its start, in a loop under systemd."""
    from sqlalchemy import create_engine, text

    sources = [{"name": "news", "url": server.add("/news", body=rss2(1, 2))}]
    config = write_config(tmp_path, sources, settings=f"database: {database_url}")
    assert poll_all(config) == 0
    engine = create_engine(database_url)
    with engine.begin() as conn:  # as the earlier version left them
        conn.execute(
            text("update items set title = :title, summary_html = :html, author = :author"),
            {"title": "Shift\x0fed title", "html": "<p>shift\x0fed \x1b text</p>", "author": "A\x08uthor"},
        )
    engine.dispose()
    assert main(["--config", str(config), "publish"]) == 0
    from lxml import etree

    atom = etree.parse(str(tmp_path / "data" / "feeds" / "world.atom"))
    titles = [e.findtext("{http://www.w3.org/2005/Atom}title") for e in atom.getroot()]
    assert "Shifted title" in titles
