"""Near-duplicate stories across sources: is this new item a copy of a story we already hold?

``dedupe`` links items that share a canonical URL. This module links the rest: a wire
story (or any syndicated copy) republished by other outlets under a new headline, with
its dateline stripped, its body trimmed or lightly edited (US/UK spelling, "said on
Tuesday" → "said Tuesday") and tracking links of its own. It is pure: it sees plain
text and stored signatures, never the database.

How it decides (thresholds are named constants below, chosen on ``tests/data/stories``;
``bench/dedup.py`` prints the figures on that set, a held-out set and a blind one):

* an item's *lead* is the first ``LEAD_WORDS`` words of its text, minus the dateline
  ("SAPPORO, Japan (MP) —") and feed boilerplate ("The post … appeared first on …");
* its words are folded (case, Unicode, numbers such as ``3,000``/``4.00``, common UK/US
  spellings, plurals), stopwords dropped, and cut into overlapping 3-word *phrases*;
  the signature keeps a 32-bit hash of each phrase (about 30 of them), one hash of the
  whole headline, the weekdays the lead names and hashes of its figures;
* two items are the same story when a large enough share of the *shorter* lead's
  phrases also occur in the other (overlap coefficient, not Jaccard: a copy trimmed to
  its first sentence is still a copy), or when they carry the same specific headline
  within ``HEADLINE_WINDOW`` (a republisher that kept the wire headline but wrote its
  own teaser, or a title-only feed);
* different stories about the same actors (the aftershock a day after the quake, the
  currency move after the rate decision) share names and stock phrases but far fewer
  3-word phrases: that margin is what ``MIN_OVERLAP`` sits in. Templated stories share
  more (the market report, the race stage, the bank's results), so two things a copy
  keeps and a look-alike does not are checked too: its day (leads naming different
  weekdays, none in common, are different days' news) and its figures (when most of
  them disagree the overlap must reach ``MIN_OVERLAP_NUMBERS_DIFFER``; not a veto,
  because an updated wire copy with a new death toll keeps most of its words);
* independent rewrites of the same event (another wire's own reporting) share almost no
  phrases with the original and are *not* linked: telling them from a different story
  about the same actors would cost more precision than it gains;
* only items published within ``DEFAULT_WINDOW`` of each other are compared.

Storage keeps ``Signature.dumps()`` per item and indexes ``band_keys()`` so candidates are
found with an indexed equality query rather than a scan: two items that pass
``same_story`` share at least one key with high probability (a bottom-k sample of their
phrase hashes, plus the headline hash).
"""

from __future__ import annotations

import base64
import re
import struct
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from hashlib import blake2b

from aggregator.names import DATELINE, WEEKDAYS

SIGNATURE_VERSION = "c1"
"""Prefix of ``Signature.dumps()``; bump it whenever tokenizing or hashing changes, so
signatures computed by older code are recognised (``loads`` refuses them) and recomputed."""

LEAD_WORDS = 60
"""Words of text that make an item's lead: enough for the first two sentences of a wire
story, which are what republishers keep when they trim."""

SHINGLE_WORDS = 3
"""Words per phrase. 2-word phrases let templated stories (Tuesday's and Wednesday's market
report) overlap as much as real copies; 4-word phrases lose edited copies."""

MIN_OVERLAP = 0.25
"""Share of the shorter lead's phrases that must occur in the other lead. On the evaluation
set hard negatives reach 0.21 at most and copies other than full rewrites start at 0.27."""

MIN_OVERLAP_NUMBERS_DIFFER = 0.4
"""The overlap needed when both leads carry at least two figures and fewer than half of the
smaller set agree. Look-alikes with differing figures reach 0.25 on the evaluation set; a
copy trimmed to other figures sits at 0.46, an update that changes three figures near 0.6."""

MIN_SHARED = 4
"""Phrases two leads must share whatever their length: below that an overlap is chance."""

MIN_DENOMINATOR = 10
"""The overlap of a very short lead is computed as if it had this many phrases, so a
two-line item cannot match on two common phrases."""

HEADLINE_MIN_WORDS = 5
"""A headline needs this many content words to count as evidence on its own: "Live updates"
or "Stocks rise" are recurring labels, not stories."""

HEADLINE_WINDOW = timedelta(hours=12)
"""Same-headline evidence holds only this close in time: a republisher that keeps the wire
headline does so within hours, while a recurring headline ("Ukraine war live: …") comes
back a day later over a different story."""

