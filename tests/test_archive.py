"""RFC 5005 archives: a reader walks prev-archive links back and misses nothing.

The archive is walked twice, on SQLite and on PostgreSQL: through ``aggregator serve``'s
app and through a plain static file server pointed at ``output_dir`` (what nginx does),
and both must give the same chain and the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import feedparser
import httpx
import pytest
from lxml import etree
from sqlalchemy import delete

from aggregator import archive as archive_module
from aggregator import publish
from aggregator import publisher as publisher_module
from aggregator.archive import Page, Week, first_open_week
from aggregator.cli import resolve_story
from aggregator.config import Config, load_config
from aggregator.curate import reads_text
from aggregator.errors import PublishError
from aggregator.pipeline import Pipeline, poll_once
from aggregator.publisher import Publisher
from aggregator.records import etag_of
from aggregator.store import outputs
from aggregator.store.database import ensure_schema, make_engine
from aggregator.store.models import ArchiveRow
from aggregator.store.repository import Store
from tests.conftest import serving, write_config
from tests.feedcheck import check_atom
from tests.server import FeedServer, Route

HISTORY = "{http://purl.org/syndication/history/1.0}"
ATOM = "{http://www.w3.org/2005/Atom}"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)  # a Tuesday of 2026-W48: W47 is complete, W48 is not
DATES = {
    "current": datetime(2026, 11, 23, 9, tzinfo=UTC),  # 2026-W48, the week in progress
    "a": datetime(2026, 11, 20, 9, tzinfo=UTC),  # 2026-W47
    "b": datetime(2026, 11, 19, 9, tzinfo=UTC),  # 2026-W47
    "c": datetime(2026, 11, 4, 9, tzinfo=UTC),  # 2026-W45 (W46 has nothing)
    "horoscope": datetime(2026, 10, 21, 9, tzinfo=UTC),  # 2026-W43: excluded by the output's rule
    "d": datetime(2026, 9, 30, 9, tzinfo=UTC),  # 2026-W40
}
OUTPUTS = """
outputs:
  - slug: world
    title: World
    max_entries: 2
    exclude:
      - keywords: [horoscope]
"""


def feed(dates: dict[str, datetime]) -> bytes:
    items = "".join(
        f"<item><title>Story {key}</title><link>https://n.example/{key}</link><guid>https://n.example/{key}</guid>"
        f"<description>Body {key}</description><pubDate>{format_datetime(when)}</pubDate></item>"
        for key, when in dates.items()
    )
    return f"<rss version='2.0'><channel><title>N</title><link>https://n.example/</link><description>d</description>{items}</channel></rss>".encode()


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_files(root: Path) -> Iterator[str]:
    """A plain file server over ``root``: no aggregator code answers, as behind nginx."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def walk(start: str, public: str, base: str) -> list[tuple[str, list[str], bytes]]:
    """Follow prev-archive from the subscription feed: (week, entry titles, bytes) per archive."""
    chain = []
    response = httpx.get(start.replace(public, base))
    assert response.status_code == 200
    url = {link.href for link in feedparser.parse(response.content).feed.links if link.rel == "prev-archive"}
    next_url = url.pop() if url else None
    while next_url:
        response = httpx.get(next_url.replace(public, base))
        assert response.status_code == 200, next_url
        assert check_atom(response.content) == []
        root = etree.fromstring(response.content)
        assert root.find(f"{HISTORY}archive") is not None
        parsed = feedparser.parse(response.content)
        links = {link.rel: link.href for link in parsed.feed.links}
        # A reader told what the links lead to: Atom documents, not HTML pages.
        types = {link.rel: link.type for link in parsed.feed.links}
        assert types["current"] == "application/atom+xml"
        assert types.get("prev-archive", "application/atom+xml") == "application/atom+xml"
        assert links["self"] == next_url
        assert links["current"] == f"{public}/feeds/world.atom"
        assert "next-archive" not in links  # an archive never changes, so it cannot know the next one
        # `updated` is the newest entry's, never 1970 or the time it was rendered.
        assert parsed.feed.updated_parsed == max(e.updated_parsed for e in parsed.entries)
        week = next_url.rsplit("/", 1)[1].removesuffix(".atom")
        chain.append((week, sorted(e.title for e in parsed.entries), response.content))
        assert len(chain) < 50, "the chain loops"
        next_url = links.get("prev-archive")
    return chain


