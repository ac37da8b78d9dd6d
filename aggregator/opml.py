"""OPML 2.0 import and export of sources, so users can move from (and to) other readers.

Export writes one ``<outline type="rss">`` per source with its name, URL and tags (as
OPML categories, ``/world,/europe``). Import reads any reader's OPML: nested folders
become tags, ``category`` attributes become tags, and sources already configured (by
URL or by name) are skipped. Adding them to ``feeds.yaml`` is done by inserting text
after the last source, so the user's comments and layout survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import yaml
from lxml import etree

from aggregator.config import Config, Source
from aggregator.errors import ConfigError

MAX_NAME = 200  # Source.name's limit: a longer OPML title is cut, not refused


@dataclass(frozen=True)
class OpmlSource:
    name: str
    url: str
    tags: tuple[str, ...]
    line: int | None = None  # of its outline, for messages


@dataclass(frozen=True)
class Unusable:
    """A feed of the OPML file that cannot be a source, and why."""

    source: OpmlSource
    reason: str


# ``feed:`` is the old "subscribe in a feed reader" scheme, common in exported OPML:
# ``feed://host/path`` stands for http, ``feed:https://host/path`` wraps the real URL.
_FEED_SCHEME = re.compile(r"^feed:(?://)?", re.IGNORECASE)
_WRAPPED = re.compile(r"^https?://", re.IGNORECASE)


def usable_url(url: str) -> tuple[str | None, str]:
    """(the URL to poll, or None; what was done or what is wrong). Pure."""
    url = url.strip()
    if _FEED_SCHEME.match(url):
        rest = _FEED_SCHEME.sub("", url, count=1)
        rewritten = rest if _WRAPPED.match(rest) else f"http://{rest}"
        fixed, problem = usable_url(rewritten)
        return fixed, f"rewritten from {url}" if fixed else problem
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return None, f"not an http(s) URL (scheme {parts.scheme + ':' if parts.scheme else 'missing'})"
    if not parts.hostname:
        return None, "no host name in the URL"
    if any(ch.isspace() for ch in url):
        return None, "the URL contains spaces"
    return url, ""


def split_usable(sources: list[OpmlSource]) -> tuple[list[OpmlSource], list[Unusable], list[Unusable]]:
    """(the sources that can be polled, with URLs fixed; the rewritten ones, as notes; the unusable)."""
    good: list[OpmlSource] = []
    rewritten: list[Unusable] = []
    bad: list[Unusable] = []
    for source in sources:
        url, note = usable_url(source.url)
        if url is None:
            bad.append(Unusable(source, note))
            continue
        fixed = OpmlSource(source.name[:MAX_NAME].strip() or url, url, source.tags, source.line)
        if note:
            rewritten.append(Unusable(fixed, note))
        good.append(fixed)
    return good, rewritten, bad


def export_opml(config: Config, title: str = "aggregator sources") -> bytes:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<opml version="2.0">',
        f"  <head><title>{_text(title)}</title></head>",
        "  <body>",
    ]
    for source in config.sources:
        category = ",".join(f"/{tag}" for tag in source.tags)
        name = quoteattr(source.name)
        attributes = f'type="rss" text={name} title={name} xmlUrl={quoteattr(source.url)}'
        if category:
            attributes += f" category={quoteattr(category)}"
        lines.append(f"    <outline {attributes}/>")
    lines += ["  </body>", "</opml>", ""]
    return "\n".join(lines).encode("utf-8")


def parse_opml(data: bytes, filename: str = "OPML") -> list[OpmlSource]:
    """Every feed outline in the document, with the folders it sits in as tags."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ConfigError([f"{filename}:{exc.lineno or 1}: not valid OPML: {exc.msg}"]) from None
    body = root.find("body")
    if root.tag != "opml" or body is None:
        raise ConfigError([f"{filename}:1: not an OPML document (no <opml><body>)"])
    found: list[OpmlSource] = []
    _walk(body, (), found)
    return found


def _walk(element: etree._Element, folders: tuple[str, ...], found: list[OpmlSource]) -> None:
    for outline in element.findall("outline"):
        url = (outline.get("xmlUrl") or outline.get("xmlurl") or "").strip()
        name = (outline.get("title") or outline.get("text") or "").strip()
        if url:
            tags = list(folders)
            for category in (outline.get("category") or "").split(","):
                tag = category.strip().strip("/").split("/")[-1].strip()
                if tag:
                    tags.append(tag)
            tags_ = tuple(_slug(t) for t in dict.fromkeys(tags) if _slug(t))
            found.append(OpmlSource(name or url, url, tags_, outline.sourceline))
        else:
            folder = _slug(name)
            _walk(outline, (*folders, folder) if folder else folders, found)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def new_sources(config: Config, imported: list[OpmlSource]) -> list[OpmlSource]:
    """The imported sources not already configured, with names made unique."""
    urls = {s.url for s in config.sources}
    names = {s.name for s in config.sources}
    fresh = []
    for source in imported:
        if source.url in urls:
            continue
        name, n = source.name, 2
        while name in names:
            name, n = f"{source.name} ({n})", n + 1
        names.add(name)
        urls.add(source.url)
        fresh.append(OpmlSource(name, source.url, source.tags, source.line))
    return fresh


def as_yaml(sources: list[OpmlSource], indent: int = 2) -> str:
    """YAML list items in the shape of ``feeds.yaml``'s sources, validated by ``Source``."""
    pad = " " * indent
    lines = []
    for source in sources:
        Source(name=source.name, url=source.url, tags=source.tags)  # raises on a bad URL
        lines.append(f"{pad}- name: {_scalar(source.name)}")
        lines.append(f"{pad}  url: {_scalar(source.url)}")
        if source.tags:
            lines.append(f"{pad}  tags: [{', '.join(_scalar(t) for t in source.tags)}]")
    return "\n".join(lines) + ("\n" if lines else "")


def _scalar(value: str) -> str:
    dumped: str = yaml.safe_dump(value, default_style=None, width=10_000).strip()
    return dumped.removesuffix("\n...").strip()


def insert_sources(path: Path, sources: list[OpmlSource]) -> str:
    """Insert the sources after the last entry of the ``sources:`` block of the file; return the new text."""
    text = path.read_text(encoding="utf-8")
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError([f"{path}:1: expected a mapping at the top level"])
    for key, value in node.value:
        if key.value != "sources":
            continue
        if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
            lines = text.splitlines(keepends=True)
            end = value.end_mark.line if value.end_mark.column == 0 else value.end_mark.line + 1
            # Step back over blank lines and comments that belong to what follows.
            while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
                end -= 1
            snippet = as_yaml(sources, value.start_mark.column)
            return "".join(lines[:end]) + snippet + "".join(lines[end:])
        if (isinstance(value, yaml.SequenceNode) and not value.value) or isinstance(value, yaml.ScalarNode):
            line = key.start_mark.line
            lines = text.splitlines(keepends=True)
            lines[line] = "sources:\n" + as_yaml(sources, 2)
            return "".join(lines)
        raise ConfigError([f"{path}:{key.start_mark.line + 1}: sources: cannot add to this layout; add them by hand"])
    separator = "" if text.endswith("\n") or not text else "\n"
    return text + separator + "sources:\n" + as_yaml(sources, 2)


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