DEFAULT_WINDOW = timedelta(hours=48)
"""Items further apart than this are never the same story: a follow-up days later is news
of its own, and the window bounds the candidates storage must load."""

KEY_COUNT = 10
"""Phrase hashes per item used as lookup keys (the smallest ones: a bottom-k sample). Two
leads where one is a quarter of the other's length still share a key ~95% of the time."""

HEADLINE_KEY = 1 << 32
"""Added to the headline hash in ``band_keys``. Phrase and headline hashes are 32-bit, so a
headline key never equals a phrase key."""

_STOPWORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are",
        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can",
        "cent", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from",
        "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself",
        "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my",
        "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours",
        "ourselves", "out", "over", "own", "per", "percent", "s", "said", "same", "say", "says", "she",
        "should", "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves",
        "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
        "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will",
        "with", "would", "you", "your", "yours", "yourself", "yourselves"
    }
)  # fmt: skip

# Feed boilerplate at the end of a text, removed in this order (``without_boilerplate``).
_POST_FOOTER = re.compile(r"\s*The post .{0,400}? appeared first on .{0,120}?$", re.DOTALL)
_CREDITS = re.compile(r"\s*\((?:Reporting|Writing|Editing|Additional reporting) by [^)]*\)\s*$")
_READ_MORE = re.compile(r"\s*(?:Continue reading|Read more|Read the full story)\s*(?:\.\.\.|…|»|›)?\s*$", re.IGNORECASE)
_READ_MORE_WORDS = 5
"""The most whitespace-separated words a ``_READ_MORE`` match spans: "Read the full story" and a
detached "…"."""

_TOKEN = re.compile(r"\d+(?:[.,:]\d+)*|[^\W\d_]+")
_POSSESSIVE = re.compile(r"[’']s\b")
_THOUSANDS = re.compile(r",(?=\d{3}(?!\d))")
_UK_US = (("ise", "ize"), ("ised", "ized"), ("ising", "izing"), ("isation", "ization"), ("our", "or"),
          ("oured", "ored"), ("tre", "ter"), ("lled", "led"), ("lling", "ling"), ("ogue", "og"))  # fmt: skip
"""UK spelling suffixes and their US forms, tried in this order (the first that ends a word wins).
Plain suffix tests rather than a regex per rule: a word (no whitespace, so no newline for ``$``
to stop before) ends with a suffix exactly when ``suffix$`` matches it, and as every rule
changes the word it matches, the first match is the first rule that changes it."""
_UK_US_SUFFIXES = tuple(suffix for suffix, _ in _UK_US)

_CHUNK_CACHE_SIZE = 1 << 14
"""Whitespace-separated chunks of text whose folded words each process remembers. News text
repeats its words (a few thousand make up most of any lead), so nearly every chunk is a hit;
the bound keeps a long-lived worker's memory flat whatever passes through it (about 5 MB when
full of English words, under 30 MB at worst)."""

_CACHED_CHUNK_CHARS = 32
"""Longer chunks are folded without the cache: they are rarely words that recur (URLs, runs of
text in scripts written without spaces) and would make its size unbounded."""


def signature_text(raw: bytes) -> str:
    """A signature's bytes as its stored form writes them: URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def signature_bytes(text: str) -> bytes:
    """Back from ``signature_text``; ValueError for text that is not base64."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def stored_signature_bytes(text: str) -> bytes:
    """The bytes a stored signature (``Signature.dumps``) writes in base64 (``Signature.packed``);
    ValueError for another version, or text that is not base64."""
    version, _, payload = text.partition(":")
    if version != SIGNATURE_VERSION:
        raise ValueError(f"signature version {version!r} is not {SIGNATURE_VERSION!r}")
    try:
        return signature_bytes(payload)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError(f"signature is corrupt: {exc}") from None


