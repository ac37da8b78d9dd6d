"""Which story does a new item belong to? The decision, pure: plain data in, a verdict out.

``cluster`` recognises copies of one text (a wire story republished); this module links
*independent* coverage of one event (each outlet's own report) and keeps look-alikes apart
(Tuesday's meeting and Thursday's, two aid packages announced in the same words). It weighs
four kinds of evidence, always against a story as a whole:

* **names and figures** (``names``) the item shares with the story. Each weighs by how few
  *other* recent stories carry it (``TermStats``): a name no other story mentions weighs 1, one
  that ``COMMON_SHARE`` of the stories mention weighs 0 ("President", and on a busy week
  "Gaza"; a weekday is no name at all, ``names.WEEKDAYS``). Counting stories rather than items
  matters: forty outlets covering one summit must not make the summit's city look common. A
  name counts in proportion to the share of the story's members that carry it, so one that
  only a single member of a large story mentions weighs little: that is what keeps a story
  from growing through its newest member (chaining). The names must also *agree*: most of
  what the item or the story leads with (headline and the lead's opening,
  ``names.LEADING_CHARS``) is found on the other side. A headline that came alone has room
  for few names, and needs fewer (``HEADLINE_NAME_WEIGHT``), but not other figures than the
  story's headlines give (``figures_differ``);
* **meaning**: the cosine between the item's vector (``semantic``) and the story's centroid.
  Alone it tells topics apart, not events (every summit reads like every other), so it only
  lowers the names needed (``STRONG_COSINE``) or rules a story out (``MIN_COSINE``);
* **time**: a story takes members for ``STORY_SPAN`` after its first one; a development later
  (the verdict after the charge, the race after qualifying) starts a story of its own;
* **rare plain words** (``rare_words``): "slapped", "robocall", "landfall" are not names, but
  two reports of one incident share them where reports of other events do not. A word the
  model's vocabulary holds whole is common and not evidence; one it must split is, and adds
  ``RARE_WORD_WEIGHT`` of a name's weight at most. They add to the names' weight, never to
  the agreement check, so they help a report that is plainly about the story's event across a
  bar the names alone left it just under, and cannot make two events' names agree;
* **copied text** (``cluster.same_story``), the most precise signal, still only against a
  story whose centroid is close and whose names agree with the copy's (a look-alike built from
  the same template carries other names and figures).

*Independent* means another outlet's. Names an item shares with its own outlet's earlier items
say nothing: an outlet repeats its own name, its city, its section and its templates in every
item (a local paper's "Curitiba", an analyst desk's "BMO Capital Markets ... Kursziel", an anime
site's studio list), and those are rare in the stream at large exactly because only it prints
them. So a story whose judged members all come from the item's own source (``decide``'s
``own``) is joined only by a copy; names and meaning link an item only to a story another outlet
is in.

Candidates come from lookup keys: an item's rare terms (and its lead-copy band keys). A term
that more than ``KEY_MAX_STORIES`` recent stories carry is not a key, so however stock the
text, an item meets a bounded number of stories: at most ``MAX_CANDIDATES`` are judged, each
on at most ``REPRESENTATIVES`` members.

``decide`` returns the story chosen (or None) with the reason, and the near misses with the
reason each failed: ``aggregator story`` shows both.
"""

from __future__ import annotations

import base64
import itertools
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import NamedTuple

import numpy as np

from aggregator import cluster, names, semantic
from aggregator.names import Terms
from aggregator.plaintext import collapse

FEATURES_VERSION = "s12"
"""Prefix of ``Features.dumps()``; bump it when the model, the term extraction or the layout
changes, so features written by older code are recognised (and read, or simply not compared)."""
OLDER_VERSIONS = ("s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11")
"""Earlier layouts ``Features.loads`` still reads: ``s1`` had no rare words, ``s2`` did not
tell the leading names (``Features.leading``) from the others, ``s3`` (the layout of ``s4``)
took a wire dateline's place and date for leading names and its agency credit for a name,
``s4`` missed the names a headline with no text opens with and did not keep them apart
(``Features.headline``), ``s5`` (the layout of ``s8``) took a weekday for a name
(``names.WEEKDAYS``), ``s6`` (the same layout) kept the marks on names' letters, so that
"Chávez" and "Chavez" were two names (``names.unaccented``), and ``s7`` (the same layout) took
a people's name for a name of its own, so that "Turkish" and "Turkey" were two
(``names.country_of``), and ``s8`` (the same layout) took the pronoun "I" for a name and missed a
name capitalised inside ("TikTok") where it opened a sentence or headline (``names._PRONOUN``,
``names._inner_capital``), and ``s9`` (the same layout) read a WordPress footer ("The post …
appeared first on …") or a credit line ending a short text as the item's own words
(``cluster.without_boilerplate``), and took the first word of a paragraph that follows one
with no full stop for a name ("… and looting The tanks rolled in": ``parseworker.feature_text``).
Both changes came in one release, as ``s10``, which (the same layout) took the capitalised
nouns of a German item for names, the figures of an item that names no one for evidence, and
every word of another alphabet than the Latin for a rare word, and kept the tonos on a Greek
name's letters (``names.capitals_mark_names``, ``names.extract``, ``_LATIN_WORD``,
``names.unaccented``), and ``s11`` (the same layout) kept the Russian "ё" apart from the "е"
print mostly writes for it (``plaintext.UNPRINTED_MARKS``) and a Turkish case ending on the
name it follows ("İstanbul'da": ``names._CASE_ENDING``)."""

NAME_KEY = 2 << 32
"""Added to a term's 32-bit hash to make its lookup key in storage, which holds the lead-copy
keys (``cluster.band_keys``: below 2**33) in the same table."""

TERM_WINDOW = timedelta(days=3)
"""The recent stream whose stories term counts are taken over."""

STORY_SPAN = timedelta(hours=12)
"""How long after a story's first member an item can still join it. Outlets cover an event
within hours; what comes a day later is a development and a story of its own."""

KEY_MAX_STORIES = 20
"""A term that more recent stories than this carry is not a lookup key: it names a topic, not
an event, and as a key it would make the candidates grow with the stream."""

MAX_KEYS = 12
"""Rarest terms of an item used as lookup keys."""

MAX_CANDIDATES = 6
"""Stories judged per item, those sharing the most rare-term weight first."""

REPRESENTATIVES = 8
"""Members a story is judged on: its first ones. A story is its first reports; later members
cannot move its centre, so it cannot drift away from the event it started with."""

PRIOR_STORIES = 1000
"""Stories the term statistics pretend to have seen before the window's, none carrying any
term: on a fresh or quiet database an unseen name is then rare rather than proof, and a name
becomes common only once ``COMMON_SHARE`` of this many stories carry it."""

COMMON_SHARE = 0.01
"""A term that at least this share of recent stories carry weighs nothing: a topic, not an event."""

MIN_COSINE = 0.45
"""Cosine to a story's centroid below which names alone never link: another topic."""

MIN_NAME_WEIGHT = 3.0
"""Weight of names and figures an independent report must share with a story: three that no
other recent story carries, or more that a few others do."""

STRONG_COSINE = 0.8
"""Above this cosine to the centroid, ``STRONG_NAME_WEIGHT`` is enough."""

STRONG_NAME_WEIGHT = 2.0
"""Names needed when the meaning is close (``STRONG_COSINE``): two that no other story carries."""

WEAK_COSINE = 0.6
STRONG_AGREEMENT = 0.35

COPY_MIN_COSINE = 0.5
"""A lead copy still has to be near the story's centre: a copy of a member that is itself an
outlier does not pull the story elsewhere."""

MIN_AGREEMENT = 0.5
"""Agreement of names (``_agreement``) an independent report needs: at least half of the rare
weight of one side's leading names is shared. Two stories about the same actors share some
names; reports of one event share most of what one of them opens with."""

