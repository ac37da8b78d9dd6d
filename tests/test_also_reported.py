"""An entry names the other outlets that reported its story, each with its own headline where
that says something the lead's does not: pure first, then through the real pipeline on SQLite
and PostgreSQL, read back from every output format and the page."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser
import lxml.html

from aggregator.cli import main
from aggregator.config import Output
from aggregator.curate import select
from aggregator.entryview import ALSO_SHOWN, also_reported, entry_html
from aggregator.records import OutputEntry
from tests.conftest import write_config
from tests.feedcheck import check_atom, check_json_feed, check_rss
from tests.server import FeedServer, Route
from tests.test_curate import cand

NOW = datetime.now(UTC).replace(microsecond=0)
SEMI = "https://wire.example/tennis/semi-final"


def entry_of(*titles: tuple[str, str]) -> OutputEntry:
    """One story's entry from (outlet, headline) items, the first leading (the earliest)."""
    items = [
        cand(n, story=1, source=outlet, title=title, hours=len(titles) - n + 1)
        for n, (outlet, title) in enumerate(titles, start=1)
    ]
    (entry,) = select(Output(slug="w", title="W"), items)
    assert entry.lead.source_name == titles[0][0]
    return entry


def test_a_headline_is_shown_only_where_it_says_something_the_ones_before_do_not() -> None:
    entry = entry_of(
        ("Wire", "Lindqvist beats Ortiz to reach Wimbledon final"),
        ("Copy", "LINDQVIST BEATS ORTIZ to reach Wimbledon final!"),  # the lead's words: a copy
        ("Herald", "Benoit beats Mori to set up final against Lindqvist"),
        ("Ledger", "Benoit beats Mori to set up final against Lindqvist"),  # the Herald's, named above
        ("Post", "Swede Lindqvist books Wimbledon final spot"),
    )
    shown, more = also_reported(entry)
    assert [(a.item.source_name, a.headline) for a in shown] == [
        ("Copy", None),
        ("Herald", "Benoit beats Mori to set up final against Lindqvist"),
        ("Ledger", None),
        ("Post", "Swede Lindqvist books Wimbledon final spot"),
    ]
    assert more == 0


def test_another_item_of_a_named_outlet_or_of_the_leads_own_is_named_by_its_headline() -> None:
    """Two developments one outlet reported, the lead's outlet included, both in sight."""
    entry = entry_of(
        ("Wire", "Lindqvist beats Ortiz to reach Wimbledon final"),
        ("Herald", "Lindqvist into maiden Wimbledon final"),
        ("Wire", "Benoit beats Mori in the second semi-final"),
        ("Herald", "LINDQVIST INTO MAIDEN WIMBLEDON FINAL"),  # its first one's words: a copy
        ("Herald", "Benoit sets up final against Lindqvist"),
    )
    shown, more = also_reported(entry)
    assert [(a.item.source_name, a.headline) for a in shown] == [
        ("Herald", "Lindqvist into maiden Wimbledon final"),
        ("Wire", "Benoit beats Mori in the second semi-final"),
        ("Herald", "Benoit sets up final against Lindqvist"),
    ]
    assert more == 0


def test_an_entry_names_a_bounded_number_of_outlets_and_counts_the_rest() -> None:
    outlets = ALSO_SHOWN + 3
    entry = entry_of(("Lead", "A story"), *((f"Outlet {n}", f"Report {n}") for n in range(outlets)))
    shown, more = also_reported(entry)
    assert [a.item.source_name for a in shown] == [f"Outlet {n}" for n in range(ALSO_SHOWN)]
    assert more == 3
    text = entry_html(entry, "https://news.example")
    assert text.count("<li>") == ALSO_SHOWN + 1 and "<li>and 3 more</li>" in text
    assert '<a href="https://news.example/stories/1">Full coverage</a>' in text

    # Copies under the lead's headline give way to the one report with a headline of its own,
    # however late it came.
    copies = [(f"Copy {n}", "A story") for n in range(outlets)]
    entry = entry_of(("Lead", "A story"), *copies, ("Late", "Another development"))
    shown, more = also_reported(entry)
    assert [(a.item.source_name, a.headline) for a in shown] == [
        *((f"Copy {n}", None) for n in range(ALSO_SHOWN - 1)),
        ("Late", "Another development"),
    ]
    assert more == outlets + 1 - ALSO_SHOWN