@dataclass(frozen=True)
class Signature:
    """What is kept of an item to recognise its copies: computed once, stored as a string.

    ``lead`` holds 32-bit hashes of the lead's 3-word phrases; ``headline`` a hash of the
    whole normalized headline, or 0 when the headline is too short to be evidence;
    ``weekdays`` a bit per weekday named in the lead (Monday = 1); ``numbers`` hashes of
    the figures in the headline and lead.
    """

    headline: int
    lead: frozenset[int]
    weekdays: int = 0
    numbers: frozenset[int] = frozenset()

    def dumps(self) -> str:
        """The form stored in a text column: version prefix, then base64 of the hashes.

        About 200 to 330 characters for a typical lead (at most ~70 hashes of 4 bytes).
        """
        return f"{SIGNATURE_VERSION}:{signature_text(self.packed())}"

    def packed(self) -> bytes:
        """The bytes ``dumps`` writes in base64: a quarter fewer than its text, for a reader
        that keeps thousands of signatures in memory (``stories.PackedMember``)."""
        numbers, lead = sorted(self.numbers), sorted(self.lead)
        return struct.pack(
            f">IHH{len(numbers)}I{len(lead)}I", self.headline, self.weekdays, len(numbers), *numbers, *lead
        )

    @classmethod
    def loads(cls, text: str) -> Signature:
        """Read back ``dumps()``. ValueError for another version: recompute it from the item."""
        return cls.unpacked(stored_signature_bytes(text))

    @classmethod
    def unpacked(cls, raw: bytes) -> Signature:
        """Back from ``packed()``; ValueError for bytes it did not write."""
        try:
            headline, weekdays, count = struct.unpack_from(">IHH", raw)
            values = struct.unpack_from(f">{(len(raw) - 8) // 4}I", raw, 8)
        except struct.error as exc:
            raise ValueError(f"signature is corrupt: {exc}") from None
        if len(raw) % 4 or count > len(values):
            raise ValueError("signature is corrupt: truncated")
        return cls(headline, frozenset(values[count:]), weekdays, frozenset(values[:count]))


class Signed:
    """An item's signature with the two forms storage needs, computed where it is signed
    (a parse worker) rather than by the process that writes the item.

    It crosses the process boundary as just those two forms: ``signature`` is decoded from
    ``stored`` when first asked for, which the writer does only for an item that has
    candidates to compare with. Pickling the decoded sets cost the writer more than the rest
    of the parsed feed.
    """

    __slots__ = ("_signature", "keys", "stored")

    def __init__(self, stored: str, keys: tuple[int, ...], signature: Signature | None = None) -> None:
        self.stored = stored  # Signature.dumps()
        self.keys = keys  # band_keys()
        self._signature = signature

    @classmethod
    def of(cls, title: str, text: str) -> Signed:
        sig = signature(title, text)
        return cls(sig.dumps(), tuple(band_keys(sig)), sig)

    @classmethod
    def from_stored(cls, stored: str) -> Signed:
        """Back from ``stored`` alone (ValueError if it is not a current signature)."""
        sig = Signature.loads(stored)
        return cls(stored, tuple(band_keys(sig)), sig)

    @property
    def signature(self) -> Signature:
        if self._signature is None:
            self._signature = Signature.loads(self.stored)
        return self._signature

    def __reduce__(self) -> tuple[type[Signed], tuple[str, tuple[int, ...]]]:
        return (Signed, (self.stored, self.keys))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signed) and (self.stored, self.keys) == (other.stored, other.keys)

    def __hash__(self) -> int:
        return hash((self.stored, self.keys))

    def __repr__(self) -> str:
        return f"Signed({self.stored!r}, {self.keys!r})"


@dataclass(frozen=True)
class Evidence:
    """Why two signatures are (or are not) the same story."""

    overlap: float  # share of the shorter lead's phrases found in the other (0..1)
    shared: int  # phrases in common
    same_headline: bool
    other_day: bool = False  # the leads name different weekdays, none in common
    numbers_differ: bool = False  # both carry figures and most of them disagree

    @property
    def text_match(self) -> bool:
        needed = MIN_OVERLAP_NUMBERS_DIFFER if self.numbers_differ else MIN_OVERLAP
        return not self.other_day and self.shared >= MIN_SHARED and self.overlap >= needed

    @property
    def score(self) -> float:
        """For ranking rival stories: the overlap, with a same headline worth a little more."""
        return min(1.0, self.overlap + (0.25 if self.same_headline else 0.0))

    @property
    def reason(self) -> str:
        parts = [f"lead overlap {self.overlap:.2f} ({self.shared} phrases)"]
        if self.same_headline:
            parts.append("same headline")
        if self.other_day:
            parts.append("different weekday")
        if self.numbers_differ:
            parts.append("figures differ")
        return ", ".join(parts)


@dataclass(frozen=True)
class RecentItem:
    """A stored item that a new one may copy: its story, when it was published, its signature."""

    story_id: int
    item_id: int
    published_at: datetime
    signature: Signature


