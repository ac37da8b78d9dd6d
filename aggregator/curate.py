"""Which stories go into an output, led by which item, in what order. Pure.

``select`` takes the output's rules and the candidate items (already limited to the
output's sources, ``source_scope``, and age window by the store) and returns ``OutputEntry``s:

* include rules: when any are given, an item must match at least one; exclude rules:
  an item matching any is out. Keywords match whole words in any case, with or without the
  marks on Latin and Greek letters (``folded``; a side of a keyword in a script written without
  spaces, Chinese, Japanese, Thai..., needs no boundary: ``_keyword``); patterns are regular
  expressions (searched, case-insensitive, in the text as it is);
* one entry per story: the earliest-dated of the items found with the story's first leads (the
  original report, not whichever feed answered first), and a later one never does
  (``in_lead_order``); the others become "also reported by";
* a per-source cap so one prolific outlet cannot fill the feed;
* an undated cap: entries led by an undated item sort by where normalize placed them (their
  position in the feed, their first-seen time), which for a feed with no dates at all is the
  moment it was first polled; beyond ``undated_cap`` per source they follow every dated entry,
  and so does every entry led by an undated item of an unknown age (``Candidate.age_unknown``:
  what such a feed held when it was first read, which may be years old);
* an editor's pins (always shown, on top, rules bypassed) and blocks (never shown);
* ``order: newest`` — newest first — or ``order: coverage`` — stories carried by more outlets
  first, ties newest first; at most ``max_entries``.

``curate`` also returns a ``Verdict`` for every candidate saying why it is in or out,
which is what ``aggregator items`` prints.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Protocol, TypeVar

from aggregator.config import Output, Rule
from aggregator.langtags import primary_language
from aggregator.plaintext import WRITTEN_PLAIN, html_to_text
from aggregator.records import Candidate, Editorial, OutputEntry, SourceLabel


@dataclass(frozen=True)
class Verdict:
    """Why a candidate is in or out of an output (for ``aggregator items`` and tests)."""

    candidate: Candidate
    included: bool
    reason: str


NO_EDITORIAL = Editorial()  # nothing pinned, nothing blocked


@dataclass(frozen=True)
class Curation:
    entries: list[OutputEntry]
    verdicts: list[Verdict]


def draws_from(output: Output, source_name: str, source_tags: Iterable[str]) -> bool:
    """Whether ``output`` takes items from a source: named in its ``sources``, carrying one of its
    ``tags``, or any source at all when it names neither."""
    if draws_from_every_source(output):
        return True
    return source_name in output.sources or not set(output.tags).isdisjoint(source_tags)


def draws_from_every_source(output: Output) -> bool:
    """True for an output that names no source and no tag: storage then needs no id list."""
    return not output.sources and not output.tags


def source_scope(output: Output, sources: Iterable[SourceLabel]) -> frozenset[int]:
    """The ids of the stored sources ``output`` draws from (``draws_from`` decides)."""
    return frozenset(s.id for s in sources if draws_from(output, s.name, s.tags))


TEXT_FIELDS = ("summary", "content")  # the rule fields read from an item's plain text (``_field``)


def reads_text(output: Output) -> bool:
    """Whether any of the output's rules looks at an item's plain text: only then do its
    candidates need it (rendering never does), and an archive week's 5,000 texts weigh ~10 MB."""
    return any(field in TEXT_FIELDS for rule in (*output.include, *output.exclude) for field in rule.fields)


def needs_dated_candidates(candidates: Sequence[Candidate]) -> bool:
    """Whether the newest items read are mostly undated, so the dated news must be read as well.

    Undated items sort near their first-seen time, so a few feeds without dates can fill the
    newest ``limit`` items on their own: without the dated news beside them, the undated cap
    would have nothing to put above them.
    """
    return sum(not c.dated for c in candidates) * 2 > len(candidates)


def needs_more_candidates(output: Output, curation: Curation) -> bool:
    """Whether the candidates read so far leave ``output`` short of ``max_entries``, so older
    ones must be read too: its rules may refuse all of the newest items (a keyword, a source
    cap among a prolific outlet's items), and what it shows must not depend on how many."""
    return len(curation.entries) < output.max_entries


def select(output: Output, candidates: Iterable[Candidate], editorial: Editorial = NO_EDITORIAL) -> list[OutputEntry]:
    return curate(output, candidates, editorial).entries


