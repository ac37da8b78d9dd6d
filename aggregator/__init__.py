"""aggregator: polls news feeds, stores each item once, republishes curated feeds."""

__version__ = "0.1.0"
