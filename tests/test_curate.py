"""Curation rules, pins and blocks, and the reasons 'aggregator items' shows. Pure, then via the CLI."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.cli import main
from aggregator.config import Output, Rule
from aggregator.curate import FOUND_TOGETHER, curate, in_lead_order, reads_text, select
from aggregator.records import Candidate, Editorial
from tests.conftest import write_config
from tests.feeds import rss2
from tests.server import FeedServer, Route

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def cand(n: int, *, story: int | None = None, source: str = "A", hours: float = 0, **fields: object) -> Candidate:
    values: dict[str, object] = dict(
        item_id=n, story_id=story or n, story_uid=f"tag:x,2026:{story or n}", source_name=source, source_tags=(),
        source_url="https://a.example/feed", source_link=None, source_feed_id=None,
        title=f"Title {n}", link=f"https://a.example/{n}", summary_html="<p>text</p>", content_html="", text="text",
        author=None, categories=(), published_at=NOW - timedelta(hours=hours or n),
        updated_at=NOW - timedelta(hours=hours or n), first_seen_at=NOW - timedelta(hours=hours or n),
    )  # fmt: skip
    values.update(fields)
    return Candidate(**values)  # type: ignore[arg-type]


def with_content(summary_html: str) -> Candidate:
    """An item with a summary and content: its ``text`` is the content's."""
    return cand(1, summary_html=summary_html, content_html="<p>The article.</p>", text="The article.")


def test_newest_first_and_max_entries() -> None:
    entries = select(Output(slug="w", title="W", max_entries=2), [cand(3), cand(1), cand(2)])
    assert [e.lead.item_id for e in entries] == [1, 2]


@pytest.mark.parametrize(
    ("rule", "candidate", "hit"),
    [
        (Rule(keywords=("election",)), cand(1, title="Election results tonight"), True),
        (Rule(keywords=("elect",)), cand(1, title="Election results tonight"), False),  # whole words only
        (Rule(pattern=r"\bgoal(s)?\b"), cand(1, title="Three GOALS in ten minutes"), True),
        (Rule(keywords=("sport",), fields=("categories",)), cand(1, categories=("Sport",)), True),
        (Rule(keywords=("sport",), fields=("categories",)), cand(1, title="sport"), False),
        (Rule(keywords=("smith",), fields=("author",)), cand(1, author="Jane Smith"), True),
        (Rule(pattern="example.com/live", fields=("link",)), cand(1, link="https://example.com/live/1"), True),
        (Rule(keywords=("flood",), fields=("content",)), cand(1, text="A flood warning"), True),
        # The summary of an item with content is read as text, entities and all, not as its HTML.
        (Rule(keywords=("m&a",), fields=("summary",)), with_content("<p>M&amp;A deals</p>"), True),
        (Rule(keywords=("amp",), fields=("summary",)), with_content("<p>M&amp;A deals</p>"), False),
        (Rule(keywords=("lt",), fields=("summary",)), with_content("<p>&lt;flat&gt;</p>"), False),
        (Rule(keywords=("p",), fields=("summary",)), with_content("<p>Q3 deals</p>"), False),
    ],
)
def test_each_rule_kind(rule: Rule, candidate: Candidate, hit: bool) -> None:
    output = Output(slug="w", title="W", exclude=(rule,))
    verdicts = curate(output, [candidate]).verdicts
    assert verdicts[0].included is not hit
    if hit:
        assert verdicts[0].reason == "excluded by rule exclude[0]"


