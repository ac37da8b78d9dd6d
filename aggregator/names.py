"""Names and figures in a headline and lead: the words two independent reports of one event share
even when they share no phrase.

Extraction is deliberately cheap (no tagger, no model of its own): a *name* is a capitalised
word that does not merely start a sentence ("Ghafoor", "Karachi"), a word written in capitals
("NATO", "KARACHI") or capitalised inside ("TikTok", "iPhone"), or a capitalised
sentence-initial word that the same item also capitalises elsewhere, or, in a headline that
comes with no text, that is no plain word of the language (``extract``'s ``plain``); a *figure*
is a number, normalised so that "3,000", "3000" and "3 thousand" agree, with "%" kept ("4.5%"
and "4.5 per cent"). Everything is case-folded, a name's Latin letters lose their marks
("Chávez" and "Chavez" agree: ``unaccented``), a people's name stands for its country ("Turkish"
and "Turkey" agree: ``country_of``), and each is hashed to a 32-bit integer *term*. A wire
dateline ("KARACHI, May 2 (Reuters) -") is read apart: its place and date are names that do not
lead, and its agency credit is none.

Nothing here decides what is common: "President" or "2024" come out as terms like "Ghafoor"
does. How many recent items carry a term (``stories.TermStats``) decides whether it is evidence
and whether it is a lookup key, so the rules adapt to whatever the stream talks about instead of
relying on a word list. The weekdays and the pronoun "I", which grammar capitalises, are the
exceptions (``WEEKDAYS``, ``_PRONOUN``); the table of countries and their peoples says only
which two words name one place, never what is common.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from hashlib import blake2b
from importlib import resources

import Stemmer

from aggregator.langtags import primary_language
from aggregator.plaintext import WRITTEN_PLAIN

LEAD_CHARS = 700
"""Characters of text read after the headline: the lead carries the who, where and how many;
later paragraphs name background people and places that other reports need not share."""

LEADING_CHARS = 300
"""Characters of text after the headline whose names say which event an item reports (the
lead's first sentence or two): the names a report of the same event is expected to share.
Later ones are background, which independent reports pick differently."""

TITLE_CASE_LETTERS = 4
"""A headline in which every word of at least this many letters is capitalised is written in
Title Case ("Voice Readers Raise Thousands For Couple"): its capitals say nothing, so its words
count only if the lead capitalises them too. Short words ("of", "to", "for") are left lowercase
by most house styles, so they do not tell."""

ALONE_WORDS = 5
"""A headline whose text has fewer words than this comes alone, for ``extract``'s ``plain``: a
title-only feed's "Comments", "Read more", byline ("By AP") or lone link say nothing of the
subject, and ``extract`` takes no term from them (the lead signature reads such an item's
headline instead, ``cluster.signature``). The terms of a headline alone are then its own names
and figures, so those that are not its names (``Terms.headline``) are its figures."""

TOKENS = (
    r"(?P<number>\d+(?:[.,]\d+)*)(?:\s?(?P<unit>%|per\s?cent\b|percent\b|million\b|billion\b|trillion\b|"
    r"thousand\b|bn\b|m\b|k\b))?"
    r"|(?P<word>[^\W\d_]+(?:[.'’\-][^\W\d_]+)*\.?)"
    r"|(?P<stop>[.!?:;\"“”«»—–|()\n]|(?<=\s)-(?=\s))"
)
# No token starts with a space or a comma, the commonest characters between tokens: skipping
# them at once (possessively, never given back) spares the engine trying every alternative at
# each of them, and finds the same tokens. A newline is no space here but a stop: the text
# features read has its paragraphs on lines of their own (``parseworker.feature_text``).
_TOKEN = re.compile(rf"(?:[^\S\n]|,)*+(?:{TOKENS})")
_POSSESSIVE = re.compile(r"[’']s$")
_CASE_ENDING = re.compile(r"(?<=[^\W\d_]{3})[’'](?!(?:t|ll|re|ve|d|m)$)([^\W\d_]{1,4})$", re.IGNORECASE)
"""A case ending written after a name with an apostrophe, as Turkish writes them: "İstanbul'da",
"İstanbul'un", "Erdoğan'ın" and "Ankara'ya" name İstanbul, Erdoğan and Ankara, and two reports
of one event decline them differently. It is dropped where it is written in small letters, or
in capitals after a name in capitals ("İSTANBUL'DA"); never after fewer than three letters
("O'Neill", "d'Ivoire", "Ba'ath" keep theirs), nor where it is an English contraction's
("Don't", "They'll", "You're", "We've", "He'd", "I'm")."""
_SCALE = {"thousand": 10**3, "k": 10**3, "million": 10**6, "m": 10**6, "billion": 10**9, "bn": 10**9,
          "trillion": 10**12}  # fmt: skip
_ABBREVIATION = re.compile(r"^(?:[A-Za-z]\.){2,}$")  # U.S. U.K. U.N.
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
"""Words that are neither names nor rare words (``plain_words``), however written: a weekday
says when, not who or where, and the time between two reports is weighed on its own
(``stories.STORY_SPAN``); within that span most reports of any event name the same day. The
stream's counts tell so only in a busy window: in a quiet one (a few dozen feeds) "Tuesday"
looked as rare as a name, and linked two different events of one day ("Congo declares Ebola
outbreak" and "Uganda confirms Sudan virus case", both "on Monday"). They stay in the lead
signature, where two leads naming different days are told apart (``cluster.Signature``)."""
DATELINE = re.compile(r"^\s*[A-Z][^()\n]{0,60}?(?P<credit>\([A-Za-z]{2,12}\))\s*[-—–]{1,2}\s*")
"""A wire dateline opening a text: "FRANKFURT, April 11 (Reuters) - ", "ATHENS (AP) — ". It says
where and when a correspondent filed and for which agency, not what happened."""


NOUNS_CAPITALISED = frozenset({"de", "gsw", "lb", "nds"})
"""Languages (primary subtags) whose spelling capitalises every noun: German and its kin. In
them a capital says "noun", not "name": "Polizei", "Zeugen" and "Montagabend" are in every
police report, and read as names they linked a stabbing with a robbery of the same evening.
Their items are read for the names a capital cannot make (``extract``'s ``capitals``)."""

_CASELESS_LETTER = re.compile(
    "[\u0590-\u08ff\u0900-\u0dff\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1100-\u11ff"
    "\u1780-\u17ff\u3040-\u30ff\u3100-\u318f\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f"
    "\uac00-\ud7af\uf900-\ufaff\ufb1d-\ufdff\ufe70-\ufeff]"
)
"""A letter of a script that has no capitals: Hebrew, Arabic and their neighbours, the Indic
scripts, Thai, Lao, Tibetan, Myanmar, Khmer, Hangul, kana and the Han ideographs."""
_LETTER = re.compile(r"[^\W\d_]")


def capitals_mark_names(title: str, text: str, language: str | None = None) -> bool:
    """Whether a capital marks a name in this item: not where most of its letters belong to a
    script without capitals (a Chinese or Arabic report has none to read names from, only the
    Latin acronyms it quotes), nor in a language that capitalises every noun
    (``NOUNS_CAPITALISED``, from the item's declared ``language``: German news feeds declare
    theirs, and no small word list told German from English prose naming "von der Leyen")."""
    if language and primary_language(language) in NOUNS_CAPITALISED:
        return False
    sample = f"{title} {text[:LEAD_CHARS]}"
    caseless = len(_CASELESS_LETTER.findall(sample))
    return not caseless or 2 * caseless < len(_LETTER.findall(sample))


@dataclass(frozen=True)
class Terms:
    """An item's names and figures: readable forms (for explanations) and their hashes."""

    words: tuple[str, ...]
    leading: int | None = None
    """How many of ``words`` (the first ones) the headline and the lead's first
    ``LEADING_CHARS`` name: who and where the event is. None: all of them."""
    headline: int = 0
    """How many of ``words`` (the first ones) a headline that came alone names (with no text
    or fewer than ``ALONE_WORDS`` words of it: ``extract``); 0 for one with a text."""

    @property
    def keys(self) -> frozenset[int]:
        return frozenset(key for _, key in self._keyed)

    @property
    def leading_keys(self) -> frozenset[int]:
        """The hashes of the headline's and the lead's opening names (``leading``)."""
        return frozenset(key for _, key in self._keyed[: self.leading])

    @property
    def headline_keys(self) -> frozenset[int]:
        """The hashes of a lone headline's names (``headline``), its figures left out: a copy
        that updates a figure ("death toll rises to 20") still tells of the same subject."""
        return frozenset(key for word, key in self._keyed[: self.headline] if not is_figure(word))

    def named(self, keys: set[int] | frozenset[int]) -> list[str]:
        """The readable terms among ``keys``, in the order they appear."""
        return [word for word, key in self._keyed if key in keys]

    @cached_property
    def _keyed(self) -> tuple[tuple[str, int], ...]:
        # Hashed once: one explanation names the shared terms of the story joined and of
        # each near miss.
        return tuple((word, term_key(word)) for word in self.words)


def extract(title: str, text: str, plain: Callable[[str], bool] | None = None, capitals: bool = True) -> Terms:
    """The names and figures of an item's headline and the start of its text, those of the
    headline and the lead's first ``LEADING_CHARS`` first (``Terms.leading`` counts them).

    ``plain``: whether a word (case-folded) is a plain word of the language. With it, a
    headline that comes with no text (or fewer than ``ALONE_WORDS`` words of it) also counts
    the capitalised words its capitals say nothing about (the one opening it or following a
    colon, every one of a Title Case headline) where they are not plain words ("Kalmaria
    central bank raises key rate", "Putin Rival Takes Message to East Ukraine"). Such an item
    has no text to capitalise its subject in again, and without it a title-only feed's items
    name almost nothing.

    ``capitals``: whether a capital marks a name in this item (``capitals_mark_names``). Where
    it does not, only the words that are names however they stand are read (in capitals, or
    capitalised inside: "NATO", "iPhone")."""
    title_tokens = _TOKEN.findall(unicodedata.normalize("NFKC", title).replace("\u00ad", ""))
    lead = unicodedata.normalize("NFKC", text[:LEAD_CHARS]).replace("\u00ad", "")
    matches = list(_TOKEN.finditer(lead))
    lead_tokens = [m.groups() for m in matches]
    # The first token that ends past the mark is the first after the opening: a name or a
    # figure ("$3.41 billion") is never cut in two.
    opening = next((n for n, m in enumerate(matches) if m.end() > LEADING_CHARS), len(matches))
    # A dateline's place and date are background, not the event's (an Evia fire filed from
    # ATHENS, a bank's results from NEW YORK): its names come after the opening's. Its agency
    # credit names the publisher and is no term at all.
    dateline = DATELINE.match(lead)
    filed = sum(m.end() <= dateline.end() for m in matches) if dateline else 0
    credit = next((n for n, m in enumerate(matches) if m.end() > dateline.start("credit")), 0) if dateline else 0
    background: dict[str, None] = {}
    long_words = [raw for _n, _u, raw, _s in title_tokens if len(raw) >= TITLE_CASE_LETTERS]
    title_case = len(long_words) >= 2 and all(raw[0].isupper() for raw in long_words)
    # Words are counted between spaces: a text in a script written without them has few.
    alone = capitals and sum(1 for _number, _unit, raw, _stop in lead_tokens if raw) < ALONE_WORDS
    found: dict[str, None] = {}
    leading: int | None = None
    headline = 0
    # A sentence-initial or Title-Case word counts only where the same item capitalises it
    # elsewhere, and there it has already been found.
    for tokens, capitals_tell in ((title_tokens, capitals and not title_case), (lead_tokens, capitals)):
        # A headline alone is read with ``plain`` where its capitals say nothing.
        unsure = plain if tokens is title_tokens and alone and capitals else None
        initial = True
        if tokens is lead_tokens and alone:
            headline = len(found)
            break  # its few words name no one the item is about ("By AP", "3 comments")
        for n, (number, unit, raw, stop) in enumerate(tokens):
            into = found
            if tokens is lead_tokens:
                if n == opening:
                    leading = len(found)
                    found.update((term, None) for term in background if term not in found)
                if n < filed:
                    into = background if n < credit else {}
            if stop:
                initial = True
            elif number:
                into.setdefault(_figure(number, unit))
                initial = False
            elif raw.islower():  # no name, and not remembered: only whether it ends a sentence counts
                initial = raw[-1] == "." and len(raw) > 3 and not _ABBREVIATION.match(raw)
            else:
                word, acronym, upper, ends = _WORDS.get(raw) or _word(raw)
                told = capitals_tell and not initial
                if acronym or (upper and (told or (unsure is not None and not unsure(word)))):
                    into.setdefault(word)
                initial = ends
    if leading is None:
        leading = len(found)
        found.update((term, None) for term in background if term not in found)
    return Terms(tuple(found), leading, headline)


WordFacts = tuple[str, bool, bool, bool]
"""What ``extract`` needs of a word as written: its term (folded), whether it is a name wherever
it stands (in capitals, or capitalised inside: ``_inner_capital``), whether it starts with a
capital, and whether it ends the sentence. A weekday and the pronoun "I" are in neither form:
they are never names (``WEEKDAYS``, ``_PRONOUN``)."""

_PRONOUN = re.compile(r"^i(?:'(?:m|d|ll|ve))?$")
"""The pronoun "I" and its contractions, folded: English capitalises it wherever it stands, so
its capital says nothing. Taken for a name, every first-person lead or quoted speaker ("I
won't go overboard", said the minister) shared a "name" with every other, which a quiet
stream weighs as rare."""

_WORDS: dict[str, WordFacts] = {}
WORDS_REMEMBERED = 10_000
"""Distinct words as written that a process keeps the facts of (``_word``), forgotten all at
once when full: news reuses its words, and working them out again was most of ``extract``.
Words starting with a small letter, most of any text, are never names and are not kept."""


def words_remembered() -> tuple[int, int]:
    """Words this process keeps the facts of, and the most it keeps (``WORDS_REMEMBERED``):
    ``bench/soak.py`` prints them beside the memory, to tell their filling from a leak."""
    return len(_WORDS), WORDS_REMEMBERED


def _word(raw: str) -> WordFacts:
    word = country_of(_fold(raw))
    if not word:
        facts = ("", False, False, raw.endswith(".") and not _ABBREVIATION.match(raw))
    elif word in WEEKDAYS or _PRONOUN.match(word):  # no name, however written
        facts = (word, False, False, raw.endswith("."))
    else:
        # A word run together with letters of a script without capitals ("年GDP增长目标") is
        # no name, whatever its Latin letters say: where it starts and ends is not known.
        acronym = not _CASELESS_LETTER.search(raw) and (
            (len(word) >= 2 and raw.replace(".", "").isupper()) or _inner_capital(raw)
        )
        # A word ending with a full stop ends the sentence, unless it is an abbreviation.
        ends = raw.endswith(".") and not _ABBREVIATION.match(raw) and len(raw) > 3
        facts = (word, acronym, raw[0].isupper(), ends)
    if len(_WORDS) >= WORDS_REMEMBERED:
        _WORDS.clear()
    _WORDS[raw] = facts
    return facts


def _inner_capital(raw: str) -> bool:
    """Whether a word has a capital right after a small letter ("BondiBlock", "iPhone",
    "McLeod", "TikTok"): a name's spelling, never a plain word's, so it is a name where it
    starts a sentence or a headline too, where a capital alone says nothing. Not after a
    hyphen or an apostrophe ("Pro-Russian", "O'Brien"), which a plain word may capitalise."""
    return any(a.islower() and b.isupper() for a, b in itertools.pairwise(raw))


PLAIN_WORD_LETTERS = 5
"""Shortest word ``plain_words`` reads: shorter ones ("said", "were", "town") are the language's
glue, and a rare one that short is mostly a name or an abbreviation, which ``extract`` reads."""

_PLAIN_WORD = re.compile(rf"[^\W\d_]{{{PLAIN_WORD_LETTERS},}}")
_stemmer = Stemmer.Stemmer("english")


def plain_words(title: str, text: str, terms: Terms) -> list[str]:
    """The words of the headline and lead that are not names (``terms``), case-folded, each
    once. Whether one is rare enough to be evidence is ``stories.rare_words``'s business."""
    lead = unicodedata.normalize("NFKC", f"{title}\n{text[:LEAD_CHARS]}")
    named = set(terms.words).union(WEEKDAYS)  # a weekday: no evidence either way (``WEEKDAYS``)
    folded = dict.fromkeys(raw.casefold() for raw in dict.fromkeys(_PLAIN_WORD.findall(lead)))
    # A name's term has lost its marks (``unaccented``) and a people's name is its country's
    # (``country_of``); the plain words keep theirs, written in the outlet's own language as its
    # readers spell them, and the model's tokenizer weighs them so.
    return [word for word in folded if country_of(unaccented(word)) not in named]


def stem(word: str) -> str:
    """A plain word's Snowball stem, marked as one ("~slap"), so that "slaps" and "slapping" in
    two reports of one incident agree and no stem is ever taken for a name."""
    return "~" + str(_stemmer.stemWord(word))


def figures(words: Iterable[str]) -> frozenset[int]:
    """The keys of the terms among ``words`` that are figures (``extract`` writes them as
    digits, with "%" kept)."""
    return frozenset(term_key(word) for word in words if is_figure(word))


def is_figure(word: str) -> bool:
    """Whether a term (as ``extract`` writes it) is a figure: those are written as digits."""
    return word[:1].isdigit()


TERM_KEYS_KEPT = 8192
"""Terms whose hash a process keeps (``term_key``): the names of a day's news, about a
megabyte."""


@lru_cache(maxsize=TERM_KEYS_KEPT)
def term_key(word: str) -> int:
    """A term's 32-bit hash: stable across processes and releases (stored in the database).
    The same names recur item after item (extraction in the parse workers, each explanation
    and each poll's figures in the writer), so the latest are kept rather than hashed again."""
    return int.from_bytes(blake2b(word.encode("utf-8"), digest_size=4).digest(), "big")


def term_keys_kept() -> tuple[int, int]:
    """Term hashes this process keeps, and the most it keeps (``TERM_KEYS_KEPT``), for
    ``bench/soak.py``'s report of bounded caches."""
    return term_key.cache_info().currsize, TERM_KEYS_KEPT


def _fold(raw: str) -> str:
    word = _POSSESSIVE.sub("", raw.rstrip("."))
    ending = _CASE_ENDING.search(word)
    if ending and (ending.group(1).islower() or word.isupper()):
        word = word[: ending.start()]
    if _ABBREVIATION.match(raw):
        word = raw.replace(".", "")
    return unaccented(word.casefold().replace("’", "'"))


def country_of(word: str) -> str:
    """The country a people's or adjectival name stands for ("turkish" is "turkey", "israelis"
    "israel", "south korean" names "korea"), else ``word`` itself (case-folded, unaccented).
    Reports of one event name its place both ways ("Ten killed in Turkish avalanche", "Ten
    climbers killed in Turkey avalanche"), and as two terms they shared nothing."""
    return _countries().get(word, word)


@cache
def _countries() -> dict[str, str]:
    """People's names (and their plurals) to countries' names, from the ``countryinfo``
    package's data: one word each, as ``extract`` reads names one word at a time. Where a
    country's name and its people's differ only in their last word (South Korea and "South
    Korean"), the last words are paired ("korean": "korea"). A people's name shared by several
    countries stands for the most populous one's, and stays as it is where that one's name has
    it ("Czech Republic", "Dominican Republic").

    Read a file at a time, keeping three fields of each: the package's own reader keeps every
    country's borders, provinces and outline for the process's life, 5 MB in each parse worker."""
    table: dict[str, tuple[str, int]] = {}
    for name, people, population in _country_files():
        words = [_fold(word) for word in name.split()]
        for demonym in people.split(","):
            said = [_fold(word) for word in demonym.split()]
            if not said or (said[-1] not in words and said[:-1] != words[:-1]):
                continue
            # A people's name that is a word of its country's name names it already.
            country_word = said[-1] if said[-1] in words else words[-1]
            plural = () if said[-1].endswith(("s", "sh", "ch", "ese")) else (said[-1] + "s",)
            for form in (said[-1], *plural):
                if form not in table or table[form][1] < population:
                    table[form] = (country_word, population)
    return {word: country for word, (country, _) in table.items() if word != country}


def _country_files() -> Iterator[tuple[str, str, int]]:
    """Each country's and territory's name, its people's name(s) and its population, as the
    ``countryinfo`` package ships them (one JSON file each)."""
    package = resources.files("countryinfo")
    for folder in ("data", "data_no_iso"):
        for file in sorted(package.joinpath(folder).iterdir(), key=lambda f: f.name):
            if file.name.endswith(".json"):
                info = json.loads(file.read_bytes())
                if info.get("name"):
                    yield str(info["name"]), str(info.get("demonym") or ""), int(info.get("population") or 0)


_UNMARKED_LETTERS = str.maketrans(WRITTEN_PLAIN)


def unaccented(word: str) -> str:
    """A case-folded word with the marks on its Latin letters dropped: "chávez", "erdoğan" and
    "são" become "chavez", "erdogan" and "sao". Outlets write one name with its marks and
    without them (an agency's wire drops them, a local outlet keeps them), and two reports of
    one event must name it alike. Greek letters lose theirs too: Greek writes no tonos on
    capitals, so a headline in capitals names "ΑΘΗΝΑ" where the lead names "Αθήνα". So does
    Russian "ё", which print mostly writes "е" (``UNPRINTED_MARKS``: "Королёв" is "королев").
    Marks on other scripts' letters stay: there they tell different letters apart (Cyrillic
    "й" is no "и" with a mark)."""
    if word.isascii():
        return word
    kept: list[str] = []
    for char in unicodedata.normalize("NFKD", word.translate(_UNMARKED_LETTERS)):
        if not (unicodedata.combining(char) and kept and (kept[-1].isascii() or "\u0370" <= kept[-1] <= "\u03ff")):
            kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept))


def _figure(number: str, unit: str | None) -> str:
    # "3,000" and "3.000" are both thousands only when the group has three digits; a decimal
    # comma ("4,5") is read as a decimal point.
    thousands = re.fullmatch(r"\d{1,3}(?:,\d{3})+", number)
    number = number.replace(",", "" if thousands else ".")
    unit = (unit or "").casefold().replace(" ", "")
    if unit in ("%", "percent"):
        return f"{_plain(number)}%"
    scale = _SCALE.get(unit)
    if scale is not None:
        try:
            return _plain(str(round(float(number) * scale)))
        except ValueError:
            return number
    return _plain(number)


def _plain(number: str) -> str:
    if "." in number and number.count(".") == 1:
        number = number.rstrip("0").rstrip(".")
    return number
