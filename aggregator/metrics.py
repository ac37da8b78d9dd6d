"""Prometheus metrics: what this process did (counters) and what the database says (gauges).

Counters and histograms are recorded by the pipeline in the process that polls; the
gauges are read from the database at scrape time, so every ``serve`` process reports
the same totals however many workers there are. The metric objects are created
unregistered and attached to a registry per HTTP app, so tests (and a process that
builds several apps) never trip over duplicate registrations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregator.errors import StorageError
from aggregator.store.repository import Store

POLLS = Counter("aggregator_polls", "Polls by outcome", ["outcome"], registry=None)
FETCH_SECONDS = Histogram(
    "aggregator_fetch_duration_seconds",
    "Time from request to full body (or failure)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=None,
)
ITEMS = Counter("aggregator_items_ingested", "Items stored by this process", ["kind"], registry=None)
REBUILDS = Counter("aggregator_output_rebuilds", "Renderings whose bytes changed", ["slug", "format"], registry=None)
TICKS = Counter("aggregator_scheduler_ticks", "Scheduler ticks that ran", registry=None)
# "fetch" and "parse" are the expected failures of the real web; any other value is the class
# of an unexpected exception caught at the pipeline's per-source boundary (a bug to look at).
SOURCE_ERRORS = Counter("aggregator_source_errors", "Failed polls by error class", ["error_class"], registry=None)
# Group commit (``groupcommit``): how many fetch results each committed transaction held, how
# long it took from opening to commit, and how many batches failed and were redone one by one.
COMMIT_BATCH_SIZE = Histogram(
    "aggregator_commit_batch_size",
    "Fetch results per committed ingest transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=None,
)
COMMIT_SECONDS = Histogram(
    "aggregator_commit_duration_seconds",
    "Time from opening an ingest transaction to its commit (retries included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=None,
)
COMMIT_BATCH_RETRIES = Counter(
    "aggregator_commit_batch_retries", "Batches rolled back and committed again result by result", registry=None
)
# Story decisions take turns across transactions and workers (``storymatch``): how long each
# transaction with new items waited for its turn. Growing waits mean the workers' ingest is
# bounded by deciding stories, not by fetching or parsing.
STORY_TURN_SECONDS = Histogram(
    "aggregator_story_turn_wait_seconds",
    "Time an ingest transaction with new items waited for its turn to decide stories",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=None,
)
OWN_METRICS: tuple[Collector, ...] = (
    POLLS,
    FETCH_SECONDS,
    ITEMS,
    REBUILDS,
    TICKS,
    SOURCE_ERRORS,
    COMMIT_BATCH_SIZE,
    COMMIT_SECONDS,
    COMMIT_BATCH_RETRIES,
    STORY_TURN_SECONDS,
)


class StoreCollector(Collector):
    """Totals read from the database at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.store.stats(datetime.now(UTC))
        except StorageError:
            return
        for name, value, doc in (
            ("aggregator_sources", stats.sources, "Sources in the configuration"),
            ("aggregator_sources_failing", stats.failing, "Sources whose last poll failed"),
            ("aggregator_sources_retired", stats.retired, "Sources retired (410 Gone or a configured limit)"),
            ("aggregator_items", stats.items, "Items stored"),
            ("aggregator_stories", stats.stories, "Distinct stories stored"),
            ("aggregator_sources_due", stats.due, "Sources due now and not yet claimed"),
            ("aggregator_scheduler_lag_seconds", stats.lag_seconds, "How late the most overdue source is"),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


def registry_for(store: Store, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in (*OWN_METRICS, StoreCollector(store), *extra):
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
