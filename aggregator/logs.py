"""Log formatting: human lines by default, one JSON object per line with ``--log-format json``.

Every line about a source carries ``source`` and ``url`` (passed as ``extra=``), so a log
pipeline can filter one source's history without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from aggregator.plaintext import visible

CONTEXT_FIELDS = ("source", "url", "outcome", "status")
NOISY_LOGGERS = ("apscheduler", "alembic", "aiohttp", "uvicorn.error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if (value := record.__dict__.get(name)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class OneLine(logging.Filter):
    """Join a message's lines into one (" / "): a library's multi-line warning (psycopg's
    "error ignored terminating <Pipeline>: ... / server closed the connection unexpectedly /
    ...") would otherwise read as several log entries, the later ones with no time or level.
    A traceback (``exc_info``) keeps its lines: it is a bug report. Control characters are
    written out (``plaintext.visible``): much of a message comes from feed servers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = message
        if "\n" in shown:
            shown = " / ".join(line.strip() for line in shown.splitlines() if line.strip())
        shown = visible(shown)
        if shown != message:
            record.msg, record.args = shown, ()
        return True


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(OneLine())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # Their INFO lines (every scheduler tick, every migration step) drown out ours.
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
