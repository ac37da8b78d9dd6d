"""Rendered outputs are valid Atom / RSS 2.0 / JSON Feed, deterministic, and written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from aggregator import publish
from aggregator.archive import Page, Week
from aggregator.config import Output
from aggregator.publish import (
    Rendering,
    archive_pieces,
    atom_pieces,
    joined,
    render_all,
    render_json,
    render_rss,
    write_atomically,
)
from aggregator.records import Candidate, Enclosure, OutputEntry
from tests.feedcheck import check_atom, check_json_feed, check_rss

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OUTPUT = Output(slug="world", title="World", subtitle="World news")
PUBLIC = "https://news.example.org"


def candidate(n: int, *, source: str = "Wire", story: int | None = None, **changes: object) -> Candidate:
    fields: dict[str, object] = dict(
        item_id=n, story_id=story or n, story_uid=f"tag:news.example.org,2026-11-26:story/{story or n:032x}",
        source_name=source, source_tags=("world",),
        source_url=f"https://{source.lower()}.example.com/feed.xml", source_link=f"https://{source.lower()}.example.com/",
        source_feed_id=None, title=f"Story {n} & <friends>", link=f"https://{source.lower()}.example.com/{n}",
        summary_html=f"<p>Summary {n} with <b>bold</b></p>", content_html="", text=f"Summary {n} with bold",
        author=None, categories=("politics",), published_at=NOW - timedelta(hours=n),
        updated_at=NOW - timedelta(hours=n), first_seen_at=NOW - timedelta(hours=n),
    )  # fmt: skip
    fields.update(changes)
    return Candidate(**fields)  # type: ignore[arg-type]


def entries() -> list[OutputEntry]:
    lead = candidate(1)
    also = candidate(2, source="Daily", story=1, first_seen_at=NOW)
    return [
        OutputEntry(lead.story_uid, lead, (also,), NOW - timedelta(minutes=5)),
        OutputEntry(candidate(3).story_uid, candidate(3, author="Ann Reporter"), (), NOW - timedelta(hours=3)),
    ]


def test_atom_is_valid_and_carries_source_and_related_links() -> None:
    body = joined(atom_pieces(OUTPUT, entries(), PUBLIC))
    assert check_atom(body) == []
    parsed = feedparser.parse(body)
    assert parsed.bozo == 0
    assert parsed.feed.id == "https://news.example.org/feeds/world.atom"
    assert any(link.rel == "self" and link.href == f"{PUBLIC}/feeds/world.atom" for link in parsed.feed.links)
    first = parsed.entries[0]
    assert first.id == entries()[0].story_uid
    assert first.title == "Story 1 & <friends>"
    assert [link.href for link in first.links if link.rel == "related"] == ["https://daily.example.com/2"]
    # The configured source name, never the feed's own title ("Wire News" in candidate()).
    assert first.source.title == "Wire"
    assert first.author == "Wire"
    assert b"Wire News" not in body
    assert parsed.entries[1].author == "Ann Reporter"
    assert "Also reported by" in first.content[0].value


def test_rss_is_valid_with_non_permalink_guids_and_sources() -> None:
    body = render_rss(OUTPUT, entries(), PUBLIC)
    assert check_rss(body) == []
    archive = f"{PUBLIC}/feeds/{OUTPUT.slug}/archive/2026-W47.atom"
    assert check_rss(render_rss(OUTPUT, entries(), PUBLIC, links=(("prev-archive", archive),))) == []
    parsed = feedparser.parse(body)
    assert parsed.version == "rss20"
    assert parsed.entries[0].id == entries()[0].story_uid
    assert parsed.entries[0].guidislink is False
    assert b'<source url="https://wire.example.com/feed.xml">Wire</source>' in body
    assert [e.get("author") for e in parsed.entries] == ["Wire", "Ann Reporter"]  # dc:creator
    assert b"Wire News" not in body


def test_json_feed_is_valid() -> None:
    body = render_json(OUTPUT, entries(), PUBLIC)
    assert check_json_feed(body) == []
    doc = json.loads(body)
    assert [item["id"] for item in doc["items"]] == [e.story_uid for e in entries()]
    assert doc["feed_url"] == f"{PUBLIC}/feeds/world.json"


def test_json_feed_summary_is_plain_text_as_its_spec_says() -> None:
    # A lead with both a summary and a content: Atom carries the summary's HTML (type="html"),
    # JSON Feed's "summary" is plain text that readers show as it is.
    lead = candidate(
        4, summary_html='<p>Tom &amp; Jerry <a href="https://x.example/">return</a></p><p>Tonight<img src="p.gif"></p>',
        content_html="<p>The whole article.</p>",
    )  # fmt: skip
    doc = json.loads(render_json(OUTPUT, [OutputEntry(lead.story_uid, lead, (), NOW)], PUBLIC))
    assert doc["items"][0]["summary"] == "Tom & Jerry return Tonight"
    parsed = feedparser.parse(joined(atom_pieces(OUTPUT, [OutputEntry(lead.story_uid, lead, (), NOW)], PUBLIC)))
    assert '<a href="https://x.example/">return</a>' in parsed.entries[0].summary


def test_an_empty_output_is_still_valid() -> None:
    assert check_atom(joined(atom_pieces(OUTPUT, [], PUBLIC))) == []
    assert check_rss(render_rss(OUTPUT, [], PUBLIC)) == []
    assert check_json_feed(render_json(OUTPUT, [], PUBLIC)) == []


def test_rendering_is_deterministic_so_etags_only_change_with_content() -> None:
    first = render_all(OUTPUT, entries(), PUBLIC)
    again = render_all(OUTPUT, entries(), PUBLIC)
    assert [r.etag for r in first] == [r.etag for r in again]
    changed = entries()
    changed[1] = OutputEntry(changed[1].story_uid, candidate(3, title="Edited"), (), NOW)
    assert all(a.etag != b.etag for a, b in zip(first, render_all(OUTPUT, changed, PUBLIC), strict=True))


def test_atomic_write_replaces_the_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    old = Rendering("world", "atom", "application/atom+xml", b"old")
    new = Rendering("world", "atom", "application/atom+xml", b"new")
    write_atomically(tmp_path, old)
    target = write_atomically(tmp_path, new)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world.atom"]


def test_an_unwritable_output_dir_is_a_publish_error(tmp_path: Path) -> None:
    from aggregator.errors import PublishError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PublishError, match="cannot write"):
        write_atomically(blocker / "feeds", Rendering("world", "atom", "application/atom+xml", b"x"))


def test_websub_hub_is_advertised_in_every_feed_format() -> None:
    hub = "https://hub.example.org/"
    atom = feedparser.parse(joined(atom_pieces(OUTPUT, entries(), PUBLIC, hub)))
    assert any(link.rel == "hub" and link.href == hub for link in atom.feed.links)
    rss_body = render_rss(OUTPUT, entries(), PUBLIC, hub)
    assert check_rss(rss_body) == []
    rss = feedparser.parse(rss_body)
    assert rss.feed.link == "https://news.example.org/feeds/world"  # the hub must not become the channel link
    assert any(link.rel == "hub" and link.href == hub for link in rss.feed.links)
    assert json.loads(render_json(OUTPUT, entries(), PUBLIC, hub))["hubs"] == [{"type": "WebSub", "url": hub}]


@pytest.mark.parametrize("archive_of", [None, Page(Week(2026, 47), 2)])
def test_a_long_atom_document_rendered_in_pieces_has_the_bytes_of_one_rendered_whole(
    monkeypatch: pytest.MonkeyPatch, archive_of: Page | None
) -> None:
    many = []
    for n in range(1, 12):  # thumbnails, enclosures, other outlets, a non-ASCII title; the newest in the middle
        lead = replace(
            candidate(n),
            title=f"Nouvelle n° {n}",
            updated_at=NOW - timedelta(hours=abs(n - 6)),
            thumbnail=f"https://wire.example.com/{n}.jpg" if n % 3 == 0 else None,
            enclosures=(Enclosure(f"https://wire.example.com/{n}.mp3", "audio/mpeg", 1000),) if n % 4 == 0 else (),
        )
        also = (candidate(100 + n, source="Daily", story=n),) if n % 2 else ()
        many.append(OutputEntry(lead.story_uid, lead, also, lead.updated_at))
    links = (("current", f"{PUBLIC}/feeds/world.atom"),)
    whole = joined(atom_pieces(OUTPUT, many, PUBLIC, "https://hub.example.org/", links=links, archive_of=archive_of))
    monkeypatch.setattr(publish, "ATOM_PIECE", 4)  # pieces of 4, 4 and 3 entries
    pieced = joined(atom_pieces(OUTPUT, many, PUBLIC, "https://hub.example.org/", links=links, archive_of=archive_of))
    assert pieced == whole
    assert check_atom(pieced) == []
    parsed = feedparser.parse(pieced)
    assert [e.title for e in parsed.entries] == [f"Nouvelle n° {n}" for n in range(1, 12)]
    assert parsed.feed.updated == NOW.isoformat()  # the newest entry's, which is in the second piece


def test_an_archive_week_given_its_html_a_piece_at_a_time_has_the_bytes_of_one_given_it_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = []
    for n in range(1, 12):
        lead = candidate(n, content_html=f"<p>Content {n}</p>" if n % 2 else "")
        whole.append(OutputEntry(lead.story_uid, lead, (candidate(100 + n, source="Daily", story=n),), lead.updated_at))
    bare = [replace(e, lead=replace(e.lead, summary_html="", content_html="")) for e in whole]
    by_id = {e.lead.item_id: e.lead for e in whole}
    asked: list[list[int]] = []

    def fill(piece: Sequence[OutputEntry]) -> list[OutputEntry]:
        asked.append([e.lead.item_id for e in piece])
        return [replace(e, lead=by_id[e.lead.item_id]) for e in piece]

    monkeypatch.setattr(publish, "ATOM_PIECE", 4)
    week = Page(Week(2026, 47))
    expected = [joined(pieces) for pieces in archive_pieces(OUTPUT, whole, PUBLIC, week, "2026-W46")]
    assert asked == []  # given whole, nothing is asked for
    pieced = archive_pieces(OUTPUT, bare, PUBLIC, week, "2026-W46", fill)
    for pieces, bytes_whole in zip(pieced, expected, strict=True):
        assert joined(pieces) == bytes_whole
    # Pieces of 4, 4 and 3 for the Atom document, and again for the page: never more at once.
    assert asked == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]] * 2
    assert b"Content 9" in expected[0] and b"Summary 11" in expected[1]


FRAGMENTED_THREAD = """
import threading
from aggregator.malloc import release_freed_memory

def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) // 1024

kept = []
def ingest():  # a thread's arena left full of holes: every tenth block is still in use
    blocks = [bytes(2000) + bytes([n % 256]) for n in range(40_000)]
    kept.extend(blocks[::10])
thread = threading.Thread(target=ingest)
thread.start()
thread.join()
before = rss()
print(release_freed_memory(), before - rss())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_what_other_threads_freed_goes_back_to_the_system_before_a_week_is_frozen() -> None:
    done = subprocess.run([sys.executable, "-c", FRAGMENTED_THREAD], capture_output=True, text=True, check=True)
    trimmed, released_mb = done.stdout.split()
    assert trimmed == "True"  # glibc, as on every machine this runs on
    assert int(released_mb) >= 30  # of the ~72 MB freed between the blocks kept
