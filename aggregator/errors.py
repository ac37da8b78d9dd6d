"""The one exception tree of aggregator.

Every error a user can cause or meet at run time is one of these; a third-party
exception never escapes a stage unwrapped, so the CLI can print one clear line
(and pick the exit code) without ever showing a traceback for an expected error::

    AggregatorError
    ├── ConfigError          feeds.yaml is unreadable or invalid (carries file:line messages)
    ├── UsageError           a command's arguments name something that does not exist
    ├── FetchError           one source could not be fetched (carries the source's URL)
    │   ├── BlockedAddressError   the URL resolves to a private/loopback/metadata address
    │   └── ResponseTooLargeError the body exceeded the size cap
    ├── ParseError           one source's body is not a feed we can read
    ├── StorageError         the database refused or is unreachable
    │   └── SchemaError      the database schema is newer than this code knows
    └── PublishError         an output could not be rendered or written
"""

from __future__ import annotations

MAX_REASON = 200
"""Characters of one reason at most (``one_line``)."""


def one_line(reason: str) -> str:
    """An error's reason as one line of at most ``MAX_REASON`` characters: it goes into a log
    line and the sources table. Here rather than beside the parser, whose reasons are most of
    them, so that stages outside the parse workers need not import feedparser to use it."""
    text = " ".join(reason.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


class AggregatorError(Exception):
    """Root of every error aggregator raises on purpose."""


class ConfigError(AggregatorError):
    """The configuration is invalid; ``problems`` holds one ``file:line: field: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(AggregatorError):
    """The user asked for something that does not exist (exit code 1, like a bad argument)."""


class FetchError(AggregatorError):
    """A source could not be fetched. ``retryable`` is False only for permanent failures."""

    def __init__(self, url: str, message: str, *, retryable: bool = True) -> None:
        self.url = url
        self.message = message
        self.retryable = retryable
        super().__init__(f"{url}: {message}")


class BlockedAddressError(FetchError):
    """The URL points into a network we refuse to reach (SSRF guard).

    Retryable: the operator can lift the guard (settings or the source's flag), and the
    source must then simply work on its next poll, not stay retired.
    """


class ResponseTooLargeError(FetchError):
    """The response body (after decompression) exceeded the configured cap."""


class ParseError(AggregatorError):
    """The body could not be read as RSS, Atom, RDF or JSON Feed."""


class StorageError(AggregatorError):
    """The database could not be reached or refused a statement.

    ``transient`` marks failures worth retrying as they are: a deadlock or serialization
    failure between concurrent workers, or SQLite's "database is locked". ``data_refused``
    marks a statement refused for the values it carried (a value the column cannot hold, a
    violated constraint): the fault of what one source sent, not of the database, so the
    pipeline fails that source alone rather than the run.
    """

    def __init__(self, message: str, *, transient: bool = False, data_refused: bool = False) -> None:
        self.transient = transient
        self.data_refused = data_refused
        super().__init__(message)


class SchemaError(StorageError):
    """The database was migrated by a newer aggregator; refusing to touch it."""


class PublishError(AggregatorError):
    """An output could not be rendered or written to the output directory."""