WHOLE_AGREEMENT_WEIGHT = 2.0
"""How many times the rare-name weight its cosine requires (``names_needed``) an independent
report must share with a story for its agreement to be weighed on all its names, and not only
on those it opens with (``_agreement``): an opening is not always who did what where ("This
story was updated at 11:25 p.m. EDT.", a quote, the scene before the news), and a report that
shares that much more than it needs, and most of all the rare names it gives, reports the same
event. Below it, the opening decides: a report of another event with the same actors shares
some names, and is told apart by what each opens with."""

COPY_AGREEMENT = 0.8
"""Agreement a lead copy needs: a copy keeps its original's names and figures (a trimmed one
keeps a subset), while a look-alike from the same template carries other ones."""

NAMELESS_COPY_OVERLAP = 0.5
"""Share of the shorter lead's phrases a lead copy must carry when the item has neither a name
nor a rare word to agree with the story's (a German item, whose capitals mark nouns, names
none: ``names.capitals_mark_names``). Agreement then holds vacuously, and a police report's
stock phrases ("die Feuerwehr war mit 80 Einsatzkräften vor Ort", "Fenster und Türen") made a
quarter of the lead of another city's, the least a copy needs (``cluster.MIN_OVERLAP``). A
copy carries most of its original's lead."""

SUBJECT_WEIGHT = 0.5
"""Weight (``TermStats.weight``) from which a name only one side of a lead copy opens with
tells its subject apart (``other_subjects``): one that several percent of the window's
stories carry says nothing of whom a template is filled in for."""

RARE_WORD_WEIGHT = 0.5
"""What a shared plain word weighs at most, against a name's 1: plain words say what happened,
names who and where; a word tells less about which event it is than a name does."""

RARE_PIECES = 3
"""Tokens a word splits into for its full weight (``RARE_WORD_WEIGHT``); two pieces give half
of it; a word the vocabulary holds whole gives nothing."""

HEADLINE_NAME_WEIGHT = 1.0
"""Rare-name weight enough, at ``WEAK_COSINE`` and closer, for a headline that came alone
(``Features.headline``): one name that no other recent story carries; below, twice that.
Such a headline holds the two or three names its text would have repeated, and the bar of a
report with a text (``names_needed``) is mostly out of its reach. Only its names count towards
this one, not its figures or plain words ("6%" in two companies' results), and its figures must
not differ from the story's (``figures_differ``)."""

LATER_NAME_SHARE = 0.5
"""What a story's opening name counts for in the name agreement (``_agreement``) when the item
names it only after its own opening, against 1 when it opens with it: half way between the
evidence of an opening, which says what the item is about, and none."""

ABSORB_COSINE = WEAK_COSINE
"""Cosine to a fragment (``decide``'s ``one_outlet``) an item needs to merge it into the story
it joins. Joining adds one item to one story; absorbing merges two stories, all their members
at once, on the word of that one item: a chain, which a join's least evidence does not carry.
Below this, names carry a join (``names_needed``), and the names a roundup or a side story
shares with two stories ("Ukraine", "Russia"; "Trump", "Mexico") are its topic's, which both
stories share without being one event. The item still joins its story; the fragment stays a
story of its own until a report close to it in meaning shows them one."""

AGREEMENT_FLOOR = 0.5
"""Rare-name weight below which a side's leading names are too plain to tell: it is weighed on
all its names, and if those are too plain as well, it agrees with anything (``_agreement``)."""


def features_text(raw: bytes) -> str:
    """Features' bytes as their stored form writes them: standard base64."""
    return base64.b64encode(raw).decode("ascii")


def features_bytes(text: str) -> bytes:
    """Back from ``features_text``; ValueError for text that is not base64."""
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class Features:
    """What an item contributes to story matching, computed once where it is parsed."""

    vector: semantic.Vector
    terms: frozenset[int]
    signature: cluster.Signature | None = None
    words: Mapping[int, float] = field(default_factory=dict)
    """Rare plain words (``rare_words``): hash -> weight as evidence."""
    leading: frozenset[int] | None = None
    """The terms of the headline and the lead's opening (``names.Terms.leading``), which name
    the event; None: all of ``terms`` (features stored before they were told apart)."""
    headline: frozenset[int] | None = None
    """The names of a headline that came alone, with no text, its figures left out
    (``names.Terms.headline_keys``): whom the item is about (``other_subjects``). Empty for an
    item with a text; None: not known (features stored before ``s5``)."""

    @property
    def lead_terms(self) -> frozenset[int]:
        """The leading terms, or all of them for features stored without the distinction."""
        return self.terms if self.leading is None else self.leading

    def dumps(self) -> str:
        """Stored form: version, then in base64 the quantised vector, the term hashes (the
        headline's names first, then the other leading terms, then the rest), and the rare
        words' hashes, full-weight ones first (about 500 characters). The lead signature is
        stored on its own (``cluster.Signature.dumps``)."""
        full = sorted(w for w, weight in self.words.items() if weight >= RARE_WORD_WEIGHT)
        half = sorted(w for w, weight in self.words.items() if weight < RARE_WORD_WEIGHT)
        leading = self.lead_terms
        headline = (self.headline or frozenset()) & leading
        ordered = (*sorted(headline), *sorted(leading - headline), *sorted(self.terms - leading))
        packed = b"".join(
            (
                semantic.quantise(self.vector),
                len(self.terms).to_bytes(2, "big"),
                len(leading).to_bytes(2, "big"),
                len(headline).to_bytes(2, "big"),
                *(t.to_bytes(4, "big") for t in ordered),
                len(full).to_bytes(2, "big"),
                *(t.to_bytes(4, "big") for t in (*full, *half)),
            )
        )
        return f"{FEATURES_VERSION}:{features_text(packed)}"

    @classmethod
    def loads(cls, text: str, signature: cluster.Signature | None = None) -> Features:
        """Back from ``dumps``; ValueError for another version or a damaged value."""
        version, _, payload = text.partition(":")
        if version != FEATURES_VERSION and version not in OLDER_VERSIONS:
            raise ValueError(f"features version {version!r} is not {FEATURES_VERSION!r}")
        try:
            raw = features_bytes(payload)
        except ValueError as exc:
            raise ValueError(f"features are corrupt: {exc}") from None
        dims = semantic.DIMENSIONS
        if version == "s1":
            if len(raw) < dims or (len(raw) - dims) % 4:
                raise ValueError("features are corrupt: truncated")
            terms = frozenset(np.frombuffer(raw, dtype=">u4", offset=dims).tolist())
            return cls(semantic.dequantise(raw[:dims]), terms, signature)
        # s2 has no count of leading terms, s3 and s4 none of the headline's names
        counts = 2 if version == "s2" else 4 if version in ("s3", "s4") else 6
        try:
            n_terms = int.from_bytes(raw[dims : dims + 2], "big")
            n_leading = n_terms if version == "s2" else int.from_bytes(raw[dims + 2 : dims + 4], "big")
            n_headline = int.from_bytes(raw[dims + 4 : dims + 6], "big") if counts == 6 else 0
            words_at = dims + counts + 4 * n_terms
            n_full = int.from_bytes(raw[words_at : words_at + 2], "big")
            if (
                len(raw) < words_at + 2 or (len(raw) - words_at - 2) % 4 or 4 * n_full > len(raw) - words_at - 2
                or n_leading > n_terms or n_headline > n_leading
            ):  # fmt: skip
                raise ValueError("truncated")
            hashes = np.frombuffer(raw, dtype=">u4", count=n_terms, offset=dims + counts).tolist()
            words = np.frombuffer(raw, dtype=">u4", offset=words_at + 2).tolist()
        except ValueError as exc:
            raise ValueError(f"features are corrupt: {exc}") from None
        half = RARE_WORD_WEIGHT / 2
        weights = {w: (RARE_WORD_WEIGHT if n < n_full else half) for n, w in enumerate(words)}
        terms = frozenset(hashes)
        leading = None if n_leading == n_terms else frozenset(hashes[:n_leading])
        headline = frozenset(hashes[:n_headline]) if counts == 6 else None
        return cls(semantic.dequantise(raw[:dims]), terms, signature, weights, leading, headline)


