"""UTF-8 that reached us decoded as Latin-1 or Windows-1252 is read as it was written, once, where
entries are normalised: the stored item, every output and the story matcher all see it repaired.

Text written right, in any script, must come out byte for byte as it went in: a repair that
"fixes" a Portuguese headline in capitals would be worse than none.
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest

from aggregator import normalize
from aggregator.cli import main
from aggregator.normalize import normalize_entry, repaired
from aggregator.parse import RawEntry
from tests.conftest import write_config
from tests.server import FeedServer, Route


# UTF-8 read back as Latin-1 or as Windows-1252, the way a feed whose charset was declared
# wrongly arrives: every byte of a character becomes a character (Windows-1252 leaves its five
# undefined bytes as the control characters a browser shows for them).
def latin1(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def cp1252(text: str) -> str:
    return "".join(bytes([b]).decode("cp1252", "ignore") or chr(b) for b in text.encode("utf-8"))


# Prose as news is written: words in many scripts, figures with their symbols, quotes and dashes
# around them, so that a letter like "é" often stands right before a character a UTF-8
# continuation byte would show as ("café»", "José’s", "Ø²").
WORDS = [
    "the", "President", "said", "café", "José", "São", "Paulo", "SÃO", "PAULO", "JOÃO", "Zürich", "naïve",
    "Ñandú", "Øresund", "Ærø", "façade", "Gdańsk", "Łódź", "İstanbul", "Dvořák", "Hà", "Nội", "Ελλάδα",
    "Αθήνα", "Москва", "Київ", "東京", "서울", "القاهرة", "ירושלים", "दिल्ली", "กรุงเทพ", "🌍", "🔥", "£200m",
    "25°C", "½", "€5", "3×3", "©2024", "±2%", "§4", "Nº1", "µg", "¼", "²", "ﬁ", "daß", "œuvre", "™",
]  # fmt: skip
BEFORE = ["", "", "", "«", "“", "¿", "¡", "‘", "(", "„"]
AFTER = ["", "", "", "’s", "”", "»", "…", " –", " —", ",", ".", "!", "?", "’", ":", ")", "·", "®", "°"]
BETWEEN = [" ", " ", " ", "\u00a0", "\n", " – ", " • "]


def prose(rng: random.Random, words: list[str] = WORDS) -> str:
    count = rng.randint(0, 25)
    return "".join(
        rng.choice(BETWEEN) + rng.choice(BEFORE) + rng.choice(words) + rng.choice(AFTER) for _ in range(count)
    )


def test_text_written_right_is_left_exactly_as_it_is() -> None:
    rng = random.Random(13)
    for _ in range(3000):
        text = prose(rng)
        assert repaired(text) == text, repr(text)
    for text in (
        "SÃO PAULO",
        "JOÃO",
        "Москва — «Известия»",
        "Zürich’s café ©2024",
        "東京: 🌍🔥",
        "Ã",
        "â€",
        "é»",
        "ó°",
    ):
        assert repaired(text) == text, repr(text)


def test_real_news_prose_goes_through_untouched() -> None:
    # The project's labelled news (headlines and leads from many outlets): not a field changes,
    # and the entry is not even copied.
    for path in sorted((Path(__file__).parent / "data" / "stories").rglob("*.json")):
        for story in json.loads(path.read_text(encoding="utf-8"))["items"]:
            entry = _entry(title=story["title"], summary=story["summary"], author=story["outlet"])
            assert normalize._repaired(entry) is entry, (path.name, story["id"])


def test_misdecoded_text_is_read_again_as_it_was_written() -> None:
    # ftfy leaves a "™" misread as Windows-1252 ("â„¢") alone: "â„" could be meant.
    words = [w for w in WORDS if w != "™"]
    rng = random.Random(8)
    for _ in range(3000):
        text = prose(rng, words)
        assert repaired(latin1(text)) == text, repr(text)
        assert repaired(cp1252(text)) == text, repr(text)


def test_the_repair_changes_nothing_but_the_encoding() -> None:
    # Entities stay escaped (our HTML is escaped on purpose), quotes stay curled, ligatures,
    # full-width letters and line breaks stay as written.
    assert repaired("Ã© &amp; &eacute; “x” ﬁ ＡＢ\r\n") == "é &amp; &eacute; “x” ﬁ ＡＢ\r\n"


FETCHED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _entry(**fields: object) -> RawEntry:
    values: dict[str, object] = {
        "id": "g", "link": None, "title": None, "title_is_html": False, "summary": None, "content": None,
        "published": None, "updated": None, "author": None, "categories": (), "enclosures": (), "language": None,
    }  # fmt: skip
    values.update(fields)
    return RawEntry(**values)  # type: ignore[arg-type]


def test_an_entry_is_repaired_in_every_field_a_reader_sees_before_its_spaces_collapse() -> None:
    item = normalize_entry(
        _entry(
            title=cp1252("Putin’s visit to Chávez"),
            summary=latin1("<p>Talks on a £200m deal à la carte.</p>"),  # "à" became "Ã" + a no-break space
            content=cp1252("<p>“Déjà vu,” she said.</p>"),
            author=cp1252("José Ruiz"),
            categories=(cp1252("Política"),),
        ),
        "https://example.com/feed",
        FETCHED_AT,
    )
    assert item.title == "Putin’s visit to Chávez"
    assert item.summary_html == "<p>Talks on a £200m deal à la carte.</p>"
    assert item.text == "“Déjà vu,” she said."
    assert (item.author, item.categories) == ("José Ruiz", ("Política",))


def _rss(title: str, items: list[tuple[str, str, str]], encoding: str = "utf-8") -> bytes:
    entries = "".join(
        f'<item><guid isPermaLink="false">{guid}</guid><link>https://news.example/{guid}</link><title>{headline}</title>'
        f"<description>&lt;p&gt;{text}&lt;/p&gt;</description></item>"
        for guid, headline, text in items
    )
    return (
        f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel><title>{title}</title>'
        f"<link>https://news.example/</link>{entries}</channel></rss>"
    ).encode()


def test_a_misdecoded_feed_is_stored_and_published_repaired(server: FeedServer, tmp_path: Path) -> None:
    # Two ways real feeds arrive garbled: UTF-8 bytes under a declared windows-1252 (the parser
    # decodes them wrongly), and UTF-8 whose text the publisher's CMS had already garbled.
    server.add(
        "/declared",
        Route(
            body=_rss("Wire ‘desk’", [("d1", "Putin’s visit to Chávez", "Talks on a £200m deal.")], "windows-1252"),
            content_type="application/rss+xml",
        ),
    )
    server.add(
        "/stored",
        Route(
            body=_rss(
                "Daily",
                [
                    ("s1", cp1252("Ghafoor’s team – the 1960s"), latin1("Déjà vu in São Paulo’s café.")),
                    ("s2", "SÃO PAULO: café» José’s", "Москва — «Известия», Zürich’s café ©2024"),
                ],
            )
        ),
    )
    config = write_config(
        tmp_path,
        [{"name": "declared", "url": server.url("/declared")}, {"name": "stored", "url": server.url("/stored")}],
        settings="story_matching: off",
    )
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0

    expected = {
        "d1": ("Putin’s visit to Chávez", "Talks on a £200m deal."),
        "s1": ("Ghafoor’s team – the 1960s", "Déjà vu in São Paulo’s café."),
        "s2": ("SÃO PAULO: café» José’s", "Москва — «Известия», Zürich’s café ©2024"),  # written so: left alone
    }
    with sqlite3.connect(tmp_path / "data" / "aggregator.db") as conn:
        stored = {guid: (title, text) for guid, title, text in conn.execute("select guid, title, text from items")}
        feed_titles = {title for (title,) in conn.execute("select feed_title from sources")}
    assert stored == expected
    assert feed_titles == {"Wire ‘desk’", "Daily"}

    atom = feedparser.parse((tmp_path / "data" / "feeds" / "world.atom").read_bytes())
    # The entry's text leads its summary (what follows is ours: "From Wire · Reported by 1 outlet").
    published = {e.link.rsplit("/", 1)[1]: (e.title, e.summary.split("</p>")[0]) for e in atom.entries}
    assert published == {guid: (title, f"<p>{text}") for guid, (title, text) in expected.items()}


def test_an_item_known_by_its_text_is_updated_in_place_once_its_text_is_repaired(
    server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An item with neither guid nor link is known by a hash of its text. Stored garbled by a
    # release that did not repair, it must not come back as a second item now that its text
    # reads right: the key is taken from the text as it arrives, the stored copy is updated.
    garbled = cp1252("Putin’s visit to Chávez")

    def feed(*more: str) -> Route:
        items = (
            f"<item><title>{title}</title><description>{cp1252('Talks on a £200m deal.')}</description></item>"
            for title in (garbled, *more)
        )
        body = (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Daily</title>'
            f"<link>https://news.example/</link>{''.join(items)}</channel></rss>"
        )
        return Route(body=body.encode(), content_type="application/rss+xml")

    server.add("/daily", feed())
    config = write_config(tmp_path, [{"name": "daily", "url": server.url("/daily")}], settings="story_matching: off")
    with monkeypatch.context() as before:
        before.setattr(normalize, "repaired", lambda text: text)  # the release before the repair
        assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    database = tmp_path / "data" / "aggregator.db"
    with sqlite3.connect(database) as conn:
        assert [title for (title,) in conn.execute("select title from items")] == [garbled]
    server.add("/daily", feed("A second report"))  # the document changed: it is read again
    assert main(["--config", str(config), "poll", "--once", "--all"]) == 0
    with sqlite3.connect(database) as conn:
        rows = conn.execute("select key, title, text, update_count from items order by id").fetchall()
    assert [row[1:] for row in rows] == [
        ("Putin’s visit to Chávez", "Talks on a £200m deal.", 1),
        ("A second report", "Talks on a £200m deal.", 0),
    ]
    assert rows[0][0].startswith("hash:")