def poll(config: Config, store: Store, now: datetime) -> None:
    store.sync_sources(config.source_specs(), now)
    asyncio.run(poll_once(Pipeline(config, store, clock=lambda: now), all_sources=True))


@contextlib.contextmanager
def polled(
    server: FeedServer, tmp_path: Path, database_url: str, outputs: str = OUTPUTS, now: datetime = NOW
) -> Iterator[tuple[Config, Store, Path]]:
    """The feed of ``DATES`` served, and polled at ``now`` into a fresh database with these
    ``outputs``: its config, its store, and the directory the outputs are written under."""
    server.add("/f", Route(body=feed(DATES)))
    www = tmp_path / "www"
    settings = f"database: {database_url}\noutput_dir: {www / 'feeds'}"
    path = write_config(tmp_path, [{"name": "n", "url": server.url("/f")}], settings=settings, outputs=outputs)
    config = load_config(path).config
    engine = make_engine(database_url)
    ensure_schema(engine)
    try:
        store = Store(engine)
        poll(config, store, now)
        yield config, store, www
    finally:
        engine.dispose()


@pytest.fixture
def archived(
    request: pytest.FixtureRequest, server: FeedServer, tmp_path: Path, database_url: str
) -> Iterator[tuple[Config, Store, Path]]:
    """The feed polled at NOW (or at the time given as the fixture's parameter)."""
    with polled(server, tmp_path, database_url, now=getattr(request, "param", NOW)) as found:
        yield found


EXPECTED = [("2026-W47", ["Story a", "Story b"]), ("2026-W45", ["Story c"]), ("2026-W40", ["Story d"])]