def curate(output: Output, candidates: Iterable[Candidate], editorial: Editorial = NO_EDITORIAL) -> Curation:
    """The output's entries, and a verdict with its reason for every candidate item."""
    verdicts: dict[int, Verdict] = {}
    included: list[Candidate] = []
    for candidate in candidates:
        if candidate.story_id in editorial.blocked:
            verdicts[candidate.item_id] = Verdict(candidate, False, "blocked by an editor")
            continue
        reason = None if candidate.story_id in editorial.pinned else _rule_verdict(output, candidate)
        if reason is not None:
            verdicts[candidate.item_id] = Verdict(candidate, False, reason)
        else:
            included.append(candidate)
    entries = _group(included)
    if output.order == "coverage":
        entries.sort(key=lambda e: e.outlets, reverse=True)  # stable: ties stay newest first
    pin_rank = {story: rank for rank, story in enumerate(editorial.pinned)}
    pinned = sorted((e for e in entries if e.lead.story_id in pin_rank), key=lambda e: pin_rank[e.lead.story_id])
    rest = [e for e in entries if e.lead.story_id not in pin_rank]
    if output.per_source_cap:
        per_source: dict[str, int] = {}
        capped = []
        for entry in rest:
            used = per_source.get(entry.lead.source_name, 0)
            if used < output.per_source_cap:
                per_source[entry.lead.source_name] = used + 1
                capped.append(entry)
            else:
                _explain_story(
                    verdicts, entry, f"over the per-source cap ({output.per_source_cap}) of its lead's source"
                )
        rest = capped
    rest, late = _undated_last(rest, output.undated_cap)
    ordered = pinned + rest + late
    demoted = {e.lead.story_id for e in late}
    for position, entry in enumerate(ordered, start=1):
        if position > output.max_entries:
            _explain_story(verdicts, entry, f"beyond max_entries ({output.max_entries})")
            continue
        label = "pinned" if entry.lead.story_id in pin_rank else "included"
        if entry.lead.story_id in demoted:
            label += (
                " after the dated entries (undated, in its feed's first fetch: its age is unknown)"
                if entry.lead.age_unknown
                else f" after the dated entries (undated, over the undated cap of {output.undated_cap})"
            )
        verdicts[entry.lead.item_id] = Verdict(entry.lead, True, f"{label}, entry {position}")
        for other in entry.also:
            verdicts[other.item_id] = Verdict(
                other, True, f"also reported: same story as entry {position}, led by {entry.lead.source_name}"
            )
    return Curation(ordered[: output.max_entries], list(verdicts.values()))


def _undated_last(entries: list[OutputEntry], cap: int) -> tuple[list[OutputEntry], list[OutputEntry]]:
    """Split off, in order, the entries led by an undated item of an unknown age, and each
    source's other undated entries beyond the first ``cap``."""
    kept: list[OutputEntry] = []
    late: list[OutputEntry] = []
    undated: dict[str, int] = {}
    for entry in entries:
        over = entry.lead.age_unknown
        if not over and not entry.lead.dated:
            used = undated.get(entry.lead.source_name, 0)
            undated[entry.lead.source_name] = used + 1
            over = used >= cap
        (late if over else kept).append(entry)
    return kept, late


def _explain_story(verdicts: dict[int, Verdict], entry: OutputEntry, reason: str) -> None:
    for member in (entry.lead, *entry.also):
        verdicts[member.item_id] = Verdict(member, False, reason)


def _group(included: Sequence[Candidate]) -> list[OutputEntry]:
    """One entry per story, led as ``in_lead_order`` says, newest stories first."""
    stories: dict[int, list[Candidate]] = {}
    for candidate in included:
        stories.setdefault(candidate.story_id, []).append(candidate)
    entries = []
    for members in stories.values():
        lead, *rest = in_lead_order(members, lambda c: (c.first_seen_at, c.published_at, c.item_id))
        also = tuple(rest)
        entries.append(OutputEntry(lead.story_uid, lead, also, max(m.updated_at for m in members)))
    # Newest first; a tie goes to the lower item id (stored first: higher up in its document).
    entries.sort(key=lambda e: e.lead.item_id)
    entries.sort(key=lambda e: e.lead.published_at, reverse=True)
    return entries


FOUND_TOGETHER = timedelta(minutes=5)
"""Items first seen within this long of their story's first are taken as found together (see
``in_lead_order``): one round of polls commits its fetches over seconds to minutes, in whatever
order the feeds answered, and a first ingest reads every feed's backlog in one round."""

Member = TypeVar("Member")