@pytest.mark.parametrize(
    ("keyword", "title", "hit"),
    [
        # Chinese, Japanese and Thai write no spaces between words: a word stands inside a run of
        # letters, and the side of a keyword written in such a script needs no boundary.
        ("地震", "東京で地震 震度5弱", True),
        ("地震", "四川省发生6.1级地震", True),
        ("ガザ", "イスラエル軍がガザ地区を空爆", True),
        ("แผ่นดินไหว", "เกิดแผ่นดินไหวที่เชียงราย", True),
        ("ស្ថានទូត", "នៅស្ថានទូតអាមេរិក", True),  # Khmer
        ("台風", "大型の台風10号", True),
        ("台風", "東京で地震", False),
        # A word of a spaced script ends where such a script begins, and nowhere else.
        ("iPhone", "新型iPhoneを発表", True),
        ("iPhone", "iPhones sold out", False),
        ("cat", "category error", False),
        ("cat", "猫はcatです", True),
        ("Москва", "Москвасити", False),
        ("東京-Tokyo", "東京-Tokyoline", False),
        ("서울", "서울시장", False),  # Korean puts spaces between words
    ],
)
def test_keywords_of_scripts_written_without_spaces_match_inside_running_text(
    keyword: str, title: str, hit: bool
) -> None:
    output = Output(slug="w", title="W", include=(Rule(keywords=(keyword,)),))
    assert curate(output, [cand(1, title=title)]).verdicts[0].included is hit


@pytest.mark.parametrize(
    ("keyword", "title", "hit"),
    [
        # Case is folded fully, not letter by letter: Greek capitals drop the accent, ß is "ss".
        ("σεισμός", "ΣΕΙΣΜΟΣ ΣΤΗΝ ΑΘΗΝΑ", True),
        ("ΣΕΙΣΜΟΣ", "Ισχυρός σεισμός στην Κρήτη", True),
        ("Straße", "STRASSE GESPERRT", True),
        ("STRASSE", "Die Straße ist gesperrt", True),
        # Marks on Latin letters are dropped, as wires drop them (names.unaccented).
        ("cafe", "Un café à Paris", True),
        ("café", "CAFE SOCIETY", True),
        ("Sanchez", "Pedro Sánchez gana", True),
        ("Elysee", "Réunion à l’Élysée", True),
        ("Walesa", "Lech Wałęsa", True),
        ("cafe", "Une cafétéria", False),
        # Dotted and dotless i of Turkish meet the plain one, as they did before.
        ("istanbul", "İSTANBUL'DA DEPREM", True),
        ("İstanbul", "istanbul'da deprem", True),
        ("Diyarbakir", "Diyarbakır'da", True),
        # Text stored decomposed, and compatibility forms (half-width kana, full-width letters).
        ("café", unicodedata.normalize("NFD", "Un café"), True),
        ("ガザ", "ｶﾞｻﾞ地区", True),
        ("nhk", "ＮＨＫニュース", True),
        # Marks that tell other scripts' letters apart stay: й is no и, ガ no カ.
        ("мой", "мои вещи", False),
        ("ガス", "カス", False),
        ("Москва", "МОСКВА, 3 мая", True),
        # Korean writes its particles onto the word: a keyword in Hangul meets "서울에서" and
        # "서울의", not "부서울" or the compound "서울시장" (test above).
        ("서울", "서울에서 지진 발생", True),
        ("서울", "서울의 날씨", True),
        ("서울", "부서울 지역", False),
        # Russian print writes "е" for "ё" (plaintext.UNPRINTED_MARKS): either meets either.
        ("Королёв", "Королев: пожар на заводе", True),
        ("еще", "ЕЩЁ ОДИН ПОЖАР", True),
    ],
)
def test_keywords_match_whatever_the_case_accents_and_unicode_form(keyword: str, title: str, hit: bool) -> None:
    output = Output(slug="w", title="W", include=(Rule(keywords=(keyword,)),))
    assert curate(output, [cand(1, title=title)]).verdicts[0].included is hit


def test_keywords_lose_the_marks_story_matching_drops_from_names() -> None:
    """A rule for "Chavez" and story matching must agree on which reports name him."""
    from aggregator.curate import folded
    from aggregator.names import unaccented

    words = ["Chávez", "ERDOĞAN", "São", "Støre", "Wałęsa", "Diyarbakır", "İstanbul", "Nguyễn", "Đà Nẵng", "Þór"]
    words += ["Œuvre", "Москва", "Королёв", "Йошкар-Ола", "東京", "plain"]
    assert [folded(word) for word in words] == [unaccented(word.casefold()) for word in words]