@dataclass(frozen=True)
class Member:
    """A stored member of a story, as the decision sees it."""

    item_id: int
    published_at: datetime
    features: Features


class PackedMember:
    """A stored member of a story packed small, for the writer to keep thousands between polls
    (``storymatch``): decoded ``Features`` hold a float vector and sets of Python ints, several
    times the bytes of what they carry, and a member's signature is larger still. A profile
    built from packed members is exactly the one built from ``Member``s of the same features.

    It is its own ``features``, holding only what a profile reads of a member: the vector as
    stored (quantised), widened by ``dequantise`` when a profile sums it, which is how
    ``Features.loads`` made it; the term, leading-term and rare-word hashes packed in the order
    the decoded sets and dict give them, which the profile's counts, and the sums later taken
    over those, follow (the words' weights are the judged item's business, not the story's);
    the lead signature's bytes (``cluster.Signature.packed``), decoded when ``judge`` compares a
    lead with it, which only a story reached through a lead-copy key asks for."""

    __slots__ = ("_headline", "_leading", "_packed", "_signature", "_terms", "item_id", "published_at")

    def __init__(
        self, item_id: int, published_at: datetime, features: Features, stored: str, signature: str | None
    ) -> None:
        """``stored``: ``features.dumps()`` as stored (its vector is kept as it is there);
        ``signature``: the stored form of ``features.signature``, if at hand."""
        self.item_id = item_id
        self.published_at = published_at
        quantised = base64.b64decode(stored.partition(":")[2])[: semantic.DIMENSIONS]
        leading = () if features.leading is None else features.leading
        headline = () if features.headline is None else features.headline
        hashes = np.fromiter(itertools.chain(features.terms, leading, headline, features.words), dtype=np.uint32)
        self._packed = quantised + hashes.tobytes()
        self._terms = len(features.terms)
        self._leading = None if features.leading is None else len(features.leading)
        self._headline = None if features.headline is None else len(features.headline)
        self._signature: bytes | None = None
        if features.signature is not None:  # as stored, without its text's base64
            self._signature = _signature_bytes(signature, features.signature)

    @property
    def features(self) -> PackedMember:
        return self

    @property
    def vector(self) -> semantic.Vector:
        return semantic.dequantise(self._packed[: semantic.DIMENSIONS])

    @property
    def quantised(self) -> memoryview:
        """The vector as stored, read in place (``semantic.dequantise_all`` widens it)."""
        return memoryview(self._packed)[: semantic.DIMENSIONS]

    @property
    def terms(self) -> memoryview[int]:
        return self._hashes(0, self._terms)

    @property
    def lead_terms(self) -> memoryview[int]:
        return self.terms if self._leading is None else self._hashes(self._terms, self._terms + self._leading)

    @property
    def headline(self) -> memoryview[int] | None:
        """The headline's names (``Features.headline``; None: not known)."""
        if self._headline is None:
            return None
        start = self._terms + (self._leading or 0)
        return self._hashes(start, start + self._headline)

    @property
    def words(self) -> memoryview[int]:
        """The rare plain words' hashes (``Features.words``, without their weights)."""
        return self._hashes(self._terms + (self._leading or 0) + (self._headline or 0), None)

    @property
    def signature(self) -> cluster.Signature | None:
        return cluster.Signature.unpacked(self._signature) if self._signature is not None else None

    def _hashes(self, start: int, end: int | None) -> memoryview[int]:
        """The packed hashes from ``start`` to ``end`` (None: the last), read in place: a
        profile iterates them once, into its counts."""
        packed = memoryview(self._packed)[semantic.DIMENSIONS :]
        return packed.cast("I")[start:end]


def _signature_bytes(stored: str | None, decoded: cluster.Signature) -> bytes:
    """A signature's bytes: from its stored text when that is at hand and of this version (no
    packing again), else from the decoded signature."""
    if stored is not None:
        try:
            return cluster.stored_signature_bytes(stored)
        except ValueError:  # of another version: the decoded one is this version's
            pass
    return decoded.packed()