def in_lead_order(members: Iterable[Member], facts: Callable[[Member], tuple[datetime, datetime, int]]) -> list[Member]:
    """A story's members in line to lead its entry, the lead first; ``facts`` gives a member's
    (first seen, sort time, item id). Of the items found together with the story's first
    (``FOUND_TOGETHER``), the earliest dated leads: the original report rather than whichever
    feed answered first (a first ingest finds a backlog's reports in that order). An item found
    later never leads: an outlet's report found with an earlier date must not retitle an entry
    readers have had for longer than that. Ties go to the item stored first; the members found
    later follow in the order they were found. The story page and ``aggregator story`` take the
    same lead, so a reader who follows an entry's "full coverage" link lands under the headline
    they clicked."""
    listed = [(facts(member), member) for member in members]
    if not listed:
        return []
    found_until = min(seen for (seen, _, _), _ in listed) + FOUND_TOGETHER

    def place(known: tuple[datetime, datetime, int]) -> tuple[bool, datetime, datetime, int]:
        seen, dated, item_id = known
        later = seen > found_until
        return later, seen if later else dated, dated, item_id

    return [member for _, member in sorted(listed, key=lambda pair: place(pair[0]))]


class StoredMember(Protocol):
    """A story member as the story's page and ``aggregator story`` read it from the store."""

    @property
    def first_seen_at(self) -> datetime: ...
    @property
    def sort_at(self) -> datetime: ...
    @property
    def item_id(self) -> int: ...


Stored = TypeVar("Stored", bound=StoredMember)


def lead_of(members: Iterable[Stored]) -> Stored | None:
    """The member that leads the story's entry in an output carrying all of them
    (``in_lead_order`` on its stored times), None for no members."""
    return next(iter(in_lead_order(members, lambda m: (m.first_seen_at, m.sort_at, m.item_id))), None)


def _rule_verdict(output: Output, candidate: Candidate) -> str | None:
    if output.language and candidate.language and not _same_language(output.language, candidate.language):
        return f"excluded: language {candidate.language} is not {output.language}"
    fields = _RuleFields(candidate)
    for index, rule in enumerate(output.exclude):
        if fields.match(rule):
            return f"excluded by rule exclude[{index}]"
    if output.include and not any(fields.match(rule) for rule in output.include):
        return "excluded: matches no include rule"
    return None


def matches(rule: Rule, candidate: Candidate) -> bool:
    """Whether ``rule`` matches ``candidate``: a keyword anywhere in the folded text of its
    fields (``folded``, ``_keyword``), a pattern searched in the text as it is."""
    return _RuleFields(candidate).match(rule)


class _RuleFields:
    """A candidate's fields as its output's rules read them, each read and folded once however
    many rules look at it: rules run over every candidate at every publish, and the summary of
    an item with content is rendered from its HTML."""

    def __init__(self, candidate: Candidate) -> None:
        self._candidate = candidate
        self._read: dict[str, str] = {}
        self._folded: dict[str, str] = {}

    def match(self, rule: Rule) -> bool:
        # A pattern says exactly what it matches, so it reads the text unfolded: "^STRASSE$" or
        # "caf[eé]" written for the text as it is would otherwise change meaning.
        if rule.pattern is not None:
            haystack = "\n".join(self._text(name) for name in rule.fields)
            return _compiled(rule.pattern).search(haystack) is not None
        haystack = "\n".join(self._folded_text(name) for name in rule.fields)
        return any(_keyword(word).search(haystack) for word in rule.keywords or ())

    def _text(self, name: str) -> str:
        if name not in self._read:
            self._read[name] = _field(self._candidate, name)
        return self._read[name]

    def _folded_text(self, name: str) -> str:
        text = self._text(name)  # keyed by the text: an item's summary is often its content
        if text not in self._folded:
            self._folded[text] = folded(text)
        return self._folded[text]


def _field(candidate: Candidate, name: str) -> str:
    if name == "summary":
        # With content, ``text`` is the content's: the summary is read from its HTML, as readers see it.
        return candidate.text if not candidate.content_html else html_to_text(candidate.summary_html)
    if name == "content":
        return candidate.text
    if name == "categories":
        return "\n".join(candidate.categories)
    value = getattr(candidate, name)
    return value or ""


