"""The HTML pages as assistive technology and a narrow screen meet them.

One site, polled from a real HTTP server into a real SQLite file and served by the real app:
an Arabic outlet that declares its language, an English one whose summaries carry their own
headings, a wide ``<pre>`` and a table and whose items have audio, a second English outlet
carrying one of its stories, an undated column (first seen at a time with microseconds) and a
disabled source. Each test checks one defect an accessibility audit found, in the pages' markup
and, where only layout or the browser's own resolution tells, in a real Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import httpx
import pytest
from lxml import etree

from aggregator.archive import Page
from aggregator.cli import resolve_story
from aggregator.config import Config
from aggregator.entryview import SCROLLER_CLASS, demoted_headings, item_language, scrollers_focusable
from aggregator.store.repository import Store
from tests.browser import CHROMIUM, DESKTOP, PHONE, Browser, layout
from tests.conftest import polled_once, serving
from tests.server import FeedServer

NOW = datetime(2026, 11, 24, 12, 0, 0, 438442, tzinfo=UTC)  # 2026-W48; W47 and W45 are archived
THIS_WEEK, LAST_WEEK = datetime(2026, 11, 23, 9, tzinfo=UTC), datetime(2026, 11, 18, 9, tzinfo=UTC)
ARABIC_HEADLINE = "قمة G20 تنتهي دون اتفاق"
SUMMIT = "https://herald.example/summit"
HEADINGS = "<h1>Inside one</h1><p>a</p><h2>Inside two</h2><h3>Inside three</h3><h5>Inside five</h5><h6>Inside six</h6>"
WIDE = (
    "<pre>" + "wide_unbroken_code_line_" * 12 + "</pre><table><tr>" + "<td>column</td>" * 30 + "</tr></table>"
    "<p>Run <code>" + "inline_unbroken_code_" * 12 + "</code> first.</p>"
)
AUDIO = "https://cdn.herald.example/{}.mp3"
IMAGES = (
    '<img src="https://cdn.herald.example/chart.png"><img src="https://cdn.herald.example/bank.jpg" alt="The bank">'
)
OUTPUTS = """
outputs:
  - slug: world
    title: World
  - slug: arabiya
    title: Arabiya
    language: ar