@dataclass(frozen=True)
class StoryProfile:
    """A candidate story: its first members (``REPRESENTATIVES`` at most) and when it began."""

    story_id: int
    members: tuple[Member | PackedMember, ...]
    first_at: datetime
    last_at: datetime | None = None
    """When its latest member was published, where its judged members do not say: storage reads
    only its first ``REPRESENTATIVES`` (None: the latest of those, ``ends_at``)."""
    rare_weight: list[float] = field(default_factory=lambda: [-1, 0.0, -1.0], compare=False, repr=False)
    """(which TermStats, the weight it gives the story's leading names, and all its names, -1
    until needed): see ``TermStats.story_weight``."""

    @classmethod
    def unread(cls, story_id: int, first_at: datetime, last_at: datetime | None = None) -> StoryProfile:
        """A story known only by when it began, more than ``STORY_SPAN`` before or after every
        item to be judged against it (a first fetch brings days of backlog, which meet other
        outlets' stories of other days; a running service's rare names reach stories of the
        last days): ``judge`` refuses it on the time alone and weighs nothing else, so its
        members are not read. ``last_at``: when its latest member was published, if known."""
        return cls(story_id, (), first_at, last_at)

    @cached_property
    def latest(self) -> datetime:
        """When the latest of its judged members was published (when it began, if none is):
        carried over by ``ending`` and ``extended``, which build a profile poll after poll."""
        return max((m.published_at for m in self.members), default=self.first_at)

    @cached_property
    def ends_at(self) -> datetime:
        """When its latest member was published: ``judge`` keeps a story's members within
        ``STORY_SPAN`` of its first and of its latest alike (``beyond_span``)."""
        latest = self.latest
        return max(latest, self.first_at, self.last_at or latest)

    def ending(self, last_at: datetime | None) -> StoryProfile:
        """The same profile with its latest member published at ``last_at`` (as storage read it
        at this poll: a kept profile is built from the first members, which a story that grew
        past them still has), what it has summed and counted carried over."""
        if last_at == self.last_at:
            return self
        profile = replace(self, last_at=last_at)
        profile.__dict__.update((k, v) for k, v in self.__dict__.items() if k not in _PROFILE_FIELDS and k != "ends_at")
        return profile

    def extended(self, more: Sequence[Member | PackedMember]) -> StoryProfile:
        """The story with ``more`` members after these (later ones, as stored): what is already
        summed and counted for this profile is carried over and only the new members are added,
        giving exactly what building the longer profile afresh gives. A story is a candidate
        again and again while it grows, one member at a time."""
        profile = StoryProfile(self.story_id, (*self.members, *more), self.first_at, self.last_at)
        if "latest" in self.__dict__:
            profile.__dict__["latest"] = max([self.latest, *(member.published_at for member in more)])
        if "total" in self.__dict__:
            total = self.total
            for member in more:
                total = total + member.features.vector
            profile.__dict__["total"] = total
        if "counts" in self.__dict__:
            counts = tuple(dict(counted) for counted in self.counts)  # copied in C, order kept
            for member in more:
                carried = (member.features.terms, member.features.lead_terms, member.features.words)
                for counted, values in zip(counts, carried, strict=True):
                    for value in values:
                        counted[value] = counted.get(value, 0) + 1
            profile.__dict__["counts"] = counts
        if "signatures" in self.__dict__:
            profile.__dict__["signatures"] = dict(self.signatures)  # the same members, at the same places
        return profile

    @cached_property
    def signatures(self) -> dict[int, cluster.Signature | None]:
        """The lead signatures of the members compared so far, by place (``signature``)."""
        return {}

    def signature(self, index: int) -> cluster.Signature | None:
        """The lead signature of the member at ``index``, decoded once for the profile: a packed
        member keeps its own in stored form, and a kept profile is compared with new leads poll
        after poll, mostly with its first member only (a copy stops the comparison)."""
        kept = self.signatures
        if index not in kept:
            kept[index] = self.members[index].features.signature
        return kept[index]

    @cached_property
    def total(self) -> semantic.Vector:
        """The members' vectors summed, in order (``centroid`` scaled to length 1). Packed
        members' are widened all at once (``semantic.dequantise_all``): a first ingest builds
        thousands of profiles, and widening them one by one was most of what building cost."""
        members = self.members
        if len(members) == 1:  # most stories of a first ingest: their member's vector is the sum
            return members[0].features.vector
        packed = [m for m in members if isinstance(m, PackedMember)]
        vectors: semantic.Vector | list[semantic.Vector]
        if packed and len(packed) == len(members):
            vectors = semantic.dequantise_all(m.quantised for m in packed)
        else:
            vectors = [m.features.vector for m in members]
        summed: semantic.Vector = np.sum(vectors, axis=0, dtype=np.float32)
        return summed

    @cached_property
    def centroid(self) -> semantic.Vector:
        total = self.total
        norm = math.sqrt(float(total.dot(total)))  # np.linalg.norm's value, without its checks
        return total / np.float32(norm) if norm > 0 else total

    @cached_property
    def counts(self) -> tuple[dict[int, int], ...]:
        """How many members carry each term, name each in their opening, and use each rare
        plain word. Counted in C, in the order a loop over members and values meets them."""
        members = [m.features for m in self.members]
        if len(members) == 1:  # each value once (sets and a dict's keys): the same counts, in the same order
            return tuple(
                dict.fromkeys(values, 1) for values in (members[0].terms, members[0].lead_terms, members[0].words)
            )
        chain = itertools.chain.from_iterable
        return (
            Counter(chain(f.terms for f in members)),
            Counter(chain(f.lead_terms for f in members)),
            Counter(chain(f.words for f in members)),
        )

    @cached_property
    def headline_figures(self) -> frozenset[int]:
        """The figures of the members that are headlines alone (``lone_headline_figures``),
        for ``figures_differ``."""
        return frozenset().union(*(lone_headline_figures(m.features) for m in self.members))

    @cached_property
    def headline_names(self) -> frozenset[int]:
        """The names of its members' headlines when every member is a headline that came alone
        (only title-only feeds have reported it so far), else none: what a report with a text
        can share with such a story is bounded by those headlines, as a lone headline's with
        a story is by its own (``_headline_names``)."""
        named = [m.features.headline for m in self.members]
        if not named or not all(named):
            return frozenset()
        return frozenset(itertools.chain.from_iterable(h for h in named if h is not None))

    @cached_property
    def support(self) -> dict[int, float]:
        """Share of the members that carry each term."""
        return _shares(self.counts[0], len(self.members))

    @cached_property
    def lead_support(self) -> dict[int, float]:
        """Share of the members that name each term in their headline or lead's opening."""
        return _shares(self.counts[1], len(self.members))

    @cached_property
    def word_support(self) -> dict[int, float]:
        """Share of the members that use each rare plain word."""
        return _shares(self.counts[2], len(self.members))


_PROFILE_FIELDS = frozenset(f.name for f in fields(StoryProfile))
"""What a ``StoryProfile`` is made with; the rest of its ``__dict__`` is what it computed."""


def _shares(counts: Mapping[int, int], size: int) -> dict[int, float]:
    """Share of ``size`` members that carry each value, from how many do."""
    return {value: count / size for value, count in counts.items()}


_STATS_MADE = itertools.count()


@dataclass
class TermStats:
    """How many recent stories carry each term, out of how many: the stream's own word list."""

    stories: int
    counts: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        common = COMMON_SHARE * (self.stories + PRIOR_STORIES)
        self._scale = 1 / math.log(common) if common > 1 else math.inf
        self._weights: dict[int, float] = {}
        self._token = next(_STATS_MADE)

    def weight(self, term: int, own: bool = False) -> float:
        """Evidence a shared term gives, from 1 (no other story carries it) down to 0 (at least
        ``COMMON_SHARE`` of the stories do). ``own``: the story being judged carries it, and
        is not counted as another."""
        others = self.counts.get(term, 0) - own
        if others <= 0:
            return 1.0
        found = self._weights.get(others)
        if found is None:  # a few distinct counts recur across many terms: computed once each
            found = self._weights[others] = max(0.0, 1.0 - math.log1p(others) * self._scale)
        return found

    def story_weight(self, story: StoryProfile, leading: bool = True) -> float:
        """The rare weight of a story's leading names (each term's, times the share of members
        naming it there), or of all its names, kept on the story for these statistics: one
        poll judges a story for several items."""
        kept = story.rare_weight
        if kept[0] != self._token:
            kept[:] = [self._token, sum(self.weight(t, True) * share for t, share in story.lead_support.items()), -1.0]
        if not leading and kept[2] < 0:
            kept[2] = sum(self.weight(t, True) * share for t, share in story.support.items())
        return kept[1] if leading else kept[2]

    def is_key(self, term: int) -> bool:
        return self.counts.get(term, 0) <= KEY_MAX_STORIES and self.weight(term) > 0

    def keys(self, terms: Iterable[int]) -> list[int]:
        """An item's lookup terms: the ``MAX_KEYS`` rarest that are rare enough (lowest hash
        first among equals, so the choice does not depend on set order), of those some story
        carries first. A term no story carries reaches no stored story, only those the poll's
        earlier items start: a lead signing its photographer and its reporter ("By Jack
        Gruber, USA TODAY") would otherwise spend every key on such names and reach nothing."""
        usable = [t for t in terms if self.is_key(t)]
        return sorted(usable, key=lambda t: (not self.counts.get(t, 0), self.counts.get(t, 0), t))[:MAX_KEYS]


class Judgement(NamedTuple):
    """The evidence about one (item, story) pair and whether it links them. A named tuple: a
    poll makes one for every candidate of every item, and a frozen dataclass took four times as
    long to make."""

    story_id: int
    joins: bool
    cosine: float | None  # None: not weighed (a story refused on time alone, see ``judge``)
    name_weight: float
    shared: tuple[int, ...]  # the item's terms the story carries with weight
    hours: float  # from the story's first member
    copy_of: int | None  # the member the item copies, if any
    why_not: str = ""
    shared_words: tuple[int, ...] = ()  # the item's rare plain words the story uses
    word_weight: float = 0.0  # what they add to ``name_weight``
    on_all_names: bool = False  # its names agree on the whole, not on its opening (``WHOLE_AGREEMENT_WEIGHT``)

    @property
    def score(self) -> float:
        return (10.0 if self.copy_of is not None else 0.0) + (self.cosine or 0.0) + self.name_weight

    def reason(self, terms: Terms | None = None) -> str:
        if self.cosine is None:  # refused on time alone: nothing else weighed
            return f"{self.hours:+.1f} h from the story's first item: {self.why_not}"
        names = ""
        if self.shared:
            shown = terms.named(set(self.shared)) if terms is not None else []
            names = f"; names {', '.join(shown[:8])}" if shown else f"; {len(self.shared)} names"
        if self.shared_words:
            shown = [w.lstrip("~") for w in terms.named(set(self.shared_words))] if terms is not None else []
            listed = ", ".join(shown[:6]) if shown else f"{len(self.shared_words)}"
            names += f"; rare word stems {listed} (+{self.word_weight:.1f})"
        copy = f"; copies {_item(self.copy_of)}" if self.copy_of is not None else ""
        if self.on_all_names:
            copy += "; agrees on all its names, not on its opening"
        text = (
            f"cosine {self.cosine:.2f}, name weight {self.name_weight:.1f}{names}{copy}, "
            f"{self.hours:+.1f} h from the story's first item"
        )
        return text if self.joins else f"{text}: {self.why_not}"


