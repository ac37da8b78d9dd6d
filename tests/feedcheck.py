"""Structural checks of published feeds against their specs, for tests.

The W3C Feed Validator is not installable here, so these helpers check the rules it
enforces that our renderer could get wrong — RFC 4287 (Atom), RSS 2.0 and JSON Feed
1.1 — and return a list of problems (empty when valid) so a failing test shows all.
"""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

A = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TAG_URI = re.compile(r"^tag:[a-z0-9.-]+,\d{4}(-\d\d(-\d\d)?)?:\S+$")


def _absolute_iri(value: str | None) -> bool:
    if not value:
        return False
    if value.startswith(("urn:", "tag:")):
        return value.startswith("urn:") or bool(TAG_URI.match(value))
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _one(parent: etree._Element, name: str, where: str, problems: list[str], *, required: bool = True) -> str | None:
    found = parent.findall(A + name)
    if len(found) > 1:
        problems.append(f"{where}: more than one atom:{name}")
    if not found:
        if required:
            problems.append(f"{where}: missing atom:{name}")
        return None
    text: str | None = found[0].text  # lxml is untyped here (no stubs installed)
    return text


def _date(value: str | None, where: str, problems: list[str]) -> None:
    if value is not None and not RFC3339.match(value):
        problems.append(f"{where}: not an RFC 3339 date-time: {value!r}")


def _text_construct(element: etree._Element | None, where: str, problems: list[str]) -> None:
    if element is not None and element.get("type", "text") not in ("text", "html", "xhtml"):
        problems.append(f"{where}: bad text construct type {element.get('type')!r}")


def check_atom(body: bytes) -> list[str]:
    problems: list[str] = []
    root = etree.fromstring(body)
    if root.tag != A + "feed":
        return [f"root element is {root.tag}, not atom:feed"]
    feed_id = _one(root, "id", "feed", problems)
    if not _absolute_iri(feed_id):
        problems.append(f"feed: id is not an absolute IRI: {feed_id!r}")
    _one(root, "title", "feed", problems)
    _date(_one(root, "updated", "feed", problems), "feed/updated", problems)
    links = root.findall(A + "link")
    if not any(link.get("rel") == "self" for link in links):
        problems.append("feed: no link rel=self")
    _check_links(links, "feed", problems)
    feed_has_author = root.find(A + "author") is not None
    ids: set[str] = set()
    for index, entry in enumerate(root.findall(A + "entry")):
        _check_atom_entry(entry, f"entry[{index}]", feed_has_author, ids, problems)
    return problems


def _check_atom_entry(
    entry: etree._Element, where: str, feed_has_author: bool, ids: set[str], problems: list[str]
) -> None:
    entry_id = _one(entry, "id", where, problems)
    if not _absolute_iri(entry_id):
        problems.append(f"{where}: id is not an absolute IRI: {entry_id!r}")
    if entry_id in ids:
        problems.append(f"{where}: duplicate id {entry_id}")
    ids.add(entry_id or "")
    _one(entry, "title", where, problems)
    _text_construct(entry.find(A + "title"), where + "/title", problems)
    _date(_one(entry, "updated", where, problems), where + "/updated", problems)
    _date(_one(entry, "published", where, problems, required=False), where + "/published", problems)
    entry_links = entry.findall(A + "link")
    _check_links(entry_links, where, problems)
    for link in entry_links:
        length = link.get("length")
        if link.get("rel") == "enclosure" and length is not None and not length.isdigit():
            problems.append(f"{where}: enclosure length is not a number of octets: {length!r}")
    content = entry.find(A + "content")
    _text_construct(content, where + "/content", problems)
    _text_construct(entry.find(A + "summary"), where + "/summary", problems)
    if content is None and not any(link.get("rel", "alternate") == "alternate" for link in entry_links):
        problems.append(f"{where}: neither content nor an alternate link")
    source = entry.find(A + "source")
    source_author = source is not None and source.find(A + "author") is not None
    if entry.find(A + "author") is None and not feed_has_author and not source_author:
        problems.append(f"{where}: no author (and the feed has none)")
    if source is not None:
        for name in ("id", "title", "updated"):
            _one(source, name, where + "/source", problems, required=False)
        _date(source.findtext(A + "updated"), where + "/source/updated", problems)