"""
Item = tuple[str, str, datetime | None, str, str]  # headline, link, date, summary HTML, extra RSS elements


def rss(title: str, language: str | None, items: list[Item]) -> bytes:
    body = "".join(
        f"<item><title>{escape(headline)}</title><link>{link}</link><guid>{link}</guid>"
        f"<description>{escape(summary)}</description>"
        + (f"<pubDate>{format_datetime(when)}</pubDate>" if when else "")
        + f"{extra}</item>"
        for headline, link, when, summary, extra in items
    )
    lang = f"<language>{language}</language>" if language else ""
    return (
        "<rss version='2.0' xmlns:dc='http://purl.org/dc/elements/1.1/'><channel>"
        f"<title>{title}</title><link>https://{title.lower()}.example/</link><description>d</description>{lang}"
        f"{body}</channel></rss>"
    ).encode()


def audio(name: str) -> str:
    return f"<enclosure url='{AUDIO.format(name)}' length='4821341' type='audio/mpeg'/>"


@pytest.fixture
def site(server: FeedServer, tmp_path: Path) -> Iterator[tuple[Config, Store]]:
    server.add(
        "/akhbar",
        body=rss(
            "Akhbar",
            "ar",
            [
                (ARABIC_HEADLINE, "https://akhbar.example/summit", THIS_WEEK,
                 "<p>انتهت القمة في الرياض دون بيان ختامي.</p>", "<dc:creator>سارة أحمد</dc:creator>"),
                ("الأمطار تغمر الشمال", "https://akhbar.example/rain", LAST_WEEK, "<p>فاضت الأنهار.</p>", ""),
                ("سد جديد", "https://akhbar.example/dam", datetime(2026, 11, 4, 9, tzinfo=UTC), "<p>سد.</p>", ""),
            ],
        ),
    )  # fmt: skip
    server.add(
        "/herald",
        body=rss(
            "Herald",
            "en-GB",
            [
                ("Summit ends without a deal", SUMMIT, THIS_WEEK, f"<p>Talks ended.</p>{HEADINGS}{WIDE}",
                 audio("summit") + "<dc:creator>Ann Reporter</dc:creator>"),
                ("Rates on hold", "https://herald.example/rates", THIS_WEEK, f"<p>No change.</p>{IMAGES}",
                 audio("rates")),
                ("Rivers rise across the north", "https://herald.example/rivers", LAST_WEEK,
                 f"<p>Floods.</p>{HEADINGS}{WIDE}", audio("rivers")),
            ],
        ),
    )  # fmt: skip
    server.add(
        "/gazette",
        body=rss(
            "Gazette", "en", [("Talks collapse at summit", SUMMIT, THIS_WEEK + timedelta(hours=1), "<p>Over.</p>", "")]
        ),
    )
    server.add(
        "/opinion", body=rss("Opinion", None, [("On winter", "https://opinion.example/w", None, "<p>Cold.</p>", "")])
    )
    sources: list[dict[str, object]] = [
        {"name": "Akhbar", "url": server.url("/akhbar")},
        {"name": "Herald", "url": server.url("/herald")},
        {"name": "Gazette", "url": server.url("/gazette")},
        {"name": "Opinion", "url": server.url("/opinion")},
        {"name": "Dormant", "url": server.url("/dormant"), "enabled": "false"},
    ]
    with polled_once(tmp_path, sources, f"sqlite:///{tmp_path / 'store.db'}", OUTPUTS, NOW) as site:
        yield site


PAGES = ("/feeds/world", "/feeds/world/archive/2026-W47")


def fetch(base: str, path: str) -> etree._Element:
    response = httpx.get(f"{base}{path}")
    assert response.status_code == 200, (path, response.status_code)
    return etree.HTML(response.content)


def article(page: etree._Element, headline: str) -> etree._Element:
    found: list[etree._Element] = page.xpath(f"//article[normalize-space(.//h2)={quote(headline)}]")
    assert len(found) == 1, headline
    return found[0]


def quote(text: str) -> str:
    return f"'{text}'" if "'" not in text else f'"{text}"'


def test_feed_text_takes_its_direction_from_itself(site: tuple[Config, Store], tmp_path: Path) -> None:
    """Headlines, summaries, outlets and authors carry ``dir="auto"``: an Arabic headline reads
    right to left (its "G20" in place), an English one left to right, on the same page."""
    config, store = site
    story_id, _ = resolve_story(store, SUMMIT)
    with serving(store, config) as base:
        for path in PAGES:
            page = fetch(base, path)
            articles = page.xpath("//main//article")
            assert articles
            for entry in articles:
                held = entry.xpath(
                    "./h2 | .//div[@class='summary'] | .//span[@class='outlet'] | .//span[@class='author']"
                )
                assert len(held) >= 3 and all(e.get("dir") == "auto" for e in held), (path, [e.tag for e in held])
        assert article(fetch(base, "/feeds/world"), ARABIC_HEADLINE).xpath(".//span[@class='author']/text()") == [
            "سارة أحمد"
        ]
        story = fetch(base, f"/stories/{story_id}")
        held = story.xpath("//h1 | //main//li//h2 | //main//li//span[@class='outlet']")
        assert len(held) == 5 and all(e.get("dir") == "auto" for e in held)
        if CHROMIUM is None:
            return
        script = """[...document.querySelectorAll('article h2, article .summary, article .author')]
            .map(e => [e.textContent.trim().slice(0, 12), getComputedStyle(e).direction])"""
        with Browser(tmp_path / "profile") as browser:
            seen = dict(browser.visit(f"{base}/feeds/world", DESKTOP, script))
    assert seen[ARABIC_HEADLINE[:12]] == "rtl" and seen["انتهت القمة "] == "rtl" and seen["سارة أحمد"] == "rtl"
    assert seen["Summit ends "] == "ltr" and seen["Ann Reporter"] == "ltr"


def test_the_chrome_is_english_and_each_item_says_its_own_language(site: tuple[Config, Store]) -> None:
    """The page's own words are English whatever the output's ``language``; an item's headline
    and summary carry the language its feed declared, else the output's (curation let the item
    in as that language's), else none and they are read as the page is."""
    config, store = site
    with serving(store, config) as base:
        world, arabiya = fetch(base, "/feeds/world"), fetch(base, "/feeds/arabiya")
        archive = fetch(base, "/feeds/world/archive/2026-W47")
    for page in (world, arabiya, archive):
        assert page.xpath("/html/@lang") == ["en"]

    def languages(page: etree._Element, headline: str) -> set[str | None]:
        entry = article(page, headline)
        return {e.get("lang") for e in entry.xpath("./h2 | .//div[@class='summary']")}

    assert languages(world, ARABIC_HEADLINE) == {"ar"} and languages(arabiya, ARABIC_HEADLINE) == {"ar"}
    assert languages(world, "Summit ends without a deal") == {"en-GB"}
    assert languages(archive, "Rivers rise across the north") == {"en-GB"}
    assert languages(world, "On winter") == {None}  # no language declared: the page's
    assert languages(arabiya, "On winter") == {"ar"}  # in an Arabic output: Arabic
    assert arabiya.xpath("//article//p[@class='meta']/@lang") == []  # the chrome inside stays English


