"""Loading and validating ``feeds.yaml`` into one typed ``Config``.

Every default lives here as a named constant, and every problem is reported as
``file:line: field: message`` — one line per problem, all of them at once — so a
user fixing a broken edit sees everything wrong in one go and never a traceback.
Line numbers come from PyYAML's node marks: we compose the document once, record
the line of every key and list element, then map pydantic's error locations back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from aggregator import __version__
from aggregator.errors import ConfigError
from aggregator.records import SourceSpec

# --- Defaults, in one place -------------------------------------------------------------
CONFIG_FILENAME = "feeds.yaml"
CONFIG_ENV = "AGGREGATOR_CONFIG"
DATABASE_ENV = "AGGREGATOR_DATABASE_URL"
DATA_DIR_ENV = "AGGREGATOR_DATA_DIR"  # what --data-dir sets, and what the systemd unit sets
DEFAULT_DATA_DIR = "data"  # relative to the working directory; systemd's $STATE_DIRECTORY wins
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_PUBLIC_URL = "http://localhost:8080"
DEFAULT_INTERVAL = timedelta(minutes=30)
MIN_INTERVAL = timedelta(minutes=5)  # never poll more often unless a source says so itself
MAX_INTERVAL = timedelta(hours=24)  # hints (ttl, max-age, adaptive) never push past this
MAX_BACKOFF = timedelta(hours=24)
DEFAULT_CONCURRENCY = 32
DEFAULT_PER_HOST_CONCURRENCY = 2
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_TOTAL_TIMEOUT = 60.0
DEFAULT_MAX_BODY_BYTES = 15 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_MAX_ENTRIES = 50
# Entries led by one source's undated items that may rank among the dated news of an output;
# the rest follow every dated entry. An undated item sorts by when it was first seen, so a
# feed without dates would otherwise fill the top of an output each time it is first polled.
DEFAULT_UNDATED_CAP = 3
DEFAULT_TICK_SECONDS = 5.0
DEFAULT_RETENTION = timedelta(days=90)  # items older than this go, unless an output still shows them
FETCH_LOG_RETENTION = timedelta(days=14)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")


def parse_duration(value: Any) -> timedelta:
    """Accept ``1800``, ``"30m"``, ``"2h"``, ``"1d"`` — people write intervals both ways."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("not a duration (use e.g. 30m, 2h, 1d or seconds)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("not a duration (use e.g. 30m, 2h, 1d or seconds)")
    if seconds <= 0:
        raise ValueError("must be positive")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    if any(c.isspace() or not c.isprintable() for c in parts.netloc):
        raise ValueError(f"not an http(s) URL: its host {parts.netloc!r} has a space or a control character")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError:
        raise ValueError(f"not an http(s) URL: the port of {parts.netloc!r} is not a number from 0 to 65535") from None
    return value.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Settings(_Strict):
    """The ``settings`` section. Paths are relative to the working directory."""

    data_dir: str | None = None
    database: str | None = None
    output_dir: str | None = None
    listen: str = DEFAULT_LISTEN
    public_url: str = DEFAULT_PUBLIC_URL
    user_agent: str | None = None
    default_interval: Duration = DEFAULT_INTERVAL
    min_interval: Duration = MIN_INTERVAL
    max_interval: Duration = MAX_INTERVAL
    max_backoff: Duration = MAX_BACKOFF
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=1024)
    per_host_concurrency: int = Field(DEFAULT_PER_HOST_CONCURRENCY, ge=1, le=64)
    connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0)
    read_timeout: float = Field(DEFAULT_READ_TIMEOUT, gt=0)
    total_timeout: float = Field(DEFAULT_TOTAL_TIMEOUT, gt=0)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_redirects: int = Field(DEFAULT_MAX_REDIRECTS, ge=0, le=20)
    allow_private_networks: bool = False
    parse_workers: int | None = Field(None, ge=0, le=64)
    tick_seconds: float = Field(DEFAULT_TICK_SECONDS, gt=0)
    retire_after: Duration | None = None
    status_page: bool = True
    websub_hub: str | None = None
    retention: Duration | None = DEFAULT_RETENTION
    fetch_log_retention: Duration = FETCH_LOG_RETENTION
    # How items of different outlets are linked into one story beyond a shared URL: "semantic"
    # (copies, and independent reports by meaning, names, figures and time), "lexical" (copied
    # text only, no model), "off" (shared URLs only).
    story_matching: Literal["semantic", "lexical", "off"] = "semantic"

    @field_validator("story_matching", mode="before")
    @classmethod
    def _story_matching(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` as false: that is what the user wrote.
        return "off" if value is False else value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return _http_url(value).rstrip("/")

    @field_validator("websub_hub")
    @classmethod
    def _hub(cls, value: str | None) -> str | None:
        return _http_url(value) if value is not None else None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8080")
        return value

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir_choice[0]

    @property
    def data_dir_choice(self) -> tuple[Path, str]:
        """The data directory and what chose it, in the one order every command and the
        service follow: --data-dir / $AGGREGATOR_DATA_DIR, then ``settings.data_dir``, then
        systemd's $STATE_DIRECTORY, then ./data."""
        if env := os.environ.get(DATA_DIR_ENV):
            return Path(env), f"--data-dir or ${DATA_DIR_ENV}"
        if self.data_dir:
            return Path(self.data_dir), "settings.data_dir"
        # Under systemd, StateDirectory= hands us a writable place; use it.
        if state := os.environ.get("STATE_DIRECTORY"):
            return Path(state.split(":")[0]), "$STATE_DIRECTORY"
        return Path(DEFAULT_DATA_DIR), "the default, ./data in the working directory"

    @property
    def database_url(self) -> str:
        if url := os.environ.get(DATABASE_ENV):
            return url
        if self.database:
            return self.database
        return f"sqlite:///{self.resolved_data_dir / 'aggregator.db'}"

    @property
    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self.resolved_data_dir / "feeds"

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def effective_user_agent(self) -> str:
        # Identify ourselves and where to complain: publishers ban anonymous pollers.
        return self.user_agent or f"aggregator/{__version__} (+{self.public_url})"


class Source(_Strict):
    """One entry of ``sources``."""

    name: str = Field(min_length=1, max_length=200)
    url: str
    tags: tuple[str, ...] = ()
    interval: Duration | None = None
    enabled: bool = True
    allow_private_network: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


RuleField = Literal["title", "summary", "content", "categories", "author", "link"]


class Rule(_Strict):
    """An include/exclude rule: case-insensitive keywords, or a regular expression."""

    keywords: tuple[str, ...] | None = None
    pattern: str | None = None
    fields: tuple[RuleField, ...] = ("title", "summary")

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(word.strip() for word in value)):
            raise ValueError("needs at least one keyword, and no empty one: this rule would match nothing")
        return value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one field to search (title, summary, content, categories, author, link)")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if (self.keywords is None) == (self.pattern is None):
            raise ValueError("a rule needs exactly one of 'keywords' or 'pattern'")
        return self


class Output(_Strict):
    """One entry of ``outputs``: a curated feed published at /feeds/<slug>.atom."""

    slug: str
    title: str = Field(min_length=1)
    subtitle: str | None = None
    icon: str | None = None
    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    include: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()
    language: str | None = None
    max_age: Duration | None = None
    max_entries: int = Field(DEFAULT_MAX_ENTRIES, ge=1, le=10_000)
    per_source_cap: int | None = Field(None, ge=1)
    undated_cap: int = Field(DEFAULT_UNDATED_CAP, ge=0)
    # newest: newest stories first. coverage: within max_age, stories carried by more outlets
    # first, ties newest first.
    order: Literal["newest", "coverage"] = "newest"

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.fullmatch(value):  # match() with "$" took "world\n"
            raise ValueError("use lowercase letters, digits and '-' (it becomes a URL path)")
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a language code such as 'en'; leave it out to keep items in any language")
        return value

    @model_validator(mode="after")
    def _coverage_window(self) -> Output:
        if self.order == "coverage" and self.max_age is None:
            raise ValueError("order: coverage needs max_age (the window in which coverage is compared)")
        return self


class Config(_Strict):
    settings: Settings = Field(default_factory=lambda: Settings())
    sources: tuple[Source, ...] = ()
    outputs: tuple[Output, ...] = ()

    def source_specs(self) -> list[SourceSpec]:
        """The sources as storage takes them (``Store.sync_sources``): plain values, in config order."""
        return [
            SourceSpec(
                name=s.name,
                url=s.url,
                tags=s.tags,
                interval_seconds=int(s.interval.total_seconds()) if s.interval else None,
                enabled=s.enabled,
                allow_private=s.allow_private_network,
            )
            for s in self.sources
        ]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from (for messages and reloads)."""

    config: Config
    path: Path


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config`` wins, then ``$AGGREGATOR_CONFIG``, then ./feeds.yaml."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    return Path(CONFIG_FILENAME)


def load_config(path: str | os.PathLike[str] | None = None) -> LoadedConfig:
    """Read and validate the config; raise ``ConfigError`` listing every problem."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file (use --config PATH or set {CONFIG_ENV})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read: {exc}"]) from None
    return LoadedConfig(parse_config(text, str(file)), file)


def parse_config(text: str, filename: str = CONFIG_FILENAME) -> Config:
    """Validate YAML text; pure apart from reading the environment for overrides."""
    data, lines, problems = _compose(text, filename)
    if problems:
        raise ConfigError(problems)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the file must be a mapping with settings, sources and outputs"])
    # A section left with nothing under it (every line commented out) is an empty one.
    data = {key: ({} if key == "settings" else []) if value is None else value for key, value in data.items()}
    problems = _cross_check(data, lines, filename)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += _explain(exc, lines, filename)
    if problems:
        raise ConfigError(sorted(problems, key=_line_of))
    return config


def _line_of(problem: str) -> int:
    """Sort key: the line number in ``file:line: …`` (file names may contain ':')."""
    for part in problem.split(": ", 1)[0].rsplit(":", 1)[1:]:
        if part.isdigit():
            return int(part)
    return 0


Path_ = tuple[str | int, ...]


def _compose(text: str, filename: str) -> tuple[Any, dict[Path_, int], list[str]]:
    """Parse YAML keeping the line of every node; report syntax errors and duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: dict[Path_, int] = {}
        problems: list[str] = []
        _walk(node, (), lines, problems, filename)
        data = loader.construct_document(node)
        return data, lines, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = exc.problem or exc.context or "invalid YAML"
        if "mapping values are not allowed" in reason or "expected <block end>" in reason:
            reason += " (check the indentation)"
        return None, {}, [f"{filename}:{line}: invalid YAML: {reason}"]
    except yaml.YAMLError as exc:
        return None, {}, [f"{filename}:1: invalid YAML: {exc}"]
    finally:
        loader.dispose()


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[str], filename: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                where = _dotted(path + (key,))
                problems.append(f"{filename}:{line}: {where}: duplicate key (first at line {seen[key]})")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, problems, filename)
            lines[path + (key,)] = line  # the key's own line is the better pointer
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _walk(child, path + (index,), lines, problems, filename)


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(path: Path_, lines: dict[Path_, int]) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown key",
    "model_type": "must be a mapping: one 'key: value' per line, indented under it",
    "dict_type": "must be a mapping: one 'key: value' per line, indented under it",
    "tuple_type": "must be a list: one '- value' per line, or [a, b] on one line",
    "list_type": "must be a list: one '- value' per line, or [a, b] on one line",
    "string_type": 'must be text; a number or a date meant as text is written in quotes ("2024")',
}


def _explain(exc: ValidationError, lines: dict[Path_, int], filename: str) -> list[str]:
    problems = []
    for error in exc.errors():
        # pydantic appends the validator's type to the location for unions/tagged types; drop
        # the parts that are not keys of the user's document.
        path = tuple(p for p in error["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "list[")))
        message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{filename}:{_line_for(path, lines)}: {_dotted(path)}: {message}")
    return problems


def _cross_check(data: dict[str, Any], lines: dict[Path_, int], filename: str) -> list[str]:
    """Checks that span entries — unique names and slugs, outputs naming real sources.

    They read the raw document, not the validated model, so they are reported together
    with field errors: one run of ``aggregator check`` shows every problem.
    """
    problems = []
    names: dict[str, int] = {}
    sources = data.get("sources")
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        name = source.get("name") if isinstance(source, dict) else None
        if not isinstance(name, str) or not name.strip():
            continue
        name = name.strip()
        path: Path_ = ("sources", index, "name")
        if name in names:
            first = _line_for(("sources", names[name], "name"), lines)
            where = f"{filename}:{_line_for(path, lines)}: {_dotted(path)}"
            problems.append(f"{where}: duplicate source name {name!r} (first at line {first})")
        else:
            names[name] = index
    slugs: set[str] = set()
    outputs = data.get("outputs")
    for index, output in enumerate(outputs if isinstance(outputs, list) else []):
        if not isinstance(output, dict):
            continue
        slug = output.get("slug")
        if isinstance(slug, str):
            if slug in slugs:
                path = ("outputs", index, "slug")
                where = f"{filename}:{_line_for(path, lines)}: {_dotted(path)}"
                problems.append(f"{where}: duplicate output slug {slug!r}")
            slugs.add(slug)
        wanted = output.get("sources")
        for position, name in enumerate(wanted if isinstance(wanted, list) else []):
            if isinstance(name, str) and name not in names:
                path = ("outputs", index, "sources", position)
                problems.append(f"{filename}:{_line_for(path, lines)}: {_dotted(path)}: no source is named {name!r}")
    return problems


def entry_lines(text: str, section: str) -> dict[int, int]:
    """The line of each entry of a top-level list (``sources``, ``outputs``) of a valid config,
    for messages about an entry that is valid on its own (``aggregator check``'s warnings)."""
    _, lines, _ = _compose(text, "")
    return {
        index: line
        for path, line in lines.items()
        if len(path) == 2 and path[0] == section and isinstance(index := path[1], int)
    }