@dataclass(frozen=True)
class StoryMatch:
    """The story a new item joins, the stored item it resembles most, and why."""

    story_id: int
    item_id: int
    score: float
    reason: str


def signature(title: str, text: str) -> Signature:
    """Compute an item's signature from its plain-text title and text (``Item.text``).

    Only the lead counts, so the same story with or without its full body matches, and
    the cost is bounded however long an article is. An item with no usable text (a
    title-only feed) is represented by its headline's phrases instead.
    """
    title_words = _words(title)
    lead_words = _words(_lead(text))
    named = set(lead_words)
    weekdays = sum(1 << index for index, day in enumerate(WEEKDAYS) if day in named)
    numbers = frozenset(_hash(word) for word in title_words + lead_words if word[0].isdigit())
    if len(lead_words) < SHINGLE_WORDS + 2:
        lead_words = title_words + lead_words
    headline = _hash(" ".join(title_words)) if len(title_words) >= HEADLINE_MIN_WORDS else 0
    return Signature(headline, frozenset(_phrases(lead_words)), weekdays, numbers)


def band_keys(sig: Signature) -> list[int]:
    """Lookup keys to store (one row each, indexed) and to query with for a new item.

    Any stored item sharing a key with the new one is a candidate for ``match``. The keys
    are the ``KEY_COUNT`` smallest phrase hashes (a bottom-k sample: two overlapping sets
    tend to keep the same smallest members) and the headline hash, offset by
    ``HEADLINE_KEY``. Integers, not text: a first ingest writes ten of them per item, and
    as integers the index is 2.5 times smaller and 40% cheaper to insert into.
    """
    keys = sorted(sig.lead)[:KEY_COUNT]
    if sig.headline:
        keys.append(HEADLINE_KEY + sig.headline)
    return keys


def compare(a: Signature, b: Signature) -> Evidence:
    """Measure how much two signatures share, whatever the verdict (for explaining one)."""
    shared = len(a.lead & b.lead)
    smaller = max(min(len(a.lead), len(b.lead)), MIN_DENOMINATOR)
    fewer_numbers = min(len(a.numbers), len(b.numbers))
    return Evidence(
        overlap=shared / smaller,
        shared=shared,
        same_headline=bool(a.headline) and a.headline == b.headline,
        other_day=bool(a.weekdays and b.weekdays and not a.weekdays & b.weekdays),
        numbers_differ=fewer_numbers >= 2 and len(a.numbers & b.numbers) * 2 < fewer_numbers,
    )


def same_story(a: Signature, b: Signature, apart: timedelta = timedelta(0)) -> Evidence | None:
    """Decide whether two items published ``apart`` from each other tell the same story.

    Their leads must share enough phrases; or they carry the same specific headline and
    were published within ``HEADLINE_WINDOW``. None when they are different stories.
    """
    evidence = compare(a, b)
    same_headline = evidence.same_headline and not evidence.other_day and abs(apart) <= HEADLINE_WINDOW
    if evidence.text_match or same_headline:
        return evidence
    return None


def match(
    new: Signature,
    published_at: datetime,
    recent: Iterable[RecentItem],
    window: timedelta = DEFAULT_WINDOW,
) -> StoryMatch | None:
    """The story a new item belongs to among ``recent`` items, or None if it starts one.

    Every candidate published within ``window`` of the new item is compared; the best
    evidence wins, ties going to the earliest item (then the lowest story id) so the
    result does not depend on the order candidates come back from the database.
    """
    best: tuple[float, datetime, int, int, str] | None = None
    for item in recent:
        apart = published_at - item.published_at
        if abs(apart) > window:
            continue
        evidence = same_story(new, item.signature, apart)
        if evidence is None:
            continue
        rank = (-evidence.score, item.published_at, item.story_id, item.item_id, evidence.reason)
        if best is None or rank < best:
            best = rank
    if best is None:
        return None
    score, _, story_id, item_id, reason = best
    return StoryMatch(story_id, item_id, -score, reason)


def _lead(text: str) -> str:
    text = without_boilerplate(DATELINE.sub("", text, count=1))
    # Cut on whitespace before tokenizing so the lead is the same words whatever follows
    # (and split no further than the lead: the text may be a whole article).
    return " ".join(text.split(maxsplit=LEAD_WORDS)[:LEAD_WORDS])