def test_a_story_page_says_each_items_language(site: tuple[Config, Store]) -> None:
    """On a story page, each outlet's headline (and the page's, its lead's) carries the language
    its feed declared: the outlets of one story may write in several."""
    config, store = site
    summit, _ = resolve_story(store, SUMMIT)
    with serving(store, config) as base:
        page = fetch(base, f"/stories/{summit}")
    said = {"".join(h.itertext()).strip(): h.get("lang") for h in page.xpath("//main//li//h2")}
    assert said == {"Talks collapse at summit": "en", "Summit ends without a deal": "en-GB"}
    assert page.xpath("/html/@lang") == ["en"] and page.xpath("//h1/@lang") == ["en-GB"]


@pytest.mark.parametrize(
    ("declared", "output", "tag"),
    [("ar", None, "ar"), ("en_US", None, "en-US"), ("English", "de", "de"), (None, "ar", "ar"), ("", None, None)],
)
def test_an_item_language_is_a_tag_or_nothing(declared: str | None, output: str | None, tag: str | None) -> None:
    from tests.test_publish import candidate

    assert item_language(candidate(1, language=declared), output) == tag


def test_a_summary_headings_sit_below_its_article_heading(site: tuple[Config, Store]) -> None:
    """A feed's ``<h1>`` in a summary is not a second page heading: on the pages, a summary's
    headings start at h3, under the article's h2, in their order; the feeds keep them as stored."""
    config, store = site
    with serving(store, config) as base:
        pages = {path: fetch(base, path) for path in PAGES}
        atom = httpx.get(f"{base}/feeds/world.atom").text
    expected = [
        ("h3", "Inside one"),
        ("h3", "Inside two"),
        ("h4", "Inside three"),
        ("h6", "Inside five"),
        ("h6", "Inside six"),
    ]
    for path, page in pages.items():
        assert len(page.xpath("//h1")) == 1, path
        headline = "Summit ends without a deal" if path == "/feeds/world" else "Rivers rise across the north"
        summary = article(page, headline).xpath(".//div[@class='summary']")[0]
        found = [(e.tag, e.text) for e in summary.iter("h1", "h2", "h3", "h4", "h5", "h6")]
        assert found == expected, path
    assert "&lt;h1&gt;Inside one&lt;/h1&gt;" in atom