def test_a_pattern_rule_reads_the_text_as_it_is() -> None:
    """A regular expression says exactly what it matches: it is searched in the text unfolded."""
    output = Output(slug="w", title="W", include=(Rule(pattern="^Stra(ß|ss)e$", fields=("title",)),))
    verdicts = curate(output, [cand(1, title="Straße"), cand(2, title="STRASSE"), cand(3, title="strasse")]).verdicts
    assert [v.included for v in sorted(verdicts, key=lambda v: v.candidate.item_id)] == [True, True, True]
    café = Output(slug="w", title="W", include=(Rule(pattern=r"\bcafe\b"),))
    assert not curate(café, [cand(1, title="Un café")]).verdicts[0].included


def test_include_rules_and_language() -> None:
    output = Output(slug="w", title="W", include=(Rule(keywords=("climate",)),), language="en")
    result = curate(
        output, [cand(1, title="Climate talks"), cand(2, title="Football"), cand(3, title="Climate", language="fr")]
    )
    reasons = {v.candidate.item_id: v.reason for v in result.verdicts}
    assert reasons[1] == "included, entry 1"
    assert reasons[2] == "excluded: matches no include rule"
    assert reasons[3] == "excluded: language fr is not en"


@pytest.mark.parametrize(
    ("wanted", "declared", "kept"),
    [
        ("fr", "fr_FR", True),
        ("fr-fr", "FR_ca", True),
        ("fr", "fr-FR", True),
        ("fr", "fry", False),
        ("en", "fr_FR", False),
    ],
)
def test_a_language_tag_s_region_may_follow_an_underscore(wanted: str, declared: str, kept: bool) -> None:
    """RSS feeds copy a POSIX locale into <language> ("fr_FR") as often as a BCP 47 tag."""
    output = Output(slug="w", title="W", language=wanted)
    assert curate(output, [cand(1, language=declared)]).verdicts[0].included is kept


def test_one_entry_per_story_led_by_the_first_outlet() -> None:
    early = cand(1, story=7, source="Wire", first_seen_at=NOW - timedelta(hours=5))
    late = cand(2, story=7, source="Daily", first_seen_at=NOW - timedelta(hours=1))
    result = curate(Output(slug="w", title="W"), [late, early, cand(3)])
    assert [e.lead.item_id for e in result.entries] == [1, 3]
    assert result.entries[0].also == (late,)
    reasons = {v.candidate.item_id: v.reason for v in result.verdicts}
    assert reasons[2] == "also reported: same story as entry 1, led by Wire"


def test_of_reports_found_together_the_earliest_dated_leads_and_one_found_later_never_does() -> None:
    """A first ingest reads every feed's backlog in one round and finds a story's reports in
    whatever order the feeds answered: the wire's original, found a minute after the Daily's
    rewrite, still leads. The Herald's, dated earlier still but found an hour on, when readers
    have had the entry, does not take it; nor does an earlier-dated one found just past
    ``FOUND_TOGETHER``."""
    found = NOW - timedelta(hours=2)
    rewrite = cand(1, story=7, source="Daily", published_at=NOW - timedelta(hours=3), first_seen_at=found)
    original = cand(
        2, story=7, source="Wire", published_at=NOW - timedelta(hours=5), first_seen_at=found + timedelta(minutes=1)
    )
    past = found + FOUND_TOGETHER + timedelta(seconds=1)
    late = cand(3, story=7, source="Gazette", published_at=NOW - timedelta(hours=8), first_seen_at=past)
    herald = cand(
        4, story=7, source="Herald", published_at=NOW - timedelta(hours=9), first_seen_at=NOW - timedelta(hours=1)
    )
    result = curate(Output(slug="w", title="W"), [herald, late, rewrite, original])
    assert [(e.lead.item_id, [a.item_id for a in e.also]) for e in result.entries] == [(2, [1, 3, 4])]
    # The same rule heads the story page and `aggregator story` (their items, in any order).
    facts = lambda c: (c.first_seen_at, c.published_at, c.item_id)  # noqa: E731
    assert [c.item_id for c in in_lead_order([late, herald, original, rewrite], facts)] == [2, 1, 3, 4]
    assert in_lead_order([], facts) == []


