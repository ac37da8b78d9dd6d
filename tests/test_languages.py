"""Story matching on news in other languages and scripts: names are read from capitals only where
capitals mark names, and figures or words the model's tokenizer cannot weigh are no evidence on
their own. Each pair below is two different events of one day, as an outside audit wrote them
(and as they were wrongly linked): the real model and tokenizer, a quiet stream (where every
term looks rare), and, for German, the real pipeline reading the feed's declared language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator import names
from aggregator.stories import Member, StoryProfile, TermStats, features_of, judge

NOON = datetime(2026, 3, 5, 12, tzinfo=UTC)
QUIET = TermStats(40, {})  # a few dozen items in the window: no term is common yet

BUDGET = (  # the government's work report
    "政府工作报告：2025年GDP增长目标5%左右",
    "3月5日，十四届全国人大三次会议在北京人民大会堂开幕。国务院总理作政府工作报告，提出2025年国内生产总值增长5%左右。",
)
FIRE = (  # a fire in Shenzhen, the same morning
    "深圳一居民楼起火 2人受伤",
    "3月5日凌晨，深圳市一居民楼发生火灾，5辆消防车赶到现场扑救。截至2025年3月5日上午，火灾已造成2人受伤。",
)
QUAKE_AR = (  # a Tokyo earthquake
    "زلزال بقوة 7.1 درجات يضرب طوكيو ويقتل 3 أشخاص",
    "قالت السلطات اليابانية إن زلزالا بقوة 7.1 درجات ضرب العاصمة طوكيو صباح اليوم 5 مارس، ما أدى إلى مقتل 3 أشخاص.",
)
BLAST_AR = (  # a factory blast in Cairo
    "انفجار في مصنع بالقاهرة يودي بحياة 3 أشخاص",
    "أعلنت وزارة الداخلية المصرية أن انفجارا وقع في مصنع بالقاهرة صباح اليوم 5 مارس، ما أودى بحياة 3 أشخاص.",
)
STABBING = (
    "Messerangriff in S-Bahn: Polizei sucht Zeugen",
    "Am Montagabend hat ein unbekannter Täter in einer S-Bahn einen Fahrgast mit einem Messer verletzt. Der Täter "
    "flüchtete am nächsten Bahnhof. Die Polizei bittet Zeugen um Hinweise.",
)
ROBBERY = (
    "Überfall auf Juwelier in Berlin-Mitte",
    "Am Montagabend haben zwei maskierte Täter einen Juwelier in Berlin-Mitte überfallen und Schmuck erbeutet. Die "
    "Täter flüchteten zu Fuß. Die Polizei bittet Zeugen um Hinweise.",
)


def judged(first: tuple[str, str], second: tuple[str, str], language: str | None = None) -> bool:
    """Whether ``second``, an hour after ``first``, would join the story ``first`` began."""
    a, _ = features_of(*first, language=language)
    b, _ = features_of(*second, language=language)
    story = StoryProfile(1, (Member(1, NOON, a),), NOON)
    return judge(b, NOON + timedelta(hours=1), story, QUIET).joins


def test_figures_alone_do_not_link_two_reports_in_a_script_without_capitals() -> None:
    budget, budget_terms = features_of(*BUDGET)
    fire, fire_terms = features_of(*FIRE)
    assert budget.vector @ fire.vector > 0.6  # the model finds any two Chinese texts alike
    # No capitals to read names from, and "GDP" run together with Chinese is no name either:
    # the day's figures are all that is left, and alone they are no evidence.
    assert budget_terms.words == () and fire_terms.words == ()
    assert not budget.terms and not fire.terms
    assert not judged(BUDGET, FIRE)


def test_a_latin_acronym_in_a_chinese_report_is_a_name_and_keeps_its_figures() -> None:
    terms = names.extract("NBA：湖人队击败勇士队", "湖人队在主场以110比105击败勇士队，NBA常规赛继续进行。", None, False)
    assert terms.words == ("nba", "110", "105")


def test_words_of_another_alphabet_are_not_rare_words() -> None:
    quake, quake_terms = features_of(*QUAKE_AR, language="ar")
    assert not quake.words and not quake.terms and quake_terms.words == ()
    assert not judged(QUAKE_AR, BLAST_AR, "ar")


@pytest.mark.parametrize("language", ["de", "de-DE", "de_AT", "DE-ch"])
def test_the_nouns_german_capitalises_are_no_names(language: str) -> None:
    features, terms = features_of(*STABBING, language=language)
    assert terms.words == ()  # "S-Bahn", "Polizei", "Zeugen", "Montagabend", "Täter": nouns
    assert not features.words  # nor rare words: the English tokenizer splits every German noun
    assert not judged(STABBING, ROBBERY, language)
    assert names.capitals_mark_names(*STABBING, "fr-FR") and names.capitals_mark_names(*STABBING, None)


def test_an_english_report_keeps_its_names_and_figures() -> None:
    _, terms = features_of(
        "Five killed in Fort Lauderdale airport shooting",
        "A gunman opened fire at Fort Lauderdale airport on Friday, killing 5 people and wounding 8.",
        language="en-US",
    )
    assert {"fort", "lauderdale", "5", "8"} <= set(terms.words)


def test_the_pipeline_reads_a_german_feeds_language(server: object, tmp_path: Path) -> None:
    """Two German outlets' reports of two crimes of one evening, each feed declaring its
    language: two stories (the parse worker hands the item's language to ``features_of``)."""
    import sqlite3
    from email.utils import format_datetime
    from xml.sax.saxutils import escape

    from aggregator.cli import main
    from tests.conftest import write_config
    from tests.server import FeedServer, Route

    assert isinstance(server, FeedServer)
    now = datetime.now(UTC).replace(microsecond=0)

    def feed(outlet: str, language: str | None, title: str, text: str, at: datetime) -> bytes:
        declared = f"<language>{language}</language>" if language else ""
        return (
            f"<rss version='2.0'><channel><title>{outlet}</title><link>https://{outlet}.example/</link>"
            f"<description>d</description>{declared}<item><title>{escape(title)}</title>"
            f"<link>https://{outlet}.example/1</link><guid>{outlet}-1</guid><description>{escape(text)}</description>"
            f"<pubDate>{format_datetime(at)}</pubDate></item></channel></rss>"
        ).encode()

    def stories_of(language: str | None, run: str) -> int:
        server.add(f"/{run}/bz", Route(body=feed(f"bz{run}", language, *STABBING, now - timedelta(hours=2))))
        server.add(f"/{run}/tsp", Route(body=feed(f"tsp{run}", language, *ROBBERY, now - timedelta(hours=1))))
        sources = [
            {"name": f"bz{run}", "url": server.url(f"/{run}/bz")},
            {"name": f"tsp{run}", "url": server.url(f"/{run}/tsp")},
        ]
        (tmp_path / run).mkdir()
        config = write_config(tmp_path / run, sources)
        assert main(["--config", str(config), "poll", "--once"]) == 0
        with sqlite3.connect(tmp_path / run / "data" / "aggregator.db") as db:
            (count,) = db.execute("select count(distinct story_id) from items").fetchone()
        return int(count)

    assert stories_of("de-DE", "declared") == 2


def test_a_greek_name_in_capitals_is_the_same_name_as_with_its_tonos() -> None:
    """Greek capitals carry no tonos: one outlet's "ΘΗΒΑ" and another's "Θήβα" name one town."""
    capitals = names.extract("ΣΕΙΣΜΟΣ 5,1 ΡΙΧΤΕΡ ΣΤΗ ΘΗΒΑ", "")
    lead = names.extract(
        "Σεισμός 5,1 Ρίχτερ στη Θήβα", "Ισχυρός σεισμός σημειώθηκε στη Θήβα. Έγινε αισθητός στην Αθήνα."
    )
    assert "θηβα" in set(capitals.words) & set(lead.words)
    assert names.unaccented("йод") == "йод"  # Cyrillic "й" is a letter of its own, not "и" with a mark


def test_a_russian_name_with_its_yo_is_the_same_name_as_printed_without() -> None:
    """Russian print mostly writes "е" for "ё": one outlet's "Королёв" and another's "Королев"
    name one town, as keywords find it (``curate.folded``)."""
    with_mark = names.extract("Пожар в Королёве", "В подмосковном Королёве горел склад.")
    printed = names.extract("Пожар в Королеве", "В подмосковном Королеве горел склад.")
    assert with_mark.words == printed.words == ("королеве",)
    assert names.unaccented("ёлка") == names.unaccented("елка") == "елка"


FIRE_DE = (
    "Großbrand in Hamburger Lagerhalle – Feuerwehrmann verletzt",
    "Bei einem Großbrand in einer Lagerhalle im Hamburger Hafen ist am Montag ein Feuerwehrmann verletzt worden. "
    "Die Polizei sperrte die Köhlbrandbrücke, die Feuerwehr war mit 80 Einsatzkräften vor Ort. Anwohner sollten "
    "Fenster und Türen geschlossen halten.",
)
BOMB_DE = (
    "Fliegerbombe in München entschärft – Tausende Anwohner evakuiert",
    "In München ist am Montag eine Fliegerbombe aus dem Zweiten Weltkrieg entschärft worden. Die Polizei evakuierte "
    "rund 3000 Anwohner, die Feuerwehr war mit 80 Einsatzkräften vor Ort. Fenster und Türen sollten geschlossen "
    "bleiben, teilte die Polizei mit.",
)


def test_german_stock_phrases_are_no_copy_but_a_german_copy_is() -> None:
    """With no names to agree on, two police reports' shared phrases ("die Feuerwehr war mit 80
    Einsatzkräften vor Ort") are not taken for a copy; another outlet's copy of one, its
    headline rewritten and its lead trimmed, still is."""
    fire, _ = features_of(*FIRE_DE, language="de")
    assert not fire.terms and not fire.words
    assert not judged(FIRE_DE, BOMB_DE, "de")
    copy = ("Hamburger Hafen: Feuerwehrmann bei Großbrand verletzt", FIRE_DE[1].rsplit(" Anwohner", 1)[0])
    assert judged(FIRE_DE, copy, "de")


def test_the_items_table_stays_aligned_with_chinese_sources_and_headlines(
    server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aggregator items`` lines its columns up by terminal columns, not characters: a Chinese
    character takes two, and counted as one it pushed every column after it out of line."""
    from email.utils import format_datetime
    from xml.sax.saxutils import escape

    from wcwidth import wcswidth

    from aggregator.cli import main
    from tests.conftest import write_config
    from tests.server import FeedServer, Route

    assert isinstance(server, FeedServer)
    now = datetime.now(UTC).replace(microsecond=0)
    feeds = {
        "新华社国际新闻频道的一个很长很长的名字": (*BUDGET, "zh"),
        "Example Wire": ("Rates on hold as inflation eases", "The Kalmar central bank kept its key rate.", "en"),
        "深圳晚报": (*FIRE, "zh"),
    }
    sources = []
    for n, (name, (title, text, language)) in enumerate(feeds.items()):
        body = (
            f"<rss version='2.0'><channel><title>t</title><link>https://o{n}.example/</link><description>d"
            f"</description><language>{language}</language><item><title>{escape(title)}</title>"
            f"<link>https://o{n}.example/1</link><description>{escape(text)}</description>"
            f"<pubDate>{format_datetime(now - timedelta(hours=n + 1))}</pubDate></item></channel></rss>"
        ).encode()
        server.add(f"/o{n}", Route(body=body))
        sources.append({"name": f'"{name}"', "url": server.url(f"/o{n}")})
    config = write_config(tmp_path, sources)
    assert main(["--config", str(config), "poll", "--once"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "items", "world"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("+ ", "- ")]
    assert len(rows) == 3
    reason_at = {wcswidth(row[: row.index(" included")]) for row in rows}
    assert len(reason_at) == 1, rows
    assert any("新华社" in row and "…" in row for row in rows)  # the long name is shortened, by columns


def test_a_turkish_names_case_endings_are_not_part_of_the_name() -> None:
    """Turkish writes a name's case ending after an apostrophe: one report's "İstanbul'da" and
    another's "İstanbul'un" name one city, and a headline in capitals declines it too."""
    located = names.extract("Deprem İstanbul'da hissedildi", "Deprem, Ankara'da ve İstanbul'da hissedildi.")
    declined = names.extract("İSTANBUL'UN ilçelerinde hasar", "Depremde İstanbul'un ilçeleri ile Ankara'nın evleri.")
    assert {"istanbul", "ankara"} <= set(located.words) & set(declined.words)
    said = names.extract("", "Cumhurbaşkanı Erdoğan'ın açıklaması bugün Ankara'da bekleniyor.")
    assert said.words == ("erdogan", "ankara")
    # Not an English contraction, nor what follows a short prefix.
    for word, term in (("You're", "you're"), ("They'll", "they'll"), ("O'Neill", "o'neill"), ("Ba'ath", "ba'ath")):
        assert names._fold(word) == term