def test_a_summary_image_the_feed_did_not_describe_gets_an_empty_alt(site: tuple[Config, Store]) -> None:
    """An image with no ``alt`` is read by its file name; on the pages it gets an empty one, and
    one the feed described keeps its description. The feeds keep the images as stored."""
    config, store = site
    with serving(store, config) as base:
        page = fetch(base, "/feeds/world")
        atom = httpx.get(f"{base}/feeds/world.atom").text
    images = article(page, "Rates on hold").xpath(".//div[@class='summary']//img")
    assert [(i.get("src").rsplit("/", 1)[1], i.get("alt")) for i in images] == [
        ("chart.png", ""),
        ("bank.jpg", "The bank"),
    ]
    assert all(img.get("alt") is not None for img in page.xpath("//img"))
    assert 'chart.png"&gt;' in atom or 'chart.png"/&gt;' in atom  # no alt added in the feed


def test_a_keyboard_reaches_what_scrolls_within_a_summary(site: tuple[Config, Store]) -> None:
    """A wide ``<pre>`` or table scrolls within the column (the test at 320 px below); one that
    cannot take the focus cannot be scrolled without a mouse. On the pages a ``<pre>`` is in the
    tab order, and a table sits in a named region that is, still a table itself; the feeds keep
    them as stored."""
    config, store = site
    with serving(store, config) as base:
        pages = {path: fetch(base, path) for path in PAGES}
        atom = httpx.get(f"{base}/feeds/world.atom").text
    for path, page in pages.items():
        summaries = page.xpath("//div[@class='summary']")
        codes = [e for s in summaries for e in s.iter("pre")]
        tables = [e for s in summaries for e in s.iter("table")]
        assert codes and tables, path
        assert all(e.get("tabindex") == "0" for e in codes), path
        for table in tables:
            region = table.getparent()
            assert region.tag == "div" and region.get("class") == SCROLLER_CLASS, path
            assert (region.get("role"), region.get("aria-label"), region.get("tabindex")) == ("region", "Table", "0")
    assert "&lt;pre&gt;wide_unbroken" in atom and "&lt;table&gt;" in atom and "tabindex" not in atom


def test_focusable_scrollers_rewrite_pre_and_table_tags_only() -> None:
    region = f'<div class="{SCROLLER_CLASS}" role="region" aria-label="Table" tabindex="0">'
    html = (
        '<pre title="a <table> here">x</pre><table dir="rtl"><tr><td>1</td></tr></TABLE>'
        "<p>pre &lt;table&gt;</p><PRE>y</PRE><code>z</code>"
    )
    assert scrollers_focusable(html) == (
        f'<pre tabindex="0" title="a <table> here">x</pre>{region}<table dir="rtl"><tr><td>1</td></tr></TABLE></div>'
        '<p>pre &lt;table&gt;</p><PRE tabindex="0">y</PRE><code>z</code>'
    )
    assert scrollers_focusable("<p>none</p>") == "<p>none</p>"


def test_demoting_headings_rewrites_heading_tags_only() -> None:
    html = (
        '<h1 title="a <h1> here" dir="rtl">One</h1><p title=\'<h2>\'>x &lt;h2&gt;</p>'
        "<h4>Four</h4><h6>Six</h6><hr><header>kept</header>"
    )
    assert demoted_headings(html) == (
        '<h3 title="a <h1> here" dir="rtl">One</h3><p title=\'<h2>\'>x &lt;h2&gt;</p>'
        "<h5>Four</h5><h6>Six</h6><hr><header>kept</header>"
    )
    assert demoted_headings("<p>none</p>") == "<p>none</p>"


REFLOW = 320  # WCAG 1.4.10: content reflows at 320 CSS pixels without scrolling in two dimensions
WIDE_PARTS = """(() => [...document.querySelectorAll('.summary pre, .summary .scroller')].map(e => {
    const box = e.getBoundingClientRect();
    return [e.tagName, box.left >= 0 && box.right <= innerWidth, e.scrollWidth > e.clientWidth];
}))()"""