def _check_links(links: list[etree._Element], where: str, problems: list[str]) -> None:
    alternates: set[tuple[str | None, str | None]] = set()
    for link in links:
        href = link.get("href")
        if not href or not _absolute_iri(href):
            problems.append(f"{where}: link href is not absolute: {href!r}")
        if link.get("rel", "alternate") == "alternate":
            key = (link.get("type"), link.get("hreflang"))
            if key in alternates:
                problems.append(f"{where}: two alternate links with the same type and hreflang")
            alternates.add(key)


def check_rss(body: bytes) -> list[str]:
    problems: list[str] = []
    root = etree.fromstring(body)
    if root.tag != "rss" or root.get("version") != "2.0":
        return ["root element is not rss version 2.0"]
    channel = root.find("channel")
    if channel is None:
        return ["no channel"]
    for name in ("title", "link", "description"):
        if not channel.findtext(name):
            problems.append(f"channel: missing {name}")
    guids: set[str] = set()
    for index, item in enumerate(channel.findall("item")):
        _check_rss_item(item, f"item[{index}]", guids, problems)
    return problems


def _check_rss_item(item: etree._Element, where: str, guids: set[str], problems: list[str]) -> None:
    if not item.findtext("title") and not item.findtext("description"):
        problems.append(f"{where}: neither title nor description")
    guid = item.find("guid")
    if guid is None or not guid.text:
        problems.append(f"{where}: no guid")
    else:
        if guid.text in guids:
            problems.append(f"{where}: duplicate guid")
        guids.add(guid.text)
        permalink = guid.get("isPermaLink", "true") == "true"
        if permalink and not _absolute_iri(guid.text):
            problems.append(f"{where}: guid is not a URL but isPermaLink is true")
    if (date := item.findtext("pubDate")) is not None:
        try:
            parsedate_to_datetime(date)
        except (TypeError, ValueError):
            problems.append(f"{where}: pubDate is not an RFC 822 date: {date!r}")
    enclosures = item.findall("enclosure")
    if len(enclosures) > 1:
        problems.append(f"{where}: more than one enclosure")  # readers take one; the validator warns
    for enclosure in enclosures:
        _check_rss_enclosure(enclosure, where, problems)
    source = item.find("source")
    if source is not None and not _absolute_iri(source.get("url")):
        problems.append(f"{where}: source without an absolute url attribute")


def _check_rss_enclosure(enclosure: etree._Element, where: str, problems: list[str]) -> None:
    if not _absolute_iri(enclosure.get("url")):
        problems.append(f"{where}: enclosure url is not absolute: {enclosure.get('url')!r}")
    if not (enclosure.get("length") or "").isdigit():
        problems.append(f"{where}: enclosure needs a length in bytes: {enclosure.get('length')!r}")
    if not enclosure.get("type") or "/" not in enclosure.get("type", ""):
        problems.append(f"{where}: enclosure needs a MIME type: {enclosure.get('type')!r}")


def check_json_feed(body: bytes) -> list[str]:
    problems: list[str] = []
    doc = json.loads(body)
    if doc.get("version") != "https://jsonfeed.org/version/1.1":
        problems.append("version is not JSON Feed 1.1")
    if not isinstance(doc.get("title"), str):
        problems.append("no title")
    items = doc.get("items")
    if not isinstance(items, list):
        return [*problems, "items is not a list"]
    ids: set[str] = set()
    for index, item in enumerate(items):
        _check_json_item(item, f"items[{index}]", ids, problems)
    return problems


def _check_json_item(item: dict[str, Any], where: str, ids: set[str], problems: list[str]) -> None:
    """One item of a decoded JSON Feed (JSON's values are whatever the document holds: Any)."""
    if not isinstance(item.get("id"), str):
        problems.append(f"{where}: id is not a string")
    elif item["id"] in ids:
        problems.append(f"{where}: duplicate id")
    else:
        ids.add(item["id"])
    if "content_html" not in item and "content_text" not in item:
        problems.append(f"{where}: neither content_html nor content_text")
    for key in ("date_published", "date_modified"):
        if key in item and not RFC3339.match(item[key]):
            problems.append(f"{where}: {key} is not RFC 3339: {item[key]!r}")
    for attachment in item.get("attachments", []):
        if not _absolute_iri(attachment.get("url")) or not isinstance(attachment.get("mime_type"), str):
            problems.append(f"{where}: an attachment needs an absolute url and a mime_type")
        if "size_in_bytes" in attachment and not isinstance(attachment["size_in_bytes"], int):
            problems.append(f"{where}: size_in_bytes is not a number")
    for key in item:
        if key.startswith("_") and not isinstance(item[key], dict):
            problems.append(f"{where}: extension {key} is not an object")