def test_the_archive_chain_skips_empty_weeks_and_is_the_same_from_static_files(
    archived: tuple[Config, Store, Path],
) -> None:
    config, store, www = archived
    public = config.settings.public_url
    subscription = f"{public}/feeds/world.atom"
    with serving(store, config) as app:
        served = walk(subscription, public, app)
        # The week in progress is not a finished archive; empty weeks and the rules' empty week are none.
        for week in ("2026-W48", "2026-W46", "2026-W43", "2026-W41"):
            assert httpx.get(f"{app}/feeds/world/archive/{week}.atom").status_code == 404, week
        assert httpx.get(f"{app}/feeds/world/archive/last-week.atom").status_code == 404
        assert httpx.get(f"{app}/feeds/nope/archive/2026-W47.atom").status_code == 404
        first = httpx.get(f"{app}/feeds/world/archive/2026-W47.atom")
        again = httpx.get(f"{app}/feeds/world/archive/2026-W47.atom", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        page = httpx.get(f"{app}/feeds/world/archive/2026-W47")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "Story a" in page.text and f"{public}/feeds/world/archive/2026-W45" in page.text  # older entries
        # An RSS subscriber finds the same chain (RFC 5005's links, as atom:link in RSS).
        rss = feedparser.parse(httpx.get(f"{app}/feeds/world.rss").content)
        assert [(link.href, link.type) for link in rss.feed.links if link.rel == "prev-archive"] == [
            (f"{public}/feeds/world/archive/2026-W47.atom", "application/atom+xml")
        ]
        assert walk(f"{public}/feeds/world.rss", public, app) == served
    with static_files(www) as files:
        static = walk(subscription, public, files)
    assert [(week, titles) for week, titles, _ in served] == EXPECTED
    assert static == served  # nginx serves the very same documents
    for week, _ in EXPECTED:
        assert (www / "feeds" / "world" / "archive" / f"{week}.html").exists()
    assert not (www / "feeds" / "world" / "archive" / "2026-W48.atom").exists()


def test_a_finished_week_is_frozen_and_the_next_one_joins_the_chain(
    archived: tuple[Config, Store, Path], server: FeedServer
) -> None:
    config, store, www = archived
    public = config.settings.public_url
    frozen = (www / "feeds" / "world" / "archive" / "2026-W47.atom").read_bytes()
    late = {**DATES, "late": datetime(2026, 11, 21, 9, tzinfo=UTC)}  # dated in W47, fetched in W49
    server.add("/f", Route(body=feed(late)))
    poll(config, store, NOW + timedelta(weeks=1))  # W48 is now over
    assert (www / "feeds" / "world" / "archive" / "2026-W47.atom").read_bytes() == frozen
    with static_files(www) as files:
        chain = walk(f"{public}/feeds/world.atom", public, files)
    assert [(week, titles) for week, titles, _ in chain] == [("2026-W48", ["Story current"]), *EXPECTED]
    assert chain[1][2] == frozen
    with serving(store, config) as app:
        assert httpx.get(f"{app}/feeds/world/archive/2026-W47.atom").content == frozen


def test_a_quiet_output_is_republished_when_a_week_ends(archived: tuple[Config, Store, Path]) -> None:
    config, store, www = archived
    later = NOW + timedelta(weeks=1)
    publisher = Publisher(config, store, clock=lambda: later)
    assert Publisher(config, store, clock=lambda: NOW).archives_due(NOW) == []
    assert [o.slug for o in publisher.archives_due(later)] == ["world"]  # W48 is over; no new item needed
    publisher.publish(publisher.archives_due(later))
    assert publisher.archives_due(later) == []
    assert (www / "feeds" / "world" / "archive" / "2026-W48.atom").exists()
    current = feedparser.parse((www / "feeds" / "world.atom").read_bytes())
    assert [link.href for link in current.feed.links if link.rel == "prev-archive"] == [
        f"{config.settings.public_url}/feeds/world/archive/2026-W48.atom"
    ]


@pytest.mark.parametrize("archived", [NOW - timedelta(weeks=1)], indirect=True)
def test_a_story_blocked_before_its_week_ends_stays_out_of_the_archive(archived: tuple[Config, Store, Path]) -> None:
    config, store, www = archived
    assert not (www / "feeds" / "world" / "archive" / "2026-W47.atom").exists()  # W47 was in progress
    story, _ = resolve_story(store, "https://n.example/a")
    store.set_editorial("world", story, "block", NOW)
    Publisher(config, store, clock=lambda: NOW).publish()
    archive = feedparser.parse((www / "feeds" / "world" / "archive" / "2026-W47.atom").read_bytes())
    # "Story current" was dated in the future when seen on the 17th, so it counts from then (W47).
    assert sorted(e.title for e in archive.entries) == ["Story b", "Story current"]


def test_weeks() -> None:
    week = Week.of(datetime(2026, 1, 1, tzinfo=UTC))
    assert str(week) == "2026-W01" and week.start == datetime(2025, 12, 29, tzinfo=UTC)
    assert str(Week.of(week.start - timedelta(days=1))) == "2025-W52"
    assert Week.parse("2025-W53") is None and Week.parse("2026-W53") == Week(2026, 53)


def test_pages_are_named_after_their_week_and_sort_as_the_chain_runs() -> None:
    labels = ["2026-W47-10", "2026-W47", "2026-W47-9", "2025-W52", "2026-W47-2"]
    pages = [Page.parse(label) for label in labels]
    assert [str(p) for p in pages] == labels  # each label is the page's own
    assert [str(p) for p in sorted(p for p in pages if p)] == [
        "2025-W52", "2026-W47", "2026-W47-2", "2026-W47-9", "2026-W47-10",
    ]  # fmt: skip
    assert Page(Week(2026, 47), 2).title == "2026-W47, part 2" and Page(Week(2026, 47)).title == "2026-W47"
    for label in ("2026-W47-1", "2026-W47-0", "2026-W47-02", "2025-W53-2", "2026-W47-", "2026-W47-1234567"):
        assert Page.parse(label) is None, label
        with pytest.raises(ValueError, match="not an archive page label"):
            Page.of(label)  # what the store wrote is always a page's label
    assert Page.of("2026-W47-9").following == Page.of("2026-W47-10")
    assert Page.of("2026-W47").following == Page.of("2026-W47-2")
    longest = str(Page(Week(9999, 52), 999_999))  # the most parts a label can say
    assert len(longest) <= ArchiveRow.__table__.c.week.type.length  # type: ignore[attr-defined]


def test_a_week_is_open_until_a_day_after_it_ends() -> None:
    monday = datetime(2026, 11, 30, tzinfo=UTC)  # 2026-W49 begins
    assert first_open_week(monday + timedelta(hours=23)) == Week(2026, 48)
    assert first_open_week(monday + timedelta(days=1)) == Week(2026, 49)


NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def readme_nginx_location(output_dir: Path) -> str:
    """The README's nginx ``location`` block, verbatim but for the directory."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("```nginx\n", 1)[1].split("```", 1)[0]
    assert "alias /var/lib/aggregator/feeds/;" in block
    return block.replace("/var/lib/aggregator/feeds/", f"{output_dir}/")


@contextlib.contextmanager
def nginx(tmp_path: Path, location: str) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"{'user root;' if os.geteuid() == 0 else ''}\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; {temp}\n  server {{ listen 127.0.0.1:{port};\n{location}\n  }}\n}}\n"
    )
    process = subprocess.Popen([NGINX or "nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, (prefix / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_readme_nginx_setup_serves_the_whole_archive_chain(
    archived: tuple[Config, Store, Path], tmp_path: Path
) -> None:
    config, store, www = archived
    public = config.settings.public_url
    with serving(store, config) as app:
        served = walk(f"{public}/feeds/world.atom", public, app)
    with nginx(tmp_path, readme_nginx_location(www / "feeds")) as base:
        assert walk(f"{public}/feeds/world.atom", public, base) == served
        page = httpx.get(f"{base}/feeds/world")  # world.html
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert f"{public}/feeds/world/archive/2026-W47" in page.text
        week = httpx.get(f"{base}/feeds/world/archive/2026-W47")  # 2026-W47.html
        assert week.status_code == 200 and "Story a" in week.text
        assert httpx.get(f"{base}/feeds/world/archive/2026-W48.atom").status_code == 404


def test_a_week_another_worker_froze_first_is_written_as_they_stored_it(archived: tuple[Config, Store, Path]) -> None:
    config, store, www = archived
    later = NOW + timedelta(weeks=1)  # W48 is over
    theirs = b"<feed>theirs</feed>"

    class FrozenFirstElsewhere(Store):
        """Another worker stores the week between this one rendering it and storing it."""

        def save_archive(self, row: ArchiveRow, files: Mapping[str, Path] | None = None) -> bool:
            other = ArchiveRow(
                slug=row.slug, week=row.week, entries=row.entries, updated_at=row.updated_at,
                atom=theirs, html=b"<p>theirs</p>", etag=etag_of(theirs), created_at=row.created_at,
            )  # fmt: skip
            assert super().save_archive(other)
            return super().save_archive(row, files)

    Publisher(config, FrozenFirstElsewhere(store.engine), clock=lambda: later).publish()
    archive = www / "feeds" / "world" / "archive"
    assert (archive / "2026-W48.atom").read_bytes() == theirs
    assert (archive / "2026-W48.html").read_bytes() == b"<p>theirs</p>"
    assert not list(archive.glob(".*"))  # this worker's own renderings are gone, not left beside
    assert store.archive("world", "2026-W48") is not None
    assert store.archive("world", "2026-W48").atom == theirs  # type: ignore[union-attr]


def test_checking_the_files_writes_only_those_that_are_not_what_is_stored(
    archived: tuple[Config, Store, Path],
) -> None:
    """``aggregator publish`` wrote every feed and archive file again, each under a new date:
    a web server in front of ``output_dir`` then sent every reader a new Last-Modified, and
    every reader downloaded every document again. It must mend what is missing or edited and
    leave the rest as it is, inode and date."""
    config, store, www = archived
    feeds, archive = www / "feeds", www / "feeds" / "world" / "archive"
    files = sorted(path for path in feeds.rglob("*") if path.is_file())
    assert {feeds / "world.atom", feeds / "world.rss", archive / "2026-W45.html", archive / "2026-W40.atom"} <= set(
        files
    )
    edited, deleted, emptied = archive / "2026-W45.html", feeds / "world.rss", archive / "2026-W40.atom"
    stored = {path: path.read_bytes() for path in (edited, deleted, emptied)}
    edited.write_bytes(stored[edited].replace(b"Story c", b"Story X"))  # the same size, other bytes
    deleted.unlink()
    emptied.write_bytes(b"")
    untouched = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files if path not in stored}
    assert len(untouched) >= 6
    Publisher(config, store, clock=lambda: NOW).publish(check_files=True)
    assert {path: path.read_bytes() for path in stored} == stored  # mended, from the store
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in untouched} == untouched
    assert not list(archive.glob(".*")) and not list(feeds.glob(".*"))  # nothing left beside them


def test_a_week_stored_but_not_all_named_on_disk_is_written_at_the_next_publish(
    archived: tuple[Config, Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The week is stored, then the second rename fails (a disk error; a process killed there
    # leaves the same): the next publish must leave both documents on disk, as stored.
    config, store, www = archived
    later = NOW + timedelta(weeks=1)  # W48 is over
    renamed: list[Path] = []

    def failing_second(spooled: Path, target: Path) -> Path:
        if renamed:
            raise PublishError(f"cannot write {target}: No space left on device")
        renamed.append(target)
        return publish.place(spooled, target)

    monkeypatch.setattr(publisher_module, "place", failing_second)
    with pytest.raises(PublishError):
        Publisher(config, store, clock=lambda: later).publish()
    assert len(renamed) == 1 and store.archive("world", "2026-W48") is not None
    monkeypatch.undo()
    Publisher(config, store, clock=lambda: later).publish()
    archive, row = www / "feeds" / "world" / "archive", store.archive("world", "2026-W48")
    assert row is not None
    assert (archive / "2026-W48.atom").read_bytes() == row.atom
    assert (archive / "2026-W48.html").read_bytes() == row.html
    assert not list(archive.glob(".*"))  # no rendering is left beside them


def test_an_archive_rule_on_the_item_text_still_reads_it(server: FeedServer, tmp_path: Path, database_url: str) -> None:
    """Archive weeks read items without their text unless a rule looks at it: this one does."""
    rules = OUTPUTS.replace("keywords: [horoscope]", "keywords: [body c]\n        fields: [content]")
    with polled(server, tmp_path, database_url, rules) as (_, store, _):
        weeks = {page.week: page.entries for page in store.archive_weeks("world")}
    assert weeks["2026-W45"] == 0  # story c's only text ("Body c") is excluded by the rule
    assert weeks["2026-W43"] == 1 and weeks["2026-W47"] == 2  # the horoscope is in now


@pytest.mark.parametrize("text_rule", [False, True], ids=["html-read-per-piece", "html-read-with-the-text"])
def test_archived_entries_carry_their_html_in_both_documents(
    server: FeedServer, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, text_rule: bool
) -> None:
    """An archive week's HTML is read a piece at a time as it is rendered (pieces of one entry
    here), unless a rule reads the text: then it comes with the candidates. Either way each
    entry carries its own. Each document goes to its file first, which the store then reads."""
    monkeypatch.setattr(publish, "ATOM_PIECE", 1)
    monkeypatch.setattr(outputs, "FILE_PIECE", 64)  # the documents, written first, are stored from their files
    title_rule = OUTPUTS.replace("keywords: [horoscope]", "keywords: [horoscope]\n        fields: [title]")
    with polled(server, tmp_path, database_url, OUTPUTS if text_rule else title_rule) as (config, store, www):
        assert reads_text(config.outputs[0]) is text_rule
        week = store.archive("world", "2026-W47")
    assert week is not None and week.entries == 2
    entries = feedparser.parse(week.atom).entries
    # Each entry's own HTML first, then what the output adds (how many outlets carry it).
    assert sorted((e.title, e.summary.partition("<p>")[0]) for e in entries) == [
        ("Story a", "Body a"),
        ("Story b", "Body b"),
    ]
    archive = www / "feeds" / "world" / "archive"
    assert week.atom == (archive / "2026-W47.atom").read_bytes()
    assert week.html == (archive / "2026-W47.html").read_bytes()
    assert not list(archive.glob(".*"))  # no file it was written through is left
    assert week.etag == etag_of(week.atom)
    page = week.html.decode()
    assert min(len(week.atom), len(week.html)) > 10 * 64  # each streamed in more than ten pieces
    assert page.index("Story a") < page.index("Body a") < page.index("Story b") < page.index("Body b")


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Archive documents of one item each: W47's two items make it two pages."""
    monkeypatch.setattr(archive_module, "ARCHIVE_MAX_ENTRIES", 1)
    monkeypatch.setattr(publisher_module, "ARCHIVE_MAX_ENTRIES", 1)