TABLES_SHOWN = "[...document.querySelectorAll('.summary table')].map(t => getComputedStyle(t).display)"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_wide_code_and_tables_scroll_within_themselves_at_320_px(site: tuple[Config, Store], tmp_path: Path) -> None:
    """A summary's long ``<pre>`` line or wide table does not make the whole page scroll
    sideways: it stays within the column and scrolls on its own."""
    config, store = site
    with serving(store, config) as base, Browser(tmp_path / "profile") as browser:
        for path in PAGES:
            result = browser.visit(
                f"{base}{path}", REFLOW, layout("article h2, article .meta, .summary, .summary code")
            )
            assert result["width"] == REFLOW and result["scrollWidth"] <= REFLOW, (path, result)
            assert result["cut"] == [], (path, result["cut"])
            parts = browser.visit(f"{base}{path}", REFLOW, WIDE_PARTS)
            assert {tag for tag, _, _ in parts} == {"PRE", "DIV"}, (path, parts)
            assert all(inside and scrolls for _, inside, scrolls in parts), (path, parts)
            # The region scrolls, not the table: one shown as a block is no table to some screen readers.
            shown = browser.visit(f"{base}{path}", REFLOW, TABLES_SHOWN)
            assert shown and set(shown) == {"table"}, (path, shown)


# Each element that shows text of its own (and each /status label before a cell on a phone):
# its colour and the first opaque background behind it (the canvas is white).
TEXT_COLOURS = """(() => {
  const background = e => {
    for (; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
    }
    return 'rgb(255, 255, 255)';
  };
  const seen = [];
  for (const e of document.querySelectorAll('body *')) {
    const own = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const name = String(e.className || e.tagName);
    if (own && e.getClientRects().length) seen.push([name, getComputedStyle(e).color, background(e)]);
    const label = getComputedStyle(e, '::before');
    if (label.content.startsWith('"') && label.content !== '""') {
      seen.push([name + '::before', label.color, background(e)]);
    }
  }
  return seen;
})()"""


def contrast(foreground: str, background: str) -> float:
    """WCAG 2's contrast ratio of two opaque CSS ``rgb(r, g, b)`` colours."""

    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]]
        r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_status_text_has_enough_contrast(site: tuple[Config, Store], tmp_path: Path) -> None:
    """Every text on /status, a disabled source's state among it, is at least 4.5:1 against
    what is behind it (WCAG 1.4.3), at a desktop's width and on a phone's cards."""
    config, store = site
    with serving(store, config) as base, Browser(tmp_path / "profile") as browser:
        seen = [browser.visit(f"{base}/status", width, TEXT_COLOURS) for width in (DESKTOP, PHONE)]
    texts = [text for page in seen for text in page]
    assert any(name == "disabled" for name, _, _ in texts)
    low = [(name, fg, bg, round(contrast(fg, bg), 2)) for name, fg, bg in texts if contrast(fg, bg) < 4.5]
    assert low == []


def test_every_page_has_one_main_and_tells_its_navigations_apart(site: tuple[Config, Store]) -> None:
    """Each page's content is in one ``main``; each ``nav`` has a name of its own (axe's
    landmark-unique): an archive page has the site's and, below its entries, the older ones'."""
    config, store = site
    story_id, _ = resolve_story(store, SUMMIT)
    with serving(store, config) as base:
        pages = {path: fetch(base, path) for path in ("/", *PAGES, f"/stories/{story_id}", "/status")}
    for path, page in pages.items():
        assert len(page.xpath("//main")) == 1, path
        labels = [nav.get("aria-label") for nav in page.xpath("//nav")]
        assert all(labels) and len(set(labels)) == len(labels), (path, labels)
        assert not page.xpath("/html/body/*[not(self::header or self::main or self::nav or self::footer)]"), path
    assert len(pages["/feeds/world/archive/2026-W47"].xpath("//nav")) == 2


