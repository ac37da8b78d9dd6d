"""Property-based ingest: generated feeds of the awkward kind, through the real pipeline.

Hypothesis writes RSS 2.0, Atom and JSON Feed documents whose entries share links, guids and
titles, leave fields out or empty, carry absurd dates, come in several encodings (declared
rightly or wrongly), ids and links too long for a database index, and sometimes number in the
thousands. Each document is served by the
real HTTP server (``FeedServer``) as a source of its own and polled the way ``aggregator poll
--once --all`` polls (``poll_once``: fetch, parse, normalize, match, store, publish) into a
real SQLite file and a real PostgreSQL database. For every document:

* nothing escapes the source: the poll succeeds, no error is recorded on it, and no
  unexpected error is counted at the per-source boundary;
* every stored item is unique by (source, key);
* polling the same bytes again changes nothing, even when they are parsed again (the
  body hash forgotten): no new item, no update, every stored row as it was.

The example budget is bounded (``MAX_EXAMPLES``) so the whole suite stays well inside CI's
minutes; the shared server and database make an example cost three polls, not a set-up.
It found a UTF-16 feed refused when served under a wrong HTTP charset
(``test_a_byte_order_mark_outranks_a_wrong_http_charset`` in tests/test_parse.py); with long
ids it finds the PostgreSQL index limit (``test_ids_and_urls_too_long_to_index_are_stored_by_hash``
in tests/test_reliability.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from aggregator import metrics
from aggregator.config import DEFAULT_MAX_BODY_BYTES, load_config
from aggregator.pipeline import Pipeline, poll_once
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.repository import Store
from tests.conftest import write_config
from tests.server import FeedServer, Route

# CI's budget; a deeper local hunt: AGGREGATOR_PROPERTY_EXAMPLES=500 pytest tests/test_ingest_properties.py
MAX_EXAMPLES = int(os.environ.get("AGGREGATOR_PROPERTY_EXAMPLES", "25"))
EXPECTED_ERROR_CLASSES = ("fetch", "parse")

# Small pools, so that generated entries collide on purpose.
LINKS = [
    "https://news.example.com/a",
    "https://news.example.com/a?utm_source=rss",  # the same canonical URL as the one above
    "https://news.example.com/a#comments",
    "http://news.example.com:80/b",
    "/relative/c",
    "javascript:alert(1)",
    "not a url at all",
]
GUIDS = ["1", "guid-a", "https://news.example.com/a", "urn:uuid:0000", "  padded  "]
TITLES = ["Same title", "Same title", "<b>Bold</b> &amp; co", "Ünïcödé — 東京 🙂", "x" * 500]
DATES = [
    "Fri, 20 Nov 2026 12:00:00 GMT",
    "2026-11-20T12:00:00Z",
    "0000-00-00T00:00:00Z",
    "Mon, 32 Foo 99999 25:61:61 XYZ",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "1970-01-01T00:00:00Z",
    "yesterday",
]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
# XML 1.0 cannot carry most C0 controls: a document that has them is ill-formed and read leniently.
SOMETIMES_CONTROL = st.sampled_from(["", "", "", "\x01", "\x0b", "\x1f"])


def _long_random(seed: int) -> str:
    # Random letters: PostgreSQL compresses a repetitive index entry below its 2.7 KB limit.
    return "".join(random.Random(seed).choices(string.ascii_letters, k=5000))


# Ids and URLs too long for a database index (they must still be stored, by hash).
LONG = st.integers(min_value=0, max_value=1 << 32).map(_long_random)


def optional(values: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.just(""), values)


@dataclass(frozen=True)
class Entry:
    guid: str | None
    link: str | None
    title: str | None
    summary: str | None
    date: str | None


ENTRIES = st.builds(
    Entry,
    guid=optional(st.one_of(st.sampled_from(GUIDS), TEXT, LONG)),
    link=optional(st.one_of(st.sampled_from(LINKS), LONG.map(lambda path: f"https://news.example.com/{path}"))),
    title=optional(st.one_of(st.sampled_from(TITLES), TEXT)),
    summary=optional(st.one_of(TEXT, st.builds(lambda t, c: f"<p>{t}{c}</p>", TEXT, SOMETIMES_CONTROL))),
    date=optional(st.one_of(st.sampled_from(DATES), st.datetimes(timezones=st.just(UTC)).map(str))),
)


@dataclass(frozen=True)
class Document:
    dialect: str
    entries: tuple[Entry, ...]
    encoding: str  # how the bytes are encoded
    declared: str | None  # what the XML prolog says (None: no encoding attribute)
    content_type: str


def _el(name: str, value: str | None, attrs: str = "") -> str:
    if value is None:
        return ""
    return f"<{name}{attrs}>{escape(value)}</{name}>"


def render(doc: Document) -> bytes:
    if doc.dialect == "json":
        items = []
        for e in doc.entries:
            item: dict[str, object] = {}
            for key, value in (
                ("id", e.guid),
                ("url", e.link),
                ("title", e.title),
                ("content_html", e.summary),
                ("date_published", e.date),
            ):
                if value is not None:
                    item[key] = value
            items.append(item)
        feed = {"version": "https://jsonfeed.org/version/1.1", "title": "Generated", "items": items}
        return json.dumps(feed, ensure_ascii=doc.encoding != "utf-8").encode("utf-8")
    declaration = f" encoding={quoteattr(doc.declared)}" if doc.declared else ""
    if doc.dialect == "rss":
        body = "".join(
            "<item>"
            + _el("guid", e.guid, " isPermaLink='false'")
            + _el("link", e.link)
            + _el("title", e.title)
            + _el("description", e.summary)
            + _el("pubDate", e.date)
            + "</item>"
            for e in doc.entries
        )
        xml = f"<rss version='2.0'><channel><title>Generated</title><link>https://news.example.com/</link>{body}</channel></rss>"
    else:
        body = "".join(
            "<entry>"
            + _el("id", e.guid)
            + (f"<link href={quoteattr(e.link)}/>" if e.link is not None else "")
            + _el("title", e.title)
            + _el("summary", e.summary, " type='html'")
            + _el("updated", e.date)
            + "</entry>"
            for e in doc.entries
        )
        xml = f"<feed xmlns='http://www.w3.org/2005/Atom'><id>urn:generated</id><title>Generated</title>{body}</feed>"
    document = f"<?xml version='1.0'{declaration}?>{xml}"
    if doc.encoding == "mixed":  # pasted together: UTF-8 up to the middle, Latin-1 after it
        middle = len(document) // 2
        return document[:middle].encode("utf-8") + document[middle:].encode("iso-8859-1", "xmlcharrefreplace")
    return document.encode(doc.encoding, "xmlcharrefreplace")


# (bytes encoding, declared encoding): right, absent, and wrong declarations.
XML_ENCODINGS = [
    ("utf-8", "utf-8"),
    ("utf-8", None),
    ("iso-8859-1", "iso-8859-1"),
    ("utf-16", "utf-16"),
    ("utf-8", "iso-8859-1"),  # UTF-8 bytes declared Latin-1: mojibake, but no crash
    ("iso-8859-1", "utf-8"),  # Latin-1 bytes declared UTF-8: not even valid UTF-8
    ("windows-1252", "windows-1252"),
    ("mixed", "utf-8"),
]
CONTENT_TYPES = ["application/rss+xml", "application/xml; charset=utf-8", "text/html", "application/octet-stream"]


@st.composite
def documents(draw: st.DrawFn) -> Document:
    dialect = draw(st.sampled_from(["rss", "atom", "json"]))
    entries = draw(st.lists(ENTRIES, max_size=12))
    # Now and then a long feed: its entries repeated, so thousands of them, most colliding.
    entries = entries * draw(st.sampled_from([1, 1, 1, 1, 1, 1, 1, 250]))
    if dialect == "json":
        encoding, declared = draw(st.sampled_from([("utf-8", None), ("ascii", None)]))
        content_type = draw(st.sampled_from(["application/feed+json", "application/json", "text/plain"]))
    else:
        encoding, declared = draw(st.sampled_from(XML_ENCODINGS))
        content_type = draw(st.sampled_from(CONTENT_TYPES))
    return Document(dialect, tuple(entries), encoding, declared, content_type)


@dataclass
class Harness:
    """One server and one database for all of a test's examples; each example is a new source."""

    tmp_path: Path
    server: FeedServer
    database_url: str
    store: Store
    names: Iterator[int]

    def poll(self, name: str) -> tuple[int, int]:
        config = load_config(
            write_config(self.tmp_path, [{"name": name, "url": self.server.url(f"/{name}")}], settings=self.settings)
        ).config
        self.store.sync_sources(config.source_specs(), datetime.now(UTC))
        pipeline = Pipeline(config, self.store, parse_pool=None)
        summary = asyncio.run(poll_once(pipeline, all_sources=True))
        return summary.new_items, summary.updated_items

    @property
    def settings(self) -> str:
        return f"database: {self.database_url}\nmin_interval: 1s"

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        with self.store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]