def _item(item_id: int) -> str:
    """How an explanation calls a member: by its number, or, for an item of the same poll whose
    story is not stored yet (``storybatch``: judged under a provisional negative id), so."""
    return f"item {item_id}" if item_id >= 0 else "an item of the same poll"


MISSES_SHOWN = 3
"""Near misses an explanation shows among those weighed (``Decision.explain``), closest first."""
TIMED_MISSES_SHOWN = 2
"""And among those refused on time alone, nearest in time first, shown after those: how close in
meaning they were is not weighed (``judge``), and a story a day before is the one that tells a
reader why a development stands on its own, however many others were weighed."""


@dataclass(frozen=True)
class Decision:
    """The story a new item joins (None: it starts one), why, and the stories it nearly joined;
    and the stories it shows to be fragments of the one it joins (``absorbs``, see ``decide``)."""

    story_id: int | None
    chosen: Judgement | None
    near_misses: tuple[Judgement, ...]  # those weighed, best first; then those refused on time alone
    absorbs: tuple[Judgement, ...] = ()
    unmerged: tuple[Judgement, ...] = ()  # fragments it would join too: too far in meaning or time to merge

    def explain(self, terms: Terms | None = None, named: Mapping[int, str] | None = None) -> str:
        """Why, in words. ``named``: how to call stories that have no number yet (those an item
        of the same poll is starting), by the provisional id they were judged under."""

        def story(story_id: int) -> str:
            return named[story_id] if named is not None and story_id in named else f"story {story_id}"

        if self.chosen is None:
            weighed = [j for j in self.near_misses if j.cosine is not None][:MISSES_SHOWN]
            timed = [j for j in self.near_misses if j.cosine is None][:TIMED_MISSES_SHOWN]
            misses = "; ".join(f"{story(j.story_id)}: {j.reason(terms)}" for j in (*weighed, *timed))
            return "new story" + (f" (near misses: {misses})" if misses else "")
        absorbed = "".join(
            f"; and {story(j.story_id)}, one outlet's report of the same event, joins it: {j.reason(terms)}"
            for j in self.absorbs
        )
        absorbed += "".join(
            f"; {story(j.story_id)}, one outlet's story it would join too, stays apart: "
            + (
                f"cosine {j.cosine or 0.0:.2f}, below {ABSORB_COSINE} to merge stories"
                if (j.cosine or 0.0) < ABSORB_COSINE
                else f"together they would span more than {STORY_SPAN.total_seconds() / 3600:.0f} h"
            )
            for j in self.unmerged
        )
        return f"joined {story(self.chosen.story_id)}: {self.chosen.reason(terms)}{absorbed}"


def name_key(term: int) -> int:
    """A term's lookup key in storage (``NAME_KEY`` + its hash)."""
    return NAME_KEY + term


def stored_keys(copy_keys: tuple[int, ...], features: Features) -> tuple[int, ...]:
    """Every key an item is stored under: its lead-copy keys, then each of its terms' keys.

    All terms are stored, rare or not: whether a term is rare is decided when a later item
    looks it up, against the stream as it is then."""
    return copy_keys + tuple(name_key(t) for t in sorted(features.terms))


def features_of(title: str, text: str, signed: bool = True, language: str | None = None) -> tuple[Features, Terms]:
    """An item's features from its plain-text title and text (with its lead signature unless
    ``signed`` is false: the parse worker signs items on its own), and its readable terms:
    names and figures, then the stems of its rare plain words (marked ``~``). Feed boilerplate
    ending the text is not the item's (``cluster.without_boilerplate``). A newline in ``text``
    ends a sentence for the names (``parseworker.feature_text``), and is a space to the rest.
    ``language``: the item's declared language, if any, which says whether its capitals mark
    names (``names.capitals_mark_names``)."""
    text = cluster.without_boilerplate(text)
    capitals = names.capitals_mark_names(title, text, language)
    terms = names.extract(title, text, plain_word, capitals)
    text = flattened(text)
    # Where capitals mark no names, the words they would have told apart are no plain words of
    # the model's language either: a German item's nouns ("Polizei", "Zeugen") are all words
    # its tokenizer splits, and would all have looked rare.
    words = rare_words(title, text, terms) if capitals else {}
    if not words and all(map(names.is_figure, terms.words)):
        # Figures are evidence only beside a name or a rare word. Alone (the day of the month,
        # a count of victims) they are what any report of that day may carry: a Chinese budget
        # report and a Shenzhen fire shared "3月5日" and "2025年", and nothing told them apart.
        terms = Terms(())
    signature = cluster.signature(title, text) if signed else None
    weights = {key: weight for key, weight in words.values()}
    keys, leading = terms.keys, terms.leading_keys
    features = Features(
        semantic.embedder().embed(title, text), keys, signature, weights, None if leading == keys else leading,
        terms.headline_keys,
    )  # fmt: skip
    return features, Terms((*terms.words, *words))


def flattened(text: str) -> str:
    """``text`` as the model and the rare words read it (``features_of``): the newlines that end
    its paragraphs for the names are spaces, as in ``Item.text``."""
    return collapse(text) if "\n" in text else text


def plain_word(word: str) -> bool:
    """Whether a case-folded word is a plain word of the language: one the model's tokenizer
    holds whole ("the", "after", "students", "police"), where a name mostly needs pieces
    ("kalmaria", "putin", "germany"): its vocabulary is made of the words its training text
    used most, and written in small letters those are rarely names."""
    return semantic.embedder().pieces([word]) == [1]


def rare_words(title: str, text: str, terms: Terms) -> dict[str, tuple[int, float]]:
    """The plain words of an item (``names.plain_words``) rare enough to be evidence: each
    stem with its term hash and what it weighs, ``RARE_WORD_WEIGHT`` for a word the model's
    tokenizer splits into ``RARE_PIECES`` or more tokens, half of it for two, nothing (left
    out) for a word it holds whole. At most ``MAX_RARE_WORDS``, the rarest first, then in the
    order they appear. What a word weighs never changes, so it is worked out once per process
    (``RARE_WORDS_REMEMBERED``): news reuses its words."""
    known: dict[str, Rarity] = {}
    missing: list[str] = []
    plain = names.plain_words(title, text, terms)
    for word in plain:
        hit = _rarity.get(word)
        if hit is None:
            missing.append(word)
        else:
            known[word] = hit
    if missing:
        # The tokenizer splits every word of another alphabet alike: it tells no rarity there,
        # and is not asked.
        latin = [word for word in missing if _LATIN_WORD.fullmatch(word)]
        pieces_of = dict(zip(latin, semantic.embedder().pieces(latin), strict=True)) if latin else {}
        for word in missing:
            pieces = pieces_of.get(word, 0)
            weight = RARE_WORD_WEIGHT if pieces >= RARE_PIECES else RARE_WORD_WEIGHT / 2 if pieces == 2 else 0.0
            stem = names.stem(word)
            known[word] = (stem, names.term_key(stem), weight)
        if len(_rarity) + len(missing) > RARE_WORDS_REMEMBERED:
            _rarity.clear()
        _rarity.update((word, known[word]) for word in missing)
    found: dict[str, tuple[int, float]] = {}
    for rank in (RARE_WORD_WEIGHT, RARE_WORD_WEIGHT / 2):
        for word in plain:
            stem, key, weight = known[word]
            if weight == rank and stem not in found:
                found[stem] = (key, weight)
                if len(found) == MAX_RARE_WORDS:
                    return found
    return found