def test_an_entry_alone_names_no_one_else() -> None:
    entry = entry_of(("Lead", "A story"))
    assert also_reported(entry) == ([], 0)
    assert entry_html(entry, "https://news.example").endswith("<p>From Lead · Reported by 1 outlet</p>")


def feed(items: list[tuple[str, str, float]]) -> bytes:
    """RSS of (headline, link, hours ago) items."""
    body = "".join(
        f"<item><title>{headline}</title><link>{link}</link><guid>{link}#{hours}</guid>"
        f"<description>{headline}.</description><pubDate>{format_datetime(NOW - timedelta(hours=hours))}</pubDate>"
        "</item>"
        for headline, link, hours in items
    )
    return (
        "<?xml version='1.0'?><rss version='2.0'><channel><title>t</title><link>https://x.example/</link>"
        f"<description>d</description>{body}</channel></rss>"
    ).encode()


def test_every_output_gives_the_other_outlets_headlines(server: FeedServer, tmp_path: Path, database_url: str) -> None:
    """Four outlets carry one story (one URL): the wire leads it, a copy under its headline is
    named without one, and two reports under headlines of their own are named with them, so a
    second development put into the story is not hidden behind an outlet's name."""
    server.add("/wire", Route(body=feed([("Lindqvist beats Ortiz to reach Wimbledon final", SEMI, 3)])))
    server.add("/copy", Route(body=feed([("Lindqvist beats Ortiz to reach Wimbledon final", SEMI, 2.5)])))
    server.add("/herald", Route(body=feed([("Benoit beats Mori to set up final against Lindqvist", SEMI, 2)])))
    server.add("/post", Route(body=feed([("Swede Lindqvist books Wimbledon final spot", SEMI, 1)])))
    sources = [{"name": name.title(), "url": server.url(f"/{name}")} for name in ("wire", "copy", "herald", "post")]
    settings = f"database: {database_url}"
    # The wire is polled first, so it carried the story first and leads its entry.
    assert main(["--config", str(write_config(tmp_path, sources[:1], settings=settings)), "poll", "--once"]) == 0
    assert main(["--config", str(write_config(tmp_path, sources, settings=settings)), "poll", "--once"]) == 0
    feeds = tmp_path / "data" / "feeds"
    said = [
        "Copy",
        "Herald: Benoit beats Mori to set up final against Lindqvist",
        "Post: Swede Lindqvist books Wimbledon final spot",
    ]

    def listed(fragment: str) -> list[str]:
        return [" ".join(li.text_content().split()) for li in lxml.html.fromstring(fragment).xpath("//ul/li")]

    atom = (feeds / "world.atom").read_bytes()
    assert check_atom(atom) == []
    (entry,) = feedparser.parse(atom).entries
    assert entry.title == "Lindqvist beats Ortiz to reach Wimbledon final"
    assert "Reported by 4 outlets. Also reported by:" in entry.content[0].value
    assert listed(entry.content[0].value) == said

    rss = (feeds / "world.rss").read_bytes()
    assert check_rss(rss) == []
    assert listed(feedparser.parse(rss).entries[0].description) == said

    doc = (feeds / "world.json").read_bytes()
    assert check_json_feed(doc) == []
    (item,) = json.loads(doc)["items"]
    assert listed(item["content_html"]) == said
    assert [(a["outlet"], a["title"], a["url"]) for a in item["_aggregator"]["also"]] == [
        ("Copy", "Lindqvist beats Ortiz to reach Wimbledon final", SEMI),
        ("Herald", "Benoit beats Mori to set up final against Lindqvist", SEMI),
        ("Post", "Swede Lindqvist books Wimbledon final spot", SEMI),
    ]

    page = lxml.html.fromstring((feeds / "world.html").read_bytes())
    (article,) = page.xpath("//main//article")
    assert [" ".join(li.text_content().split()) for li in article.xpath(".//ul[@class='also']/li")] == said
    assert article.xpath(".//ul[@class='also']/li/a/@href") == [SEMI] * 3  # one link per outlet
    assert article.xpath(".//a[@class='full-coverage']/@href")