@pytest.fixture
def harness(tmp_path: Path, server: FeedServer, database_url: str) -> Iterator[Harness]:
    engine = make_engine(database_url)
    ensure_schema(engine)
    try:
        yield Harness(tmp_path, server, database_url, Store(engine), itertools.count())
    finally:
        engine.dispose()


def unexpected_errors() -> float:
    registry = CollectorRegistry()
    registry.register(metrics.SOURCE_ERRORS)
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["error_class"] not in EXPECTED_ERROR_CLASSES
    )


SNAPSHOT = (
    "select i.key, i.guid, i.link, i.title, i.fingerprint, i.story_id, i.update_count, i.changed_at "
    "from items i join sources s on s.id = i.source_id where s.name = :name order by i.key"
)


DATED = tuple(Entry(f"d{n}", None, "Dated", None, date) for n, date in enumerate(DATES))
# Twelve entries mixing the lists' odd values (the longest a draw makes, repeated 250 times).
LONGEST = (
    tuple(
        Entry(guid, link, title, "<p>text</p>", date)
        for guid, link, title, date in zip(
            (*GUIDS, None, None, None, "", "", "", "7"),
            (*LINKS, None, "", None, "", None),
            (*TITLES, *TITLES, None, ""),
            (*DATES, None, "", "2026-11-20T12:00:00Z", "yesterday"),
            strict=True,
        )
    )
    * 250
)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=documents())
# Drawn once by chance: an item dated at the very start of the calendar failed its whole source.
@example(
    doc=Document(
        "rss",
        (
            Entry(None, None, None, None, None),
            Entry(None, "https://news.example.com/a", None, None, "0001-01-01T00:00:00Z"),
        ),
        "utf-8",
        "utf-8",
        "application/rss+xml",
    )
)
# Every odd date of ``DATES`` in one document of each dialect, and the longest feed the draw
# makes (twelve entries, 250 times over): hard inputs tried on every run, not when the draw allows.
@example(doc=Document("rss", DATED, "utf-8", None, "application/rss+xml"))
@example(doc=Document("atom", DATED, "utf-8", "utf-8", "application/xml; charset=utf-8"))
@example(doc=Document("json", DATED, "utf-8", None, "application/feed+json"))
@example(doc=Document("rss", LONGEST, "utf-8", "utf-8", "application/rss+xml"))
def test_generated_documents_ingest_once_and_idempotently(harness: Harness, doc: Document) -> None:
    name = f"gen{next(harness.names)}"
    body = render(doc)
    # A long feed of long ids and links (3,000 entries of 10 KB) can outgrow the body cap, and a
    # body over the cap is refused by design (tests/test_fetch.py): not a document for this property.
    assume(len(body) <= DEFAULT_MAX_BODY_BYTES)
    harness.server.add(f"/{name}", Route(body=body, content_type=doc.content_type))
    before = unexpected_errors()

    new, _ = harness.poll(name)
    [(errors, last_error)] = harness.rows("select error_count, last_error from sources where name = :name", name=name)
    assert (errors, last_error) == (0, None)
    assert unexpected_errors() == before
    stored = harness.rows(SNAPSHOT, name=name)
    assert len(stored) == new <= len(doc.entries)
    assert harness.rows("select count(*) - count(distinct cast(source_id as text) || ' ' || key) from items") == [(0,)]

    # The same bytes again: skipped by their hash, then parsed again once the hash is forgotten.
    assert harness.poll(name) == (0, 0)
    with harness.store.engine.begin() as conn:
        conn.execute(text("update sources set body_hash = null where name = :name"), {"name": name})
    assert harness.poll(name) == (0, 0)
    assert harness.rows(SNAPSHOT, name=name) == stored
    assert harness.rows("select error_count from sources where name = :name", name=name) == [(0,)]