def without_boilerplate(text: str) -> str:
    """``text`` without the feed boilerplate that may end it: a WordPress footer ("The post …
    appeared first on …"), a wire's credit line ("(Reporting by …)"), a "Continue reading …".
    They say who published the item, not what it reports, and a footer repeats the headline
    with capitals and the site's name, which would read as names every one of the site's items
    shares (``stories.features_of``) and as phrases its leads share (``_lead``).

    The patterns end at the end of the text, but re.sub would try each at every position,
    which cost more than the rest of signing. Each search starts instead at the first place a
    match's first non-space character can be: the first "The post " (absent, no search), the
    first "(" when a credit line is possible, the last few words for "Read more" (common
    mid-text as a link). A match found that way may leave whitespace before it that ``sub``
    would have removed; what reads the text splits it on whitespace."""
    text = _cut_end(text, _POST_FOOTER, text.find("The post "))
    text = _cut_end(text, _CREDITS, text.find("(") if "ing by " in text else -1)
    return _cut_end(text, _READ_MORE, _last_words_start(text, _READ_MORE_WORDS))


def _cut_end(text: str, pattern: re.Pattern[str], start: int) -> str:
    """Remove ``pattern``'s match (anchored at the end) searching from ``start``; -1: none can."""
    if start < 0:
        return text
    found = pattern.search(text, start)
    return text if found is None else text[: found.start()] + text[found.end() :]


def _last_words_start(text: str, count: int) -> int:
    """An index at or before the start of ``text``'s ``count``-th word from the end (0 if fewer)."""
    parts = text.rsplit(maxsplit=count)
    # rsplit keeps everything before the last ``count`` words as one part, right-stripped.
    return len(parts[0]) if len(parts) > count else 0


def _words(text: str) -> list[str]:
    # No word spans whitespace, and neither removing possessives nor folding case splits or
    # joins chunks, so that work is done once per distinct chunk and remembered. NFKC is done
    # first and on the whole text: it can put a space inside a chunk (U+00A8 "¨" becomes a
    # space and a combining diaeresis).
    words: list[str] = []
    for chunk in unicodedata.normalize("NFKC", text).split():
        words += _chunk_words(chunk) if len(chunk) <= _CACHED_CHUNK_CHARS else _fold_chunk(chunk)
    return words


def _fold_chunk(chunk: str) -> tuple[str, ...]:
    """The folded words of a piece of text without whitespace, stopwords left out."""
    tokens = _TOKEN.findall(_POSSESSIVE.sub("", chunk).casefold())
    return tuple(
        _fold_number(token) if token[0].isdigit() else _fold_word(token) for token in tokens if token not in _STOPWORDS
    )


# Memoized: folding is pure, and nearly every chunk of an item was seen in earlier items.
_chunk_words = lru_cache(maxsize=_CHUNK_CACHE_SIZE)(_fold_chunk)


def _fold_number(token: str) -> str:
    token = _THOUSANDS.sub("", token)
    if "." in token and ":" not in token:
        token = token.rstrip("0").rstrip(".")
    return token


def _fold_word(word: str) -> str:
    # Wire copy is re-spelled for the republisher's readers (kilometres → kilometers,
    # armoured → armored, cancelled → canceled) and plurals come and go in edits; folding
    # both sides the same way is enough, the result need not be a real word.
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-3] + "y" if word.endswith("ies") else word[:-1]
    if len(word) > 4 and word.endswith(_UK_US_SUFFIXES):
        for suffix, replacement in _UK_US:
            if word.endswith(suffix):
                return word[: -len(suffix)] + replacement
    return word


def _phrases(words: list[str]) -> set[int]:
    if len(words) < SHINGLE_WORDS:
        return {_hash(" ".join(words))} if words else set()
    shingles = map(" ".join, zip(*(words[i:] for i in range(SHINGLE_WORDS)), strict=False))
    # _hash inlined: a function call per phrase is a large share of this loop. Keep the two alike.
    # Copying a blank hasher skips the keyword parsing of a new one, another large share.
    phrases: set[int] = set()
    add, blank, from_bytes = phrases.add, _BLANK_HASH.copy, int.from_bytes
    for phrase in shingles:
        hasher = blank()
        hasher.update(phrase.encode("utf-8"))
        add(from_bytes(hasher.digest(), "big"))
    return phrases


_BLANK_HASH = blake2b(digest_size=4)


def _hash(text: str) -> int:
    # Python's hash() is salted per process; stored signatures must mean the same tomorrow.
    hasher = _BLANK_HASH.copy()
    hasher.update(text.encode("utf-8"))
    return int.from_bytes(hasher.digest(), "big")