def _same_language(wanted: str, actual: str) -> bool:
    """Whether two language tags name one language, whatever region or script follows it. RSS
    feeds write a POSIX locale ("fr_FR") in <language> as often as a BCP 47 tag ("fr-FR")."""
    return primary_language(actual) == primary_language(wanted)


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# Scripts written without spaces between words: Thai, Lao, Tibetan, Myanmar, Khmer, the Tai
# scripts, Balinese, Javanese, and Chinese and Japanese (Han, kana, their marks and radicals).
# Hangul is not among them: Korean puts spaces between words.
UNSPACED_SCRIPTS = (
    "\u0e00-\u0fff\u1000-\u109f\u1780-\u17ff\u1950-\u19ff\u1a20-\u1aaf\u1b00-\u1b7f"
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3031-\u3035\u303b\u303c\u3040-\u312f\u3190-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\ua980-\ua9ff\uaa60-\uaadf\uf900-\ufaff\uff66-\uff9f"
    "\U0001b000-\U0001b16f\U00020000-\U0003ffff"
)
_UNSPACED = re.compile(f"[{UNSPACED_SCRIPTS}]")
# A letter or digit of a script that does put spaces between words: a keyword's edge in such a
# script must not touch one ("cat" is no word of "category"), though it may touch a character
# of an unspaced script, where its word ends just as well ("iPhone" in "新型iPhoneを発表").
_SPACED_WORD_CHARACTER = f"[^\\W{UNSPACED_SCRIPTS}]"
# Korean writes its case particles onto the word they follow ("서울에서", "서울의", "정부가"): a
# keyword ending in Hangul may be followed by one, longest first, before its word ends. A
# compound it begins ("서울시장", Seoul's mayor) is another word, as it was.
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
KOREAN_PARTICLES = (
    "에서는", "에게서", "으로는", "에서", "에게", "으로", "까지", "부터", "처럼",
    "보다", "께서", "한테", "과의", "와의", "은", "는", "이", "가",
    "을", "를", "의", "에", "로", "와", "과", "도", "만",
)  # fmt: skip
_PARTICLE = f"(?:{'|'.join(KOREAN_PARTICLES)})?"


@cache
def _keyword(word: str) -> re.Pattern[str]:
    """A keyword as a whole word, to search for in ``folded`` text. A side of it written in a
    script without spaces needs no boundary there: a Chinese, Japanese or Thai word stands
    inside a run of letters ("東京で地震 震度5弱"), where no whole-word test could find it. A
    Korean one may end in a case particle (``KOREAN_PARTICLES``: "서울" in "서울에서 지진")."""
    literal = re.escape(folded(word))
    # The test before the word is made after it (a fixed-width lookbehind over the word too):
    # a pattern that opens with its literal is searched for as one, 20 times faster.
    before = "" if _UNSPACED.match(word[:1]) else f"(?<!{_SPACED_WORD_CHARACTER}{literal})"
    after = "" if _UNSPACED.match(word[-1:]) else f"(?!{_SPACED_WORD_CHARACTER})"
    if _HANGUL.match(word[-1:]):
        after = f"{_PARTICLE}{after}"
    return re.compile(f"{literal}{before}{after}")


_UNMARKED_LETTERS = str.maketrans(WRITTEN_PLAIN)
# translate looks each character up: 20 times dearer than searching for one of them first
_ANY_UNMARKED_LETTER = re.compile(f"[{''.join(WRITTEN_PLAIN)}]")
# The marks on a Latin (in decomposed, case-folded text: ASCII) or Greek letter.
_LATIN_OR_GREEK_MARKS = re.compile("(?<=[\x00-\x7f\u0370-\u03ff])[\u0300-\u036f]+")
# Latin letters with a mark, Greek letters and combining marks: only a text with one of these
# is decomposed and composed again, which for Japanese text (its kana decompose) costs ten times
# what all the rest of the folding does.
_MAY_CARRY_MARKS = re.compile("[\u00c0-\u024f\u0300-\u03ff\u1e00-\u1fff]")


def folded(text: str) -> str:
    """``text`` as keywords are matched in it (the keyword folded too): compatibility forms
    composed (NFKC: full-width "ＮＨＫ" is "NHK", half-width kana full), case folded fully
    (``re.IGNORECASE`` maps one letter to one: "Straße" never met "STRASSE"), and the marks
    on Latin and Greek letters dropped. Wires drop accents ("Sanchez" for "Sánchez", as story
    matching's ``names.unaccented`` does) and Greek capitals drop the tonos ("ΣΕΙΣΜΟΣ" for
    "σεισμός"). Turkish capital "İ" folds to "i" and a dot, which goes with the marks, and
    dotless "ı" is written "i": "İSTANBUL" is "istanbul", "Diyarbakır" "diyarbakir". Russian
    "ё" is "е", as Russian print mostly writes it (``UNPRINTED_MARKS``). Marks on other
    scripts' letters stay: they tell letters apart (Cyrillic "й" is no "и", Japanese "ガ" no
    "カ"). Spanish "año" does become "ano": the price of meeting the wires' spelling."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    if _ANY_UNMARKED_LETTER.search(text):
        text = text.translate(_UNMARKED_LETTERS)
    if not _MAY_CARRY_MARKS.search(text):
        return text
    return unicodedata.normalize("NFC", _LATIN_OR_GREEK_MARKS.sub("", unicodedata.normalize("NFD", text)))
