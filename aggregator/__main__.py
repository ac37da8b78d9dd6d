"""Allow ``python -m aggregator``."""

from aggregator.cli import main

raise SystemExit(main())