_LATIN_WORD = re.compile("[a-z\u00df-\u024f\u1e00-\u1eff]+")
"""A case-folded word in the Latin alphabet, marks and all ("aéroport", "gunfire"). The model's
tokenizer learnt its pieces from text in that alphabet: a word it splits is rare there, but it
splits every Arabic, Greek or Cyrillic word alike ("أشخاص", "persons", looked as rare as a
name), so only Latin words are told rare by it (``rare_words``)."""

MAX_RARE_WORDS = 16
"""Rare plain words an item keeps: a headline and lead of real news has about ten, and a text
made of nothing but unusual words must not make its features, and each judgement, grow with it."""
RARE_WORDS_REMEMBERED = 10_000
"""Plain words whose stem, hash and weight a process keeps (forgotten all at once when full)."""
Rarity = tuple[str, int, float]
_rarity: dict[str, Rarity] = {}


def rare_words_remembered() -> tuple[int, int]:
    """Plain words this process keeps the rarity of, and the most it keeps
    (``RARE_WORDS_REMEMBERED``), for ``bench/soak.py``'s report of bounded caches."""
    return len(_rarity), RARE_WORDS_REMEMBERED


def judge(
    item: Features,
    at: datetime,
    story: StoryProfile,
    stats: TermStats,
    weighed: Mapping[int, tuple[float, float]] | None = None,
    may_copy: bool = True,
    independent: bool = True,
) -> Judgement:
    """Weigh one item against one story, whatever the verdict (for explaining it).

    It joins when it is within ``STORY_SPAN`` of the story's start and either copies a member's
    lead (and agrees with the story's names, near its centre), or is close enough in meaning
    and shares enough rare names, agreeing with the story's. The costlier checks run only when
    the cheaper ones leave the verdict open. ``weighed``: each of the item's terms' weight when
    the story does not and when it does carry it (``item_weights``), if already computed;
    ``may_copy``: whether to compare the item's lead with the members' (see ``decide``);
    ``independent``: whether another outlet than the item's is among the members judged, without
    which only a copy joins (see the module docstring).

    A story begun more than ``STORY_SPAN`` away is refused on the time alone, and nothing else
    is weighed, not even the cosine for the explanation: the verdict cannot depend on it, and
    most stories rare names reach over ``TERM_WINDOW`` are such, which the caller then need not
    read beyond their beginning (``StoryProfile.unread``).
    """
    hours = (at - story.first_at).total_seconds() / 3600
    if beyond_span(story.first_at, at, at, story.ends_at):
        span = STORY_SPAN.total_seconds() / 3600
        if abs(hours) > span:
            why = f"more than {span:.0f} h apart: a development is a story of its own"
        else:  # within the span of its first item, so beyond that of its latest (a backlog read out of order)
            later = (story.ends_at - at).total_seconds() / 3600
            why = f"its latest item is {later:.1f} h later: a story's reports come within {span:.0f} h of each other"
        return Judgement(story.story_id, False, None, 0.0, (), hours, None, why)
    cosine = float(np.dot(item.vector, story.centroid))
    support = story.support
    weighed = weighed if weighed is not None else item_weights(item, stats)
    weights = {t: pair[t in support] for t, pair in weighed.items()}
    shared = tuple(sorted(t for t in item.terms if t in support and weights[t] > 0))
    used = story.word_support
    shared_words = tuple(sorted(w for w in item.words if w in used))
    word_weight = sum(item.words[w] * used[w] for w in shared_words)
    names_only = sum(weights[t] * support[t] for t in shared)
    name_weight = names_only + word_weight

    template_of = None  # the member whose lead phrases the item's copies, not naming what it names
    if may_copy and cosine >= COPY_MIN_COSINE and item.signature is not None:
        for index, member in enumerate(story.members):
            sig = story.signature(index)
            evidence = None if sig is None else cluster.same_story(item.signature, sig, at - member.published_at)
            if evidence is not None:
                # A lone headline (a title-only feed's item) under the member's own headline is all
                # the copy there can be: its opening may name what the member's text never repeats.
                alone = bool(item.headline) and evidence.same_headline
                nameless = not item.terms and not item.words and evidence.overlap < NAMELESS_COPY_OVERLAP
                if alone or (
                    not nameless
                    and _agreement(item, weights, story, stats, COPY_AGREEMENT)
                    and not other_subjects(item, story, weights, stats, member.features)
                ):
                    return Judgement(
                        story.story_id, True, cosine, name_weight, shared, hours, member.item_id, "",
                        shared_words, word_weight,
                    )  # fmt: skip
                template_of = member.item_id
                break
    needed, agree = names_needed(cosine, _headline_names(item, shared, weights, story))
    why_not = _ruled_out(item, story, cosine, independent)
    if not why_not and name_weight < needed:
        why_not = f"too few rare names and figures in common (< {needed:.1f} at cosine {cosine:.2f})"
    on_all_names = False
    if not why_not and not _agreement(item, weights, story, stats, agree):
        # Far more weight shared than needed: its names may agree taken all together.
        on_all_names = name_weight >= WHOLE_AGREEMENT_WEIGHT * needed and _share_of_all(item, weights, story) >= agree
        if not on_all_names:
            why_not = f"its rare names and figures mostly differ from the story's (< {agree:.2f} shared)"
    if why_not and template_of is not None:
        why_not = (
            f"its lead copies phrases from {_item(template_of)} but not its names: another instance of one "
            f"template, not a copy; as a report of its own, {why_not}"
        )
    return Judgement(
        story.story_id, not why_not, cosine, name_weight, shared, hours, None, why_not, shared_words, word_weight,
        on_all_names,
    )  # fmt: skip


def beyond_span(first_at: datetime, earliest: datetime, latest: datetime, last_at: datetime | None = None) -> bool:
    """Whether a story that began at ``first_at`` (and whose latest member was published at
    ``last_at``, if known) can take none of the items published from ``earliest`` to ``latest``:
    it began more than ``STORY_SPAN`` before the earliest, or its latest member came more than
    that after the latest. ``judge`` refuses such a story on the time alone (one item: both the
    same), and the caller need not read more of it than when it began and ended
    (``StoryProfile.unread``).

    Both ends, not only the first: a first ingest reads feed after feed, each with days of
    backlog, so a story meets items older than its first member. Measured from that member
    alone, a report 11 h before it joined, then one 11 h before that, and the story spanned
    days through its oldest reports, one development after another."""
    ends = first_at if last_at is None else max(first_at, last_at)
    return ends - latest > STORY_SPAN or earliest - first_at > STORY_SPAN


def _ruled_out(item: Features, story: StoryProfile, cosine: float, independent: bool) -> str:
    """Why an item cannot join the story as an independent report, whatever names it shares
    (see ``judge``), or an empty string."""
    if cosine < MIN_COSINE:
        return f"another topic (cosine < {MIN_COSINE})"
    if not independent:
        return "only its own outlet's items so far, which it joins only as a copy"
    if figures_differ(item, story):
        return "a headline alone whose figures differ from the story's headlines' (another instance of a series)"
    return ""