def test_per_source_cap() -> None:
    output = Output(slug="w", title="W", per_source_cap=2)
    result = curate(
        output, [cand(1, source="Loud"), cand(2, source="Loud"), cand(3, source="Loud"), cand(4, source="Quiet")]
    )
    assert [e.lead.item_id for e in result.entries] == [1, 2, 4]
    assert {v.candidate.item_id: v.reason for v in result.verdicts}[3].startswith("over the per-source cap (2)")


def test_keyword_rules_find_their_words_in_feeds_of_any_script_and_unicode_form(
    server: FeedServer, tmp_path: Path
) -> None:
    """Through fetch, parse, normalize, store and publish: a Japanese word inside running text,
    Greek capitals without their accents, and French written decomposed (NFD), which is also
    published composed."""
    élysée = unicodedata.normalize("NFD", "Réunion à l’Élysée")
    titles = ["東京で地震 震度5弱", "ΣΕΙΣΜΟΣ ΣΤΗΝ ΑΘΗΝΑ", élysée, "Football: Arsenal 2-1", "地震学の新しい本"]
    items = "".join(
        f"<item><guid>g{n}</guid><title>{title}</title><description>Text {n}.</description></item>"
        for n, title in enumerate(titles)
    )
    body = (
        f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Wire</title>{items}</channel></rss>"
    )
    server.add("/f", Route(body=body.encode()))
    sources = [{"name": "wire", "url": server.url("/f")}]
    config = write_config(tmp_path, sources, settings="story_matching: off", outputs="""
        outputs:
          - slug: quakes
            title: Quakes
            include: [{keywords: [地震, σεισμός, elysee]}]
            exclude: [{keywords: [地震学]}]
        """)  # fmt: skip
    assert main(["--config", str(config), "poll", "--once"]) == 0
    published = json.loads((tmp_path / "data" / "feeds" / "quakes.json").read_text())["items"]
    assert sorted(item["title"] for item in published) == sorted(
        ["東京で地震 震度5弱", "ΣΕΙΣΜΟΣ ΣΤΗΝ ΑΘΗΝΑ", "Réunion à l’Élysée"]
    )


def test_pins_go_on_top_past_rules_and_blocks_stay_out() -> None:
    output = Output(slug="w", title="W", exclude=(Rule(keywords=("old",)),))
    editorial = Editorial(pinned=(9,), blocked=frozenset({1}))
    result = curate(output, [cand(1), cand(2), cand(9, title="old but pinned", hours=100)], editorial)
    assert [e.lead.item_id for e in result.entries] == [9, 2]
    reasons = {v.candidate.item_id: v.reason for v in result.verdicts}
    assert reasons == {1: "blocked by an editor", 9: "pinned, entry 1", 2: "included, entry 2"}