PAGED = [("2026-W47-2", ["Story a"]), ("2026-W47", ["Story b"]), ("2026-W45", ["Story c"]), ("2026-W40", ["Story d"])]


@pytest.mark.usefixtures("small_pages")
def test_a_week_with_more_items_than_a_page_holds_is_several_pages_and_loses_none(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """A busy week is archived whole: its oldest items on the week's page, the next ones on
    "-2" and on, each page linking the one before, through the app and from static files."""
    with polled(server, tmp_path, database_url) as (config, store, www):
        public = config.settings.public_url
        with serving(store, config) as app:
            served = walk(f"{public}/feeds/world.atom", public, app)
            page = httpx.get(f"{app}/feeds/world/archive/2026-W47-2")
            for label in ("2026-W47-1", "2026-W47-02", "2026-W47-3", "2026-W47-x"):
                assert httpx.get(f"{app}/feeds/world/archive/{label}.atom").status_code == 404, label
            latest = httpx.get(f"{app}/feeds/world")
        with static_files(www) as files:
            static = walk(f"{public}/feeds/world.atom", public, files)
        weeks = {p.week: p.entries for p in store.archive_weeks("world")}
    assert [(label, titles) for label, titles, _ in served] == PAGED
    assert static == served
    assert weeks == {"2026-W40": 1, "2026-W43": 0, "2026-W45": 1, "2026-W47": 1, "2026-W47-2": 1}
    assert page.status_code == 200 and "Story a" in page.text and "2026-W47, part 2" in page.text
    assert f"{public}/feeds/world/archive/2026-W47" in page.text  # its older entries
    assert f"{public}/feeds/world/archive/2026-W47-2" in latest.text  # the newest page is listed


@pytest.mark.usefixtures("small_pages")
def test_a_week_whose_archiving_stopped_between_two_pages_is_taken_up_at_the_next(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """A publish that stopped after a week's first page (killed, or its disk full) left the
    week begun: the next one archives the rest, and the chain is the one it would have been."""
    with polled(server, tmp_path, database_url) as (config, store, www):
        public = config.settings.public_url
        with store.engine.begin() as connection:  # as if the process had died before page 2
            connection.execute(delete(ArchiveRow).where(ArchiveRow.week == "2026-W47-2"))
        (www / "feeds" / "world" / "archive" / "2026-W47-2.atom").unlink()
        (www / "feeds" / "world" / "archive" / "2026-W47-2.html").unlink()
        publisher = Publisher(config, store, clock=lambda: NOW)
        assert [o.slug for o in publisher.archives_due(NOW)] == ["world"]
        publisher.publish()
        assert publisher.archives_due(NOW) == []
        with static_files(www) as files:
            static = walk(f"{public}/feeds/world.atom", public, files)
    assert [(label, titles) for label, titles, _ in static] == PAGED