def other_subjects(
    item: Features,
    story: StoryProfile,
    weights: Mapping[int, float],
    stats: TermStats,
    copied: Features | PackedMember | None = None,
) -> bool:
    """Whether an item whose lead copies a story's phrases is another instance of one template
    rather than a copy: each side opens with a rare name or figure (``SUBJECT_WEIGHT``) that
    the other never mentions (a fire brigade's "alarm at the Kunsthaus" and "alarm at the
    Interspar", an analyst desk's "rating for Fiserv kept" and "for Vantiv"). A copy keeps its
    original's names, and a trimmed or rewritten one still mentions what the original opens
    with; one that only adds a name is still a copy, and so is one whose only new names are
    plain ("US", "New York"). One that only changes a figure is not: another outlet's still
    joins as a report of the event, on its names and meaning, and an outlet's own is another
    instance of its series, as one fetch's are (``storybatch``). Agreement alone
    (``COPY_AGREEMENT``) misses these when a template's own names outnumber its subject's, as
    in the first fetch of an outlet, before the stream shows its template's names to be
    common. ``weights``: the item's terms' weights against this story (``judge``).

    Between two headlines that came alone (title-only feeds: ``Features.headline``), nor is it
    a copy when each names someone the other (the member it copies, ``copied``) never
    mentions, however common the name: such a headline is all there is of an item, and a copy
    of it may add a name ("... in US") but does not swap one for another ("Kalmaria central
    bank raises key rate" and "Solvaria ..."), which a stream reporting on both every day
    finds no rarer than "US". Figures do not count there: a copy may update one ("death toll
    rises to 20"). Not between items with a text: their names differ in form more than in
    whom they are about ("Egyptian" against "Egypt"), and the rare names above tell them."""
    support = story.support
    if copied is not None and item.headline and (theirs := copied.headline):
        mentioned = set(copied.terms)
        if any(t not in mentioned for t in item.headline) and any(t not in item.terms for t in theirs):
            return True
    if not any(weights[t] >= SUBJECT_WEIGHT for t in item.lead_terms if t not in support):
        return False
    return any(
        stats.weight(t, True) >= SUBJECT_WEIGHT
        for t, share in story.lead_support.items()
        if share >= 0.5 and t not in item.terms
    )


def figures_differ(item: Features, story: StoryProfile) -> bool:
    """Whether a headline that came alone gives figures and the story carries none of them,
    while its own members' lone headlines give others: "Orbis Mining profit up 6%" against
    "... up 10%", "central bank raises key rate to 4%" against "... to 6%". A series
    (results, rate moves) repeats its names and changes its figures; a report of the same
    event that gives a figure gives one the story has, or is the first to give one. Not
    between items with a text: a lead's figures are too many to tell (the death toll of the
    hour, the year of a case), and its names tell enough. A lead copy may still update a
    figure (``judge`` takes a copy before this)."""
    figures = lone_headline_figures(item)
    return bool(figures) and not any(f in story.support for f in figures) and bool(story.headline_figures)


def lone_headline_figures(features: Features | PackedMember) -> frozenset[int]:
    """The figures of a headline that came alone: its terms that are not its names (it has no
    others, ``names.ALONE_WORDS``); none for an item with a text."""
    named = features.headline
    return frozenset(features.terms).difference(named) if named else frozenset()


def item_weights(item: Features, stats: TermStats) -> dict[int, tuple[float, float]]:
    """Each of the item's terms' weight as evidence against a story that does not, and one
    that does, carry it (``TermStats.weight``): the same for every story judged."""
    return {t: (stats.weight(t), stats.weight(t, True)) for t in item.terms}


def names_needed(cosine: float, headline_names: float = 0.0) -> tuple[float, float]:
    """The rare-name weight and the name agreement an independent report needs at ``cosine``
    to the story: the closer in meaning, the less the names must carry, sliding from
    (``MIN_NAME_WEIGHT``, ``MIN_AGREEMENT``) at ``WEAK_COSINE`` down to (``STRONG_NAME_WEIGHT``,
    ``STRONG_AGREEMENT``) at ``STRONG_COSINE``. ``headline_names``: the weight of the names a
    headline that came alone shares with the story (``_headline_names``): from
    ``HEADLINE_NAME_WEIGHT`` on, at ``WEAK_COSINE`` or closer, that is enough, and twice that
    below, where a report with a text needs ``MIN_NAME_WEIGHT``."""
    share = min(1.0, max(0.0, (cosine - WEAK_COSINE) / (STRONG_COSINE - WEAK_COSINE)))
    needed = MIN_NAME_WEIGHT - share * (MIN_NAME_WEIGHT - STRONG_NAME_WEIGHT)
    headline_bar = HEADLINE_NAME_WEIGHT if cosine >= WEAK_COSINE else 2 * HEADLINE_NAME_WEIGHT
    if headline_names >= headline_bar:
        needed = min(needed, headline_bar)  # which the names alone reach, so the whole weight does
    return needed, MIN_AGREEMENT - share * (MIN_AGREEMENT - STRONG_AGREEMENT)


def _headline_names(item: Features, shared: Iterable[int], weights: Mapping[int, float], story: StoryProfile) -> float:
    """The weight of the names of a headline that came alone that the story carries (each
    counted as in ``judge``): its names only, not its figures. For an item with a text, the
    weight of the story's headlines' names it carries when the story is made of lone headlines
    only (``StoryProfile.headline_names``), else 0: the bar is the same whichever of the two
    came first."""
    named = item.headline or story.headline_names
    support = story.support
    return sum(weights[t] * support[t] for t in shared if t in named) if named else 0.0


def decide(
    item: Features,
    at: datetime,
    stories: Sequence[StoryProfile],
    stats: TermStats,
    copied: Collection[int] | None = None,
    own: Collection[int] = (),
    one_outlet: Collection[int] = (),
) -> Decision:
    """The story ``item`` (published ``at``) joins among the candidate ``stories``, or None.

    The best-scoring story that accepts it wins (a copy first, then cosine plus names); ties go
    to the lowest story id so the verdict does not depend on the order candidates came in.
    ``copied``: the stories the item shares a lead-copy key with, the only ones whose members'
    leads it is compared with (None: every story's); a copy shares a key with its original.
    ``own``: the stories whose judged members all come from the item's own source, which only a
    copy joins.

    ``one_outlet``: the stories whose judged members all come from one source, whichever. One
    of them that the item would join as well, as an independent report (not a copy), is a
    fragment of the chosen story (``Decision.absorbs``): an outlet's second report of an event
    starts a story of its own when no other outlet's report came between its two (the rule
    above; a first ingest reads each feed's backlog whole, one outlet after another), and the
    item, another outlet's report close enough to both, shows them to be one event; close in
    meaning to the fragment, not only sharing names with it (``ABSORB_COSINE``). The caller
    merges those into the chosen story where it may: one no editor named.
    """
    weighed = item_weights(item, stats)
    judged = sorted(
        (
            judge(item, at, s, stats, weighed, copied is None or s.story_id in copied, s.story_id not in own)
            for s in stories
        ),
        key=lambda j: (-j.score, j.story_id),
    )
    chosen = next((j for j in judged if j.joins), None)
    # Those refused on time alone weigh nothing else: the nearest in time first, after the rest.
    timed = sorted((j for j in judged if j.cosine is None), key=lambda j: (abs(j.hours), j.story_id))
    # Of those weighed, the ones of another topic last: names an outlet puts in every item
    # ("The Next Web") give its other stories a high score at any cosine, and an explanation
    # that shows them hides the story of the same event that the names did not carry.
    refused = (j for j in judged if not j.joins and j.cosine is not None)
    topic_last = sorted(refused, key=lambda j: (j.cosine or 0.0) < MIN_COSINE)  # stable: best first within each
    misses = (*topic_last, *timed)
    fragments = [
        j
        for j in judged
        if j.joins and j is not chosen and j.copy_of is None and j.story_id in one_outlet and j.story_id not in own
    ]
    wide: list[Judgement] = []
    if fragments and chosen is not None:
        # Merged, the two stories must still span no more than ``STORY_SPAN``, as a story that
        # took their members one by one would (``judge``): each is within it of the item, but
        # one may lie before it and the other after, when a first ingest reads them out of order.
        profiles = {s.story_id: s for s in stories}
        joined = profiles[chosen.story_id]
        wide = [j for j in fragments if _span_together(at, joined, profiles[j.story_id]) > STORY_SPAN]
    close = tuple(j for j in fragments if (j.cosine or 0.0) >= ABSORB_COSINE and j not in wide)
    apart = tuple(j for j in fragments if j not in close)
    return Decision(chosen.story_id if chosen else None, chosen, misses, close, apart)


