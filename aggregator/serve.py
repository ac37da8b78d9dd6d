"""HTTP in: the published outputs, with conditional GET and gzip, and a health check.

Outputs are read from the ``published`` table — so any number of ``aggregator serve``
processes can answer for one database — and kept in memory keyed by ETag: a request
costs one tiny indexed lookup of the current ETag, and the body (and its gzip) is
only re-read when it changed. We compress ourselves rather than with a middleware so
the compressed variant gets its own ETag, as RFC 9110 requires of a different body.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aggregator.archive import ARCHIVE_MAX_ENTRIES, Week, archive_output, archive_url
from aggregator.config import Config, Output
from aggregator.curate import curate
from aggregator.errors import StorageError
from aggregator.metrics import exposition, registry_for
from aggregator.publish import feed_url, render_atom
from aggregator.status import render_status
from aggregator.store.models import PublishedRow
from aggregator.store.repository import Store

GZIP_MIN_BYTES = 1024
FEED_MAX_AGE = 60  # seconds a reader or proxy may reuse a feed without asking
ARCHIVE_MAX_AGE = 3600
REVALIDATE_SECONDS = 1.0
PAGE_CSP = "default-src 'none'; img-src http: https: data:; media-src http: https:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class CachedOutput:
    etag: str
    media_type: str
    last_modified: str
    body: bytes
    gzipped: bytes | None


class OutputCache:
    """Renderings in memory; the database is asked whether one changed at most every
    ``revalidate`` seconds (feeds are served with max-age=60, so a second of staleness
    costs nothing, and a busy server stops paying a query and a thread hop per request)."""

    def __init__(self, store: Store, revalidate: float = REVALIDATE_SECONDS) -> None:
        self.store = store
        self.revalidate = revalidate
        self._entries: dict[tuple[str, str], CachedOutput] = {}
        self._checked: dict[tuple[str, str], float] = {}

    def fresh(self, slug: str, fmt: str) -> CachedOutput | None:
        """The cached rendering if it was checked against the database recently enough."""
        cached = self._entries.get((slug, fmt))
        checked = self._checked.get((slug, fmt))
        if cached is None or checked is None or time.monotonic() - checked >= self.revalidate:
            return None
        return cached

    def get(self, slug: str, fmt: str) -> CachedOutput | None:
        checked = time.monotonic()  # before the query: an honest bound on staleness
        with self.store.session() as s:
            etag = s.scalar(select(PublishedRow.etag).where(PublishedRow.slug == slug, PublishedRow.format == fmt))
        if etag is None:
            return None
        cached = self._entries.get((slug, fmt))
        if cached is not None and cached.etag == etag:
            self._checked[(slug, fmt)] = checked
            return cached
        row = self.store.published(slug, fmt)
        if row is None:
            return None
        body = row.body
        cached = CachedOutput(
            etag=row.etag,
            media_type=row.media_type,
            last_modified=format_datetime(row.published_at, usegmt=True),
            body=body,
            gzipped=gzip.compress(body, mtime=0) if len(body) >= GZIP_MIN_BYTES else None,
        )
        self._entries[(slug, fmt)] = cached
        self._checked[(slug, fmt)] = checked
        return cached


def not_modified(request: Request, etag: str, last_modified: str) -> bool:
    """RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since; weak comparison."""
    if (inm := request.headers.get("if-none-match")) is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag in tags or _gzip_etag(etag) in tags
    if (ims := request.headers.get("if-modified-since")) is not None:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError):
            return False
    return False


def _gzip_etag(etag: str) -> str:
    return etag[:-1] + '-gz"'


def render_archive(store: Store, config: Config, output: Output, week: Week, now: datetime) -> bytes:
    """One week of an output as an RFC 5005 archive document, linked to its neighbours."""
    public = config.settings.public_url
    complete = archive_output(output)
    entries = curate(complete, store.candidates_between(output, week.start, week.end, ARCHIVE_MAX_ENTRIES)).entries
    links = [("current", feed_url(public, output.slug, "atom"))]
    earliest = store.earliest_item(output)
    if earliest is not None and week.shift(-1) >= Week.of(earliest):
        links.append(("prev-archive", archive_url(public, output.slug, week.shift(-1))))
    if week.shift(1) < Week.of(now):
        links.append(("next-archive", archive_url(public, output.slug, week.shift(1))))
    return render_atom(complete, entries, public, config.settings.websub_hub, links=tuple(links), archive_of=week)


def create_app(
    store: Store,
    *,
    health: Callable[[], dict[str, object]] | None = None,
    status_page: bool = True,
    config: Callable[[], Config] | None = None,
    revalidate: float = REVALIDATE_SECONDS,
) -> Starlette:
    cache = OutputCache(store, revalidate)

    async def archive(request: Request) -> Response:
        slug, label = request.path_params["slug"], request.path_params["week"]
        current = config() if config is not None else None
        output = next((o for o in current.outputs if o.slug == slug), None) if current else None
        week = Week.parse(label)
        now = datetime.now(UTC)
        if current is None or output is None or week is None or week > Week.of(now):
            return Response("no such archive page\n", status_code=404, media_type="text/plain")
        try:
            body = await asyncio.to_thread(render_archive, store, current, output, week, now)
        except StorageError:
            return Response("database unavailable\n", status_code=503, media_type="text/plain")
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        # A past week no longer changes (much); the current one still does.
        max_age = ARCHIVE_MAX_AGE if week < Week.of(now) else FEED_MAX_AGE
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
        if not_modified(request, etag, format_datetime(week.end, usegmt=True)):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type="application/atom+xml; charset=utf-8")

    async def page(request: Request) -> Response:
        return await _output(request, request.path_params["slug"], "html")

    async def feed(request: Request) -> Response:
        return await _output(request, request.path_params["slug"], request.path_params["fmt"])

    async def _output(request: Request, slug: str, fmt: str) -> Response:
        if fmt not in ("atom", "rss", "json", "html"):
            return Response("not found\n", status_code=404, media_type="text/plain")
        try:
            cached = cache.fresh(slug, fmt) or await asyncio.to_thread(cache.get, slug, fmt)
        except StorageError:
            return Response("database unavailable\n", status_code=503, media_type="text/plain")
        if cached is None:
            return Response(f"no output {slug!r} has been published\n", status_code=404, media_type="text/plain")
        use_gzip = cached.gzipped is not None and "gzip" in request.headers.get("accept-encoding", "").lower()
        etag = _gzip_etag(cached.etag) if use_gzip else cached.etag
        headers = {
            "ETag": etag,
            "Last-Modified": cached.last_modified,
            "Cache-Control": f"public, max-age={FEED_MAX_AGE}",
            "Vary": "Accept-Encoding",
        }
        if fmt == "html":
            # Feed content is sanitized at ingest; this makes sure no script could run anyway.
            headers["Content-Security-Policy"] = PAGE_CSP
        if not_modified(request, cached.etag, cached.last_modified):
            return Response(status_code=304, headers=headers)
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        body = cached.gzipped if use_gzip and cached.gzipped is not None else cached.body
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return Response(status_code=200, headers=headers, media_type=cached.media_type)
        return Response(body, headers=headers, media_type=cached.media_type)

    registry = registry_for(store)

    async def prometheus(request: Request) -> Response:
        body = await asyncio.to_thread(exposition, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        started = time.monotonic()
        try:
            await asyncio.to_thread(store.counts)
        except StorageError as exc:
            return JSONResponse({"status": "failing", "database": str(exc)}, status_code=503)
        report: dict[str, object] = {
            "status": "ok",
            "database": "ok",
            "db_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if health is not None:
            report.update(health())
        return JSONResponse(report, status_code=200 if report.get("status") == "ok" else 503)

    async def status(request: Request) -> Response:
        try:
            body = await asyncio.to_thread(render_status, store)
        except StorageError as exc:
            return Response(f"database unavailable: {exc}\n", status_code=503, media_type="text/plain")
        headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    extra = [Route("/status", status, methods=["GET"])] if status_page else []
    return Starlette(
        routes=[
            *extra,
            Route("/feeds/{slug}/archive/{week}.atom", archive, methods=["GET", "HEAD"]),
            Route("/feeds/{slug}.{fmt}", feed, methods=["GET", "HEAD"]),
            Route("/feeds/{slug}", page, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