def test_items_pin_and_block_from_the_command_line(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add("/f", Route(body=rss2(1, 5)))
    config = write_config(tmp_path, [{"name": "one", "url": server.url("/f")}], outputs="""
        outputs:
          - slug: world
            title: World
            max_entries: 3
        """)  # fmt: skip
    assert main(["--config", str(config), "poll", "--once"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "items", "world", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["included"] for r in rows] == [True, True, True, False, False]
    assert rows[3]["reason"] == "beyond max_entries (3)"
    oldest = rows[-1]

    assert main(["--config", str(config), "pin", "world", str(oldest["story"])]) == 0
    assert "pinned in world" in capsys.readouterr().out
    assert main(["--config", str(config), "block", "world", rows[0]["link"]]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "items", "world", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    after = {r["story"]: r["reason"] for r in listed}
    assert after[oldest["story"]] == "pinned, entry 1"
    # Listed in the output's order, the pinned oldest story first, what is left out last.
    assert [r["reason"].rsplit(", entry ", 1)[-1] for r in listed if r["included"]] == ["1", "2", "3"]
    assert listed[0]["story"] == oldest["story"] and not any(r["included"] for r in listed[3:])
    assert after[rows[0]["story"]] == "blocked by an editor"
    atom = (tmp_path / "data" / "feeds" / "world.atom").read_text()
    assert atom.index(oldest["story_id"]) < atom.index(rows[1]["story_id"])  # republished with the pin on top
    assert rows[0]["story_id"] not in atom

    assert main(["--config", str(config), "pin", "world", "99999"]) == 1
    assert "no story matches '99999'" in capsys.readouterr().err
    assert main(["--config", str(config), "items", "nope"]) == 1


def test_what_an_output_shows_does_not_depend_on_how_many_newer_items_its_rules_refuse(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A prolific outlet's 400 items are all newer than the quiet outlets' few. Candidates come
    # a few hundred at a time, newest first: a rule that takes none of the prolific outlet's,
    # or takes one of them at most, must still reach the quiet outlets' items behind them.
    server.add("/busy", Route(body=rss2(1, 400)))
    quiet = [{"name": f"quiet{n}", "url": server.url(f"/q{n}")} for n in (2, 3, 4)]
    for n in (2, 3, 4):
        server.add(f"/q{n}", Route(body=rss2(n, 2, start=500)))
    config = write_config(tmp_path, [{"name": "busy", "url": server.url("/busy")}, *quiet], settings="""
        story_matching: off
        """, outputs="""
        outputs:
          - slug: harbour
            title: Harbour
            max_entries: 2
            include: [{pattern: "/feed[234]/", fields: [link]}]
          - slug: capped
            title: Capped
            max_entries: 6
            per_source_cap: 1
          - slug: covered
            title: Covered
            max_entries: 2
            order: coverage
            max_age: 3650d
            include: [{pattern: "/feed[234]/", fields: [link]}]
        """)  # fmt: skip
    assert main(["--config", str(config), "poll", "--once"]) == 0
    capsys.readouterr()
    feeds = tmp_path / "data" / "feeds"
    harbour = json.loads((feeds / "harbour.json").read_text())["items"]
    assert len(harbour) == 2 and "/feed2/story500" in harbour[0]["url"]
    covered = json.loads((feeds / "covered.json").read_text())["items"]
    assert len(covered) == 2 and all("/feed1/" not in i["url"] for i in covered)
    capped = json.loads((feeds / "capped.json").read_text())["items"]
    assert sorted(i["authors"][0]["name"] for i in capped) == ["busy", "quiet2", "quiet3", "quiet4"]
    assert main(["--config", str(config), "items", "harbour", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["story_id"] for r in rows if r["included"]] == [i["id"] for i in harbour]


def test_undoing_a_pin_or_a_block_undoes_only_that_and_a_pin_that_cannot_show_says_so(
    server: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add("/a", Route(body=rss2(1, 3)))
    server.add("/b", Route(body=rss2(2, 3, start=10)))
    sources = [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}]
    config = write_config(tmp_path, sources, settings="story_matching: off", outputs="""
        outputs:
          - slug: world
            title: World
          - slug: only-a
            title: Only A
            sources: [a]
        """)  # fmt: skip
    assert main(["--config", str(config), "poll", "--once"]) == 0
    capsys.readouterr()

    def rows() -> list[dict[str, Any]]:
        assert main(["--config", str(config), "items", "world", "--json"]) == 0
        listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
        return listed

    def reasons() -> dict[int, str]:
        return {r["story"]: r["reason"] for r in rows()}

    story, of_b = (next(r["story"] for r in rows() if r["source"] == name) for name in ("a", "b"))
    assert main(["--config", str(config), "pin", "world", str(story)]) == 0
    capsys.readouterr()
    # Undoing a block the story does not have leaves its pin, and says nothing changed.
    assert main(["--config", str(config), "block", "world", str(story), "--remove"]) == 0
    assert "is not blocked in world: nothing changed" in capsys.readouterr().out
    assert reasons()[story] == "pinned, entry 1"
    assert main(["--config", str(config), "block", "world", str(story)]) == 0  # the later decision wins
    capsys.readouterr()
    assert main(["--config", str(config), "pin", "world", str(story), "--remove"]) == 0
    assert "is not pinned in world: nothing changed" in capsys.readouterr().out
    assert reasons()[story] == "blocked by an editor"
    assert main(["--config", str(config), "block", "world", str(story), "--remove"]) == 0
    assert "no longer blocked in world" in capsys.readouterr().out
    assert reasons()[story] != "blocked by an editor"

    # A story of source b pinned in an output of source a alone cannot show there: it says so.
    assert main(["--config", str(config), "pin", "only-a", str(of_b)]) == 0
    out, err = capsys.readouterr()
    assert "pinned in only-a" in out
    assert f"story {of_b} has no item from the sources only-a draws from" in err
    assert main(["--config", str(config), "pin", "only-a", str(story)]) == 0
    assert "draws from" not in capsys.readouterr().err


def test_which_sources_an_output_draws_from() -> None:
    from aggregator.curate import draws_from

    everything = Output(slug="w", title="W")
    by_name = Output(slug="w", title="W", sources=("Wire",))
    by_tag = Output(slug="w", title="W", tags=("world", "europe"))
    assert draws_from(everything, "Anything", ())
    assert draws_from(by_name, "Wire", ()) and not draws_from(by_name, "Daily", ("world",))
    assert draws_from(by_tag, "Daily", ("sport", "europe")) and not draws_from(by_tag, "Daily", ("sport",))


def test_an_output_s_sources_as_the_store_takes_them() -> None:
    from aggregator.curate import draws_from_every_source, source_scope
    from aggregator.records import SourceLabel

    stored = [SourceLabel(1, "Wire", ()), SourceLabel(2, "Daily", ("world",)), SourceLabel(3, "Sport", ("sport",))]
    assert draws_from_every_source(Output(slug="w", title="W"))
    assert not draws_from_every_source(Output(slug="w", title="W", tags=("world",)))
    assert source_scope(Output(slug="w", title="W", sources=("Wire",), tags=("world",)), stored) == {1, 2}
    assert source_scope(Output(slug="w", title="W", sources=("Gone",)), stored) == frozenset()


def test_mostly_undated_candidates_call_for_the_dated_news_as_well() -> None:
    from aggregator.curate import needs_dated_candidates

    assert not needs_dated_candidates([])
    assert not needs_dated_candidates([cand(1, dated=False), cand(2)])  # half is not over half
    assert needs_dated_candidates([cand(1, dated=False), cand(2, dated=False), cand(3)])


def test_undated_items_of_unknown_age_follow_every_dated_entry_whatever_the_cap() -> None:
    # Two undated items of a feed's first fetch, placed at first sight (the newest of all),
    # and one that appeared later: under a cap of 3, only the later one ranks by its time.
    candidates = [
        cand(1, source="Opinion", hours=0.1, dated=False, age_unknown=True),
        cand(2, source="Opinion", hours=0.2, dated=False, age_unknown=True),
        cand(3, source="Opinion", hours=0.5, dated=False),
        cand(4, source="Wire", hours=1),
        cand(5, source="Wire", hours=2),
    ]
    curation = curate(Output(slug="w", title="W", undated_cap=3), candidates)
    assert [e.lead.item_id for e in curation.entries] == [3, 4, 5, 1, 2]
    reasons = {v.candidate.item_id: v.reason for v in curation.verdicts}
    late = "after the dated entries (undated, in its feed's first fetch: its age is unknown)"
    assert reasons[1] == f"included {late}, entry 4"
    assert reasons[3] == "included, entry 1"


def test_only_rules_on_summary_or_content_read_an_item_s_text() -> None:
    def output(**rules: object) -> Output:
        return Output.model_validate({"slug": "s", "title": "S", **rules})

    assert not reads_text(output())
    assert reads_text(output(exclude=[{"keywords": ["x"]}]))  # title and summary by default
    assert not reads_text(output(include=[{"keywords": ["x"], "fields": ["title", "categories", "author", "link"]}]))
    assert reads_text(output(include=[{"pattern": "x", "fields": ["content"]}]))
