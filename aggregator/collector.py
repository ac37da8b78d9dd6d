"""How often the garbage collector runs in a process that polls.

CPython's cyclic collector looks at the youngest objects after every 700 net allocations of
containers, and every hundred of those looks at all of them. That default suits a short
program. A polling process is neither short nor small: the story matcher keeps tens of
thousands of decoded members, profiles and counts between polls (``storymatch``), and judging
one new item allocates hundreds of short-lived dicts, tuples and judgements. At the default
pace the collector keeps walking objects that stay alive, in the writer's thread, which is
the first ingest's bottleneck (``bench/ingest.py --stream stock`` prints its CPU).

Reference counting frees almost all of the pipeline's garbage the moment it is dropped; the
collector is only there for reference cycles, which the pipeline seldom makes. Collecting
young objects after ``YOUNG_ALLOCATIONS`` allocations instead of 700 therefore costs little
memory. The older generations keep their default ratios to the youngest, so full collections
become rarer by the same factor.
"""

from __future__ import annotations

import gc

YOUNG_ALLOCATIONS = 10_000
"""Net container allocations between collections of the youngest generation (default 700)."""


def pace_for_service() -> None:
    """Set this process's collector to the service's pace (see the module docstring). Called
    where the service starts (``aggregator run``, ``worker``, ``serve``) and in ``poll``. Not in
    the parse workers: they keep little between documents, and their time did not change with it."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_ALLOCATIONS, middle, old)