def _span_together(at: datetime, *stories: StoryProfile) -> timedelta:
    """How long an item published ``at`` and the members of ``stories`` span together."""
    return max(at, *(s.ends_at for s in stories)) - min(at, *(s.first_at for s in stories))


def own_stories(sources: Mapping[int, Iterable[object]], source: object | None) -> set[int]:
    """The stories, of those whose judged members come from ``sources`` (story -> its members'
    sources), that are ``source``'s own: all their members are its (``decide``'s ``own``). None:
    the item's source is not known, and no story is taken for its own."""
    if source is None:
        return set()
    return {story for story, members in sources.items() if all(member == source for member in members)}


def other_outlets_stories(sources: Mapping[int, Iterable[object]], source: object | None) -> set[int]:
    """The stories, of those whose judged members come from ``sources`` (story -> its members'
    sources), all of whose members come from one source other than ``source``: the stories a
    report from ``source`` may show to be fragments of another (``decide``'s ``one_outlet``).
    None: the item's source is not known, so no report is known to be another outlet's (nor is
    a story of members whose source is not known one outlet's)."""
    if source is None:
        return set()
    return {
        story
        for story, members in sources.items()
        if len(outlets := set(members)) == 1 and source not in outlets and None not in outlets
    }


def merge_targets(merges: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Where each merged story ends (story -> the story its items join) from the merges
    decided, (story, into) each: a chain (a into b, b into c) ends in its last story, and a
    cycle, which no decision makes, merges nothing."""
    into = dict(merges)
    ends = {}
    for story in into:
        target, seen = into[story], {story}
        while target in into and target not in seen:
            seen.add(target)
            target = into[target]
        if target != story:
            ends[story] = target
    return ends


def reached(
    features: Features,
    keys: Sequence[int],
    stats: TermStats,
    carriers: Mapping[int, Iterable[int]],
    by_copy: Mapping[int, Iterable[int]],
) -> dict[int, float]:
    """The stories an item reaches, with the weight of what reaches each (``rank_candidates``):
    each of its rare ``keys`` (``TermStats.keys``) the weight of that term for each story
    ``carriers`` gives it, and each of its lead-copy keys ``COPY_KEY_WEIGHT`` for each story
    ``by_copy`` gives it (only keys few enough items carry: a stock phrase reaches nothing).
    Storage and the in-memory stream look both up their own way and rank the same.

    A term weighs for a story that carries it as ``judge`` weighs it there (``own``): that
    story is not counted among the others. A name only that story carries reaches it with a
    whole name's weight, as much as ``judge`` gives it; counted as one of the others, it would
    fall short of ``MIN_KEY_WEIGHT``, and a headline that came alone, which shares one such
    name with its event's story (``HEADLINE_NAME_WEIGHT``), would never be judged against it."""
    found: dict[int, float] = {}
    for term in keys:
        weight = stats.weight(term, True)
        for story in carriers.get(term, ()):
            found[story] = found.get(story, 0.0) + weight
    if features.signature is not None:
        for key in cluster.band_keys(features.signature):
            for story in by_copy.get(key, ()):
                found[story] = found.get(story, 0.0) + COPY_KEY_WEIGHT
    return found


def rank_candidates(found: Mapping[int, float]) -> list[int]:
    """The ``MAX_CANDIDATES`` stories to judge, from ``found``: each story reached through the
    item's lookup keys and the weight of the keys that reached it (most first, then lowest id)."""
    usable = [(story, weight) for story, weight in found.items() if weight >= MIN_KEY_WEIGHT]
    ranked = sorted(usable, key=lambda kv: (-kv[1], kv[0]))
    return [story for story, _ in ranked[:MAX_CANDIDATES]]


MIN_KEY_WEIGHT = 1.0
"""Lookup weight (``reached``) a story needs to be judged: at least one name no other story
carries. A story reached with less cannot gather the names any report needs to join it, and
judging it would cost a member lookup and a decision."""

COPY_KEY_WEIGHT = 100.0
"""Lookup weight of a shared lead-copy key: a story an item may copy is always judged."""


def copied(found: Mapping[int, float]) -> set[int]:
    """The stories reached through a lead-copy key (``COPY_KEY_WEIGHT``), and the batch's own."""
    return {story for story, weight in found.items() if weight >= COPY_KEY_WEIGHT or story < 0}


def _agreement(item: Features, weights: Mapping[int, float], story: StoryProfile, stats: TermStats, bar: float) -> bool:
    """Whether an item's rare names and figures agree with the story's at ``bar`` (0..1): of the
    rare weight of the item's leading names (headline and the lead's opening), the share the
    story carries, or of the story's leading names, the share the item also leads with, reaches
    it. A side whose leading names are too plain to tell (less than ``AGREEMENT_FLOOR``: the
    countries of a busy week) is weighed on all its names instead, and only a side too plain
    even so agrees with anything: look-alikes from one template open with the same common names
    and differ in the ones that follow.

    Leading names, not all: the opening says who did what where, and two reports of one event
    name the same there; further down each outlet picks its own background (an earlier
    incident, a spokesman, a second city), which says nothing against the event being one.
    Either direction suffices, so a report naming only part of a story's event agrees with it
    (and the story's side, the costlier, is weighed only when the item's falls short).
    The story's opening names count in full where the item opens with them too, and by
    ``LATER_NAME_SHARE`` where it names them only further down: there a report of a development
    recalls the story's event ("a week after ..."), but so does an outlet whose opening sets the
    scene before naming who and where. An item that names all of them only there agrees just
    as much as a report needs where its meaning is far from the story's (``MIN_AGREEMENT``).
    (``judge`` weighs all of an item's names, not only its opening, when it shares far more
    than it needs: ``WHOLE_AGREEMENT_WEIGHT``.)"""
    return _item_agreement(item, weights, story) >= bar or _story_agreement(item, story, stats) >= bar


def _item_agreement(item: Features, weights: Mapping[int, float], story: StoryProfile) -> float:
    """The item's side of ``_agreement``: of the rare weight of its leading names (all its
    names if those are too plain, ``_share_of_all``), the share the story carries; 1.0 if all
    are too plain."""
    support = story.support
    mine = item.lead_terms
    own = sum(weights[t] for t in mine)
    if own < AGREEMENT_FLOOR:  # an opening too plain to tell: all its names
        return _share_of_all(item, weights, story)
    return sum(weights[t] * support.get(t, 0.0) for t in mine) / own


def _share_of_all(item: Features, weights: Mapping[int, float], story: StoryProfile) -> float:
    """Of the rare weight of all the item's names, the share the story carries; 1.0 if they
    are too plain to tell (less than ``AGREEMENT_FLOOR``)."""
    support = story.support
    own = sum(weights.values())
    return sum(weights[t] * support.get(t, 0.0) for t in item.terms) / own if own >= AGREEMENT_FLOOR else 1.0


def _story_agreement(item: Features, story: StoryProfile, stats: TermStats) -> float:
    """The story's side of ``_agreement``: of the rare weight of its leading names (all its
    names if those are too plain), the share the item names, in full where it opens with them;
    1.0 if all are too plain."""
    lead, opening, theirs = story.lead_support, item.lead_terms, stats.story_weight(story)
    if theirs < AGREEMENT_FLOOR:
        lead, opening, theirs = story.support, item.terms, stats.story_weight(story, leading=False)
        if theirs < AGREEMENT_FLOOR:
            return 1.0
    named = item.terms
    return (
        sum(
            stats.weight(t, True) * share * (1.0 if t in opening else LATER_NAME_SHARE)
            for t, share in lead.items()
            if t in named
        )
        / theirs
    )
