"""A templated news stream: many events told in the same stock words, and true copies of some.

Wire services and ministries write most announcements from a handful of templates (a meeting, an
aid package, a statement, results, a rate decision, a match): the same phrases, with other
actors, places, figures and days. A matcher that counts shared phrases merges them; one that
decides through a single member chains them. This generator makes such a stream, reproducibly
from a seed, for ``bench/dedup.py`` (thousands of items) and the tests (a few dozen):

* each *event* fills one template with its own people, country, city, figures and weekday, and
  no two events close in time share more than one of their names;
* an event is reported by its *original* and by *copies* from other outlets within hours:
  a rewritten headline, a lead trimmed to its first sentence, or an edited lead (US/UK spelling,
  "on Tuesday" -> "Tuesday", a clause dropped, a word swapped).

Every item carries its event as the label.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

FIRST = (
    "Anna", "Boris", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Karim", "Lena",
    "Marco", "Nadia", "Omar", "Paula", "Rafael", "Sofia", "Tomas", "Uma", "Viktor", "Wen", "Yara", "Zoltan",
)  # fmt: skip
LAST_A = ("Ber", "Cal", "Dor", "Fen", "Gar", "Hal", "Kor", "Lin", "Mar", "Nov", "Pet", "Ros", "Sal", "Tor", "Val",
          "Wil", "Yan", "Zan", "Bri", "Dra")  # fmt: skip
CITY_END = ("", "ton", "by", "ford", "mouth", "wick", "stead", "vale")
LAST_MID = ("", "a", "en", "ol", "ir", "us", "ar", "et")
LAST_B = ("ovic", "enko", "sson", "ardi", "etti", "mann", "ström", "elli", "ova", "inger", "ado", "ez")
COUNTRIES = ("Aldoria", "Belmaris", "Corvania", "Dravonia", "Estavia", "Fenland", "Galdora", "Hestria", "Istovia",
             "Jorvania", "Kalmaria", "Lostria", "Morvania", "Nordavia", "Ostrava", "Pelaria", "Quellin", "Rostavia",
             "Solvaria", "Trelavia", "Umbria Nova", "Valdoria", "Westmark", "Xandria", "Yselmark", "Zerovia",
             "Arcadia Minor", "Brevonia", "Calvaria", "Delmora")  # fmt: skip
CITY_A = ("Port", "San", "New", "Saint", "Lake", "Fort", "North", "East", "Old", "Upper")
CITY_B = ("Aven", "Brel", "Castor", "Delving", "Elmor", "Farrow", "Glen", "Harrow", "Ivel", "Jaspar", "Kestrel",
          "Lorne", "Merrow", "Norrin", "Oswin", "Pellam", "Quarry", "Ravel", "Sorrel", "Tavin")  # fmt: skip
COMPANIES = ("Arvex", "Bolt Dynamics", "Cendra", "Dunmore Steel", "Eltrix", "Fabrino", "Gantry Air", "Helix Pharma",
             "Ironvale", "Juno Motors", "Kappa Foods", "Lumen Grid", "Maravel Bank", "Nexo Telecom", "Orbis Mining",
             "Pratt Shipping", "Quorra Energy", "Rondell", "Sylvan Paper", "Trionic")  # fmt: skip
TOPICS = ("energy security", "trade", "migration", "defence cooperation", "climate policy", "food security",
          "cross-border infrastructure", "fisheries", "debt relief", "water rights")  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
OUTLETS = tuple(f"{a} {b}" for a in ("Daily", "Morning", "Evening", "Metro", "Coastal", "Valley", "Capital",
                                     "Northern", "Southern", "Global", "City", "Harbour")
                for b in ("Herald", "Post", "Times", "Courier", "Ledger", "Gazette", "Star", "Tribune", "Monitor",
                          "Record"))  # fmt: skip

TEMPLATES: dict[str, tuple[tuple[str, ...], str]] = {
    "meeting": (
        (
            "{a} and {b} hold talks in {city} on {topic}",
            "{country_a} and {country_b} leaders meet in {city}",
            "{a_last} meets {b_last} for talks on {topic}",
        ),
        "{a}, the president of {country_a}, met {b}, the prime minister of {country_b}, in {city} on {day} for "
        "talks on {topic}, officials said. The two leaders agreed to set up a joint working group and to meet again "
        "before the end of the year, according to a statement released after the meeting. {a_last} said the talks "
        "had been constructive and that both sides would continue to work closely together on {topic}.",
    ),
    "package": (
        (
            "{country_a} announces {n1} billion aid package for {country_b}",
            "{country_a} pledges {n1} billion to {country_b}",
            "{country_b} to receive {n1} billion from {country_a}",
        ),
        "The government of {country_a} announced on {day} an aid package worth {n1} billion dollars for "
        "{country_b}, the finance minister, {a}, told reporters in {city}. The package includes {n2} million "
        "dollars in emergency support and will be disbursed over the next three years, the minister said. {b}, "
        "the ambassador of {country_b}, welcomed the announcement and said the support would make a real "
        "difference.",
    ),
    "statement": (
        (
            "{country_a} foreign ministry condemns attack in {city}",
            "{country_a} condemns {city} attack",
            "{a_last} calls {city} attack unacceptable",
        ),
        "The foreign ministry of {country_a} said in a statement on {day} that it strongly condemned the attack in "
        "{city} which killed {n2} people and injured many more. Foreign minister {a} called on all parties to "
        "exercise restraint and to respect international law, the statement said. The ministry also expressed its "
        "condolences to the families of the victims and to the people of {country_b}.",
    ),
    "results": (
        (
            "{company} reports {n1}% rise in quarterly profit",
            "{company} profit up {n1}%",
            "{company} beats forecasts as profit climbs {n1}%",
        ),
        "{company} reported on {day} a {n1}% rise in quarterly profit to {n2} million dollars, helped by strong "
        "demand in {country_a} and lower costs, the company said in a statement. Chief executive {a} said the "
        "company expected demand to remain strong for the rest of the year and confirmed its full-year outlook. "
        "Shares of the company rose in early trading in {city}.",
    ),
    "rates": (
        (
            "{country_a} central bank raises key rate to {n1}%",
            "{country_a} lifts interest rate to {n1}%",
            "Central bank of {country_a} hikes to {n1}%",
        ),
        "The central bank of {country_a} raised its key interest rate to {n1}% on {day}, its governor {a} said at "
        "a news conference in {city}, citing inflation that remained well above the bank's target. The bank said "
        "it would continue to monitor the situation closely and was ready to act again if needed. Economists had "
        "expected the decision, which follows {n2} increases since last year.",
    ),
    "match": (
        (
            "{country_a} beat {country_b} {n3}-{n4} in {city}",
            "{country_a} win {n3}-{n4} against {country_b}",
            "{a_last} scores as {country_a} defeat {country_b}",
        ),
        "{country_a} beat {country_b} {n3}-{n4} in a qualifying match in {city} on {day}, with {a} scoring the "
        "decisive goal in the second half in front of {n2} thousand fans. The result keeps {country_a} on course "
        "for the finals, while {country_b} must now win their last two games, the coach, {b}, told reporters "
        "after the match.",
    ),
}
_EDITS = (
    ("defence", "defense"), ("organise", "organize"), (" on {day}", " {day}"), ("officials said", "officials say"),
    ("told reporters", "said"), ("strongly ", ""), ("in early trading", "early on"), ("closely ", ""),
)  # fmt: skip


@dataclass(frozen=True)
class StreamItem:
    id: str
    event: str
    kind: str  # original | rewritten-headline | trimmed | edited
    template: str
    outlet: str
    title: str
    text: str
    url: str
    published_at: datetime


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST_A)}{rng.choice(LAST_MID)}{rng.choice(LAST_B)}"


NEAR_SECONDS = 48 * 3600
"""Events closer than this share at most one name (``generate``'s ``distinct``)."""


def generate(
    events_per_day: int = 180,
    days: int = 7,
    *,
    seed: int = 13,
    copies: tuple[int, int] = (0, 7),
    start: datetime = datetime(2026, 3, 2, tzinfo=UTC),
    templates: tuple[str, ...] = tuple(TEMPLATES),
    distinct: bool = True,
) -> list[StreamItem]:
    """The stream, in publication order. ``distinct=False`` skips the check that events close
    in time share at most one name (a stream for load, not for scoring: much faster)."""
    rng = random.Random(seed)
    items: list[StreamItem] = []
    recent: list[float] = []  # each event's time, by number, in POSIX seconds: cheap to compare
    by_name: dict[str, list[int]] = {}  # name -> the events that carry it
    for number in range(events_per_day * days):
        day_index, _ = divmod(number, events_per_day)
        at = start + timedelta(days=day_index, seconds=rng.randrange(0, 20 * 3600))
        template = templates[number % len(templates)]
        # Events of three days back or more are at least 52 h away (each falls in the first 20 h
        # of its day): the check need not read them, which kept it quadratic in the stream.
        oldest = max(0, day_index - 2) * events_per_day
        seconds = at.timestamp()
        for _attempt in range(50 if distinct else 1):
            slots = _slots(rng, at)
            fields = ("a_last", "b_last", "country_a", "country_b", "city", "company")
            names = frozenset(word for k in fields for word in slots[k].split()) - set(CITY_A)
            shared = Counter(
                other
                for name in (names if distinct else ())
                for other in _since(by_name.get(name, []), oldest)
                if abs(recent[other] - seconds) < NEAR_SECONDS
            )
            if not distinct or all(count <= 1 for count in shared.values()):
                break
        for name in names:
            by_name.setdefault(name, []).append(len(recent))
        recent.append(seconds)
        event = f"{template}-{number:05d}"
        headlines, lead = TEMPLATES[template]
        outlet = rng.choice(OUTLETS)
        title = headlines[0].format(**slots)
        text = lead.format(**slots)
        items.append(_item(event, "original", template, outlet, title, text, at, len(items)))
        for _ in range(rng.randint(*copies)):
            kind = rng.choice(("rewritten-headline", "trimmed", "edited"))
            copy_title, copy_text = title, text
            if kind == "rewritten-headline":
                copy_title = rng.choice(headlines[1:]).format(**slots)
            elif kind == "trimmed":
                copy_text = text.split(". ")[0] + "."
            else:
                for old, new in rng.sample(_EDITS, 3):
                    copy_text = copy_text.replace(old.format(**slots), new.format(**slots))
                copy_text = copy_text.rsplit(". ", 1)[0] + "."
            when = at + timedelta(seconds=rng.randrange(60, 6 * 3600))
            copy_outlet = rng.choice(OUTLETS)
            items.append(_item(event, kind, template, copy_outlet, copy_title, copy_text, when, len(items)))
    items.sort(key=lambda i: (i.published_at, i.id))
    return items


def _since(events: list[int], oldest: int) -> list[int]:
    """The events numbered ``oldest`` or later of a name's (kept in the order they were made)."""
    return events[bisect.bisect_left(events, oldest) :]


def _slots(rng: random.Random, at: datetime) -> dict[str, str]:
    a, b = person(rng), person(rng)
    country_a, country_b = rng.sample(COUNTRIES, 2)
    return {
        "a": a,
        "b": b,
        "a_last": a.split()[-1],
        "b_last": b.split()[-1],
        "country_a": country_a,
        "country_b": country_b,
        "city": f"{rng.choice(CITY_A)} {rng.choice(CITY_B)}{rng.choice(CITY_END)}",
        "company": rng.choice(COMPANIES),
        "topic": rng.choice(TOPICS),
        "day": DAYS[at.weekday()],
        "n1": str(rng.choice((1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10, 12, 15))),
        "n2": str(rng.randrange(3, 900)),
        "n3": str(rng.randrange(1, 5)),
        "n4": str(rng.randrange(0, 3)),
    }


def _item(event: str, kind: str, template: str, outlet: str, title: str, text: str, at: datetime, n: int) -> StreamItem:
    slug = outlet.lower().replace(" ", "")
    return StreamItem(f"t{n:06d}", event, kind, template, outlet, title, text, f"https://{slug}.example/{n}", at)