def test_players_and_repeated_links_are_named_after_their_entry(site: tuple[Config, Store]) -> None:
    """An audio player and the "Audio" and "Full coverage" links of an entry say whose they are,
    so a list of the page's links or controls tells them apart (the words shown stay the same)."""
    config, store = site
    with serving(store, config) as base:
        pages = {path: fetch(base, path) for path in PAGES}
    for path, page in pages.items():
        names: list[str] = []
        for entry in page.xpath("//main//article"):
            headline = " ".join("".join(entry.xpath("./h2")[0].itertext()).split())
            players = entry.xpath(".//p[@class='enclosure']/audio")
            links = entry.xpath(".//p[@class='enclosure']/a | .//a[@class='full-coverage']")
            assert [p.get("aria-label") for p in players] == [f"Audio: {headline}"] * len(players), path
            for link in links:
                name = " ".join("".join(link.itertext()).split())
                assert headline in name and name.startswith(("Audio", "Full coverage")), (path, name)
                assert link.xpath("./span[@class='vh']/bdi"), (path, name)  # isolated, not shown
                names.append(name)
        assert len(names) == len(set(names)) and len(names) >= (4 if path == "/feeds/world" else 1), (path, names)


def test_a_story_page_links_each_item_once(site: tuple[Config, Store]) -> None:
    """Each outlet's item is one link, its headline; its address is shown as text, not linked
    again (two adjacent links to one place are two stops for a keyboard and a screen reader)."""
    config, store = site
    story_id, _ = resolve_story(store, SUMMIT)
    with serving(store, config) as base:
        page = fetch(base, f"/stories/{story_id}")
    items = page.xpath("//main//li")
    assert len(items) == 2
    for item in items:
        assert item.xpath(".//a/@href") == [SUMMIT]
        assert item.xpath(".//h2/a/@href") == [SUMMIT]
        assert item.xpath("string(.//span[@class='url'])") == SUMMIT


def test_machine_readable_times_are_whole_seconds(site: tuple[Config, Store]) -> None:
    """HTML's ``datetime`` allows three fractional digits at most: an undated item, first seen
    at a time with microseconds, says that time in whole seconds."""
    config, store = site
    column, _ = resolve_story(store, "https://opinion.example/w")
    summit, _ = resolve_story(store, SUMMIT)
    with serving(store, config) as base:
        pages = {path: fetch(base, path) for path in (*PAGES, f"/stories/{column}", f"/stories/{summit}")}
    seen = [when for page in pages.values() for when in page.xpath("//time/@datetime")]
    assert len(seen) >= 8 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", when) for when in seen), seen
    assert len(pages[f"/stories/{column}"].xpath("//time/@datetime")) == 1  # where it sorts: microseconds too
    assert article(pages["/feeds/world"], "On winter").xpath(".//time/@datetime") == ["2026-11-24T12:00:00+00:00"]


def test_archive_weeks_say_which_dates_they_hold(site: tuple[Config, Store]) -> None:
    """ "2026-W47" alone makes a reader count weeks; its pages and the lists of older weeks say
    its Monday-to-Sunday dates too."""
    config, store = site
    with serving(store, config) as base:
        front, world = fetch(base, "/"), fetch(base, "/feeds/world")
        archive = fetch(base, "/feeds/world/archive/2026-W47")
    weeks = ["2026-W47, 16–22 November 2026", "2026-W45, 2–8 November 2026"]
    assert [" ".join(a.itertext()) for a in world.xpath("//nav[@id='older']//a")] == weeks
    listed = front.xpath("//section[@id='world']//div[@class='archives']//a[not(contains(@href, '.atom'))]/text()")
    assert listed == weeks
    assert archive.xpath("string(//h1)") == "World: week 2026-W47, 16–22 November 2026"
    assert archive.xpath("string(//title)") == "World · week 2026-W47, 16–22 November 2026"


@pytest.mark.parametrize(
    ("label", "said"),
    [
        ("2022-W14", "2022-W14, 4–10 April 2022"),
        ("2026-W49", "2026-W49, 30 November – 6 December 2026"),
        ("2026-W01", "2026-W01, 29 December 2025 – 4 January 2026"),
        ("2026-W47-2", "2026-W47, part 2, 16–22 November 2026"),
    ],
)
def test_a_week_label_names_its_days(label: str, said: str) -> None:
    assert Page.of(label).dated_title == said
