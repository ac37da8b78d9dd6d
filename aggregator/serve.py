"""HTTP in: the published outputs, with conditional GET and gzip, and a health check.

Outputs are read from the ``published`` table — so any number of ``aggregator serve``
processes can answer for one database — and kept in memory keyed by ETag: a request
costs one tiny indexed lookup of the current ETag, and the body (and its gzip) is
only re-read when it changed. We compress ourselves rather than with a middleware so
the compressed variant gets its own ETag, as RFC 9110 requires of a different body.

Behind the feeds, the router answers the reader's pages (the front door, ``/opml``, a
story's full coverage: ``pages.py``) and the frozen archive weeks, all read through the
store, so ``serve`` processes still hold no state of their own.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aggregator.archive import Page
from aggregator.config import Config
from aggregator.errors import StorageError
from aggregator.metrics import exposition, registry_for
from aggregator.pages import outputs_opml, render_front_door, render_story
from aggregator.records import etag_of
from aggregator.status import render_status
from aggregator.store.repository import Store

GZIP_MIN_BYTES = 1024
FEED_MAX_AGE = 60  # seconds a reader or proxy may reuse a feed without asking
ARCHIVE_MAX_AGE = 86400  # an archive page never changes
PAGE_MAX_AGE = 60
REVALIDATE_SECONDS = 1.0
HEALTH_DATABASE_SECONDS = 5.0  # /healthz reports a database that does not answer within this as failing
PAGE_CSP = "default-src 'none'; img-src http: https: data:; media-src http: https:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class CachedOutput:
    etag: str
    media_type: str
    last_modified: str
    body: bytes
    gzipped: bytes | None
    # Response headers, encoded once per rendering rather than once per request: the
    # validators of the plain and the gzip variant (each with its own ETag), then what a
    # 200 adds to them.
    plain_headers: tuple[tuple[bytes, bytes], ...] = ()
    gzip_headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def of(cls, fmt: str, etag: str, media_type: str, last_modified: str, body: bytes) -> CachedOutput:
        gzipped = gzip.compress(body, mtime=0) if len(body) >= GZIP_MIN_BYTES else None
        return cls(
            etag=etag,
            media_type=media_type,
            last_modified=last_modified,
            body=body,
            gzipped=gzipped,
            plain_headers=_raw(_validators(fmt, etag, last_modified)),
            gzip_headers=_raw(_validators(fmt, _gzip_etag(etag), last_modified)) if gzipped is not None else (),
        )


def _validators(fmt: str, etag: str, last_modified: str) -> dict[str, str]:
    """The headers every answer for a rendering carries, 200 or 304 alike."""
    headers = {
        "ETag": etag,
        "Last-Modified": last_modified,
        "Cache-Control": f"public, max-age={FEED_MAX_AGE}",
        "Vary": "Accept-Encoding",
    }
    if fmt == "html":
        # Feed content is sanitized at ingest; this makes sure no script could run anyway.
        headers["Content-Security-Policy"] = PAGE_CSP
    return headers


def _raw(headers: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items())


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
        etag = self.store.published_etag(slug, fmt)
        if etag is None:
            return None
        cached = self._entries.get((slug, fmt))
        if cached is not None and cached.etag == etag:
            self._checked[(slug, fmt)] = checked
            return cached
        row = self.store.published(slug, fmt)
        if row is None:
            return None
        last_modified = format_datetime(row.published_at, usegmt=True)
        cached = CachedOutput.of(fmt, row.etag, row.media_type, last_modified, row.body)
        self._entries[(slug, fmt)] = cached
        self._checked[(slug, fmt)] = checked
        return cached


def not_modified(request: Request, etag: str, last_modified: str) -> bool:
    """RFC 9110 §13.2.2 for a Starlette request (see ``is_not_modified``)."""
    headers = request.headers
    return is_not_modified(headers.get("if-none-match"), headers.get("if-modified-since"), etag, last_modified)


def is_not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified: str) -> bool:
    """RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since; weak comparison.

    Either ETag of a rendering (plain or gzip) validates it: the two bodies stand for the
    same content, and a reader that switched encodings should still get its 304.
    """
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags or _gzip_etag(etag) in tags
    if if_modified_since is not None:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
    return False


def _gzip_etag(etag: str) -> str:
    return etag[:-1] + '-gz"'


def _page(request: Request, body: bytes, media_type: str, headers: dict[str, str]) -> Response:
    if request.method == "HEAD":
        return Response(status_code=200, headers={**headers, "Content-Length": str(len(body))}, media_type=media_type)
    return Response(body, headers=headers, media_type=media_type)


def _dynamic(request: Request, body: bytes, media_type: str) -> Response:
    """A page rendered on request: an ETag of its bytes, so a reload costs a 304."""
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={PAGE_MAX_AGE}"}
    if media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = PAGE_CSP
    inm = request.headers.get("if-none-match")
    if inm is not None and etag in {t.strip().removeprefix("W/") for t in inm.split(",")}:
        return Response(status_code=304, headers=headers)
    return _page(request, body, media_type, headers)


def create_app(
    store: Store,
    *,
    health: Callable[[], dict[str, object]] | None = None,
    status_page: bool = True,
    config: Callable[[], Config] | None = None,
    revalidate: float = REVALIDATE_SECONDS,
) -> PublishedFeeds:
    handlers = Handlers(store, health=health, config=config)
    extra = [Route("/status", handlers.status, methods=["GET"])] if status_page else []
    router = Starlette(
        routes=[
            *extra,
            Route("/", handlers.front_door, methods=["GET", "HEAD"]),
            Route("/feeds", handlers.to_front_door, methods=["GET", "HEAD"]),
            Route("/feeds/", handlers.to_front_door, methods=["GET", "HEAD"]),
            Route("/opml", handlers.opml, methods=["GET", "HEAD"]),
            Route("/stories/{story:int}", handlers.story, methods=["GET", "HEAD"]),
            Route("/feeds/{slug}/archive/{week}", handlers.archive, methods=["GET", "HEAD"]),
            Route("/healthz", handlers.healthz, methods=["GET", "HEAD"]),
            Route("/metrics", handlers.prometheus, methods=["GET"]),
        ]
    )
    return PublishedFeeds(router, OutputCache(store, revalidate))


class Handlers:
    """What the router answers behind the feeds. Every read goes through the store (in a
    thread: the event loop must not wait on the database); ``config`` gives the current
    configuration, which a reload may replace (None: no pages that need it)."""

    def __init__(
        self,
        store: Store,
        *,
        health: Callable[[], dict[str, object]] | None = None,
        config: Callable[[], Config] | None = None,
    ) -> None:
        self.store = store
        self.health = health
        self.config = config
        self.registry = registry_for(store)

    async def archive(self, request: Request) -> Response:
        """A frozen archive page (a week, or a part of a busy one), as Atom (``.atom``) or as
        its HTML page; the current, incomplete week and pages without entries are not
        archives (404)."""
        slug, label = request.path_params["slug"], request.path_params["week"]
        fmt = "atom" if label.endswith(".atom") else "html"
        week = Page.parse(label.removesuffix(".atom"))
        if week is None:
            return Response("no such archive page\n", status_code=404, media_type="text/plain")
        try:
            row = await asyncio.to_thread(self.store.archive, slug, str(week))
        except StorageError:
            return Response("database unavailable\n", status_code=503, media_type="text/plain")
        if row is None:
            return Response("no such archive page\n", status_code=404, media_type="text/plain")
        body = row.atom if fmt == "atom" else row.html
        etag = row.etag if fmt == "atom" else etag_of(body)
        headers = {
            "ETag": etag,
            "Last-Modified": format_datetime(row.created_at.replace(microsecond=0), usegmt=True),
            "Cache-Control": f"public, max-age={ARCHIVE_MAX_AGE}",
        }
        if fmt == "html":
            headers["Content-Security-Policy"] = PAGE_CSP
        if not_modified(request, etag, headers["Last-Modified"]):
            return Response(status_code=304, headers=headers)
        media_type = "application/atom+xml; charset=utf-8" if fmt == "atom" else "text/html; charset=utf-8"
        return _page(request, body, media_type, headers)

    async def front_door(self, request: Request) -> Response:
        current = self.config() if self.config is not None else None
        if current is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        store = self.store
        try:
            pages = await asyncio.to_thread(lambda: {o.slug: store.archive_pages(o.slug) for o in current.outputs})
        except StorageError:
            return Response("database unavailable\n", status_code=503, media_type="text/plain")
        return _dynamic(request, render_front_door(current, pages), "text/html; charset=utf-8")

    async def opml(self, request: Request) -> Response:
        current = self.config() if self.config is not None else None
        if current is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return _dynamic(request, outputs_opml(current), "text/x-opml; charset=utf-8")

    async def story(self, request: Request) -> Response:
        story_id = request.path_params["story"]
        current = self.config() if self.config is not None else None
        try:
            coverage = await asyncio.to_thread(self.store.story_coverage, story_id)
        except StorageError:
            return Response("database unavailable\n", status_code=503, media_type="text/plain")
        if coverage is not None and coverage.merged_into is not None:
            # Merged into another story (one event, found so later): its entry's readers and
            # its archived links go on to the coverage of the story it became, for good.
            return RedirectResponse(f"/stories/{coverage.merged_into}", status_code=301)
        if coverage is None or not coverage.items:
            return Response("no such story\n", status_code=404, media_type="text/plain")
        body = render_story(coverage, current.settings.public_url if current is not None else "")
        return _dynamic(request, body, "text/html; charset=utf-8")

    async def prometheus(self, _request: Request) -> Response:
        body = await asyncio.to_thread(exposition, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, _request: Request) -> Response:
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), HEALTH_DATABASE_SECONDS)
        except StorageError as exc:
            return JSONResponse({"status": "failing", "database": str(exc)}, status_code=503)
        except TimeoutError:
            # A database that stopped answering (a network partition, a hung server) is as down
            # as one that refuses: a monitor asking must hear so, not wait on the query.
            down = f"no answer within {HEALTH_DATABASE_SECONDS:g} s"
            return JSONResponse({"status": "failing", "database": down}, status_code=503)
        report: dict[str, object] = {
            "status": "ok",
            "database": "ok",
            "db_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if self.health is not None:
            report.update(self.health())
        return JSONResponse(report, status_code=200 if report.get("status") == "ok" else 503)

    async def status(self, _request: Request) -> Response:
        try:
            body = await asyncio.to_thread(render_status, self.store)
        except StorageError as exc:
            return Response(f"database unavailable: {exc}\n", status_code=503, media_type="text/plain")
        headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    async def to_front_door(self, _request: Request) -> Response:
        return RedirectResponse("/", status_code=308)


FEED_FORMATS = frozenset(("atom", "rss", "json", "html"))


class PublishedFeeds:
    """``GET``/``HEAD`` of ``/feeds/<slug>.<format>`` and ``/feeds/<slug>``, in front of the router.

    Feed readers poll with validators, so most requests to a busy instance are 304s of a
    rendering already in memory. Answering them here, from bytes and headers encoded once per
    rendering, skips Starlette's routing and its request and response objects, which cost
    more than the answer itself; every other path goes on to the router.
    """

    def __init__(self, app: Starlette, cache: OutputCache) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = _feed_target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        slug, fmt = target
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", ((b"allow", b"GET, HEAD"),))
            return
        if fmt not in FEED_FORMATS:
            await _plain(send, 404, b"not found\n")
            return
        try:
            cached = self.cache.fresh(slug, fmt) or await asyncio.to_thread(self.cache.get, slug, fmt)
        except StorageError:
            await _plain(send, 503, b"database unavailable\n")
            return
        if cached is None:
            await _plain(send, 404, f"no output {slug!r} has been published\n".encode())
            return
        if_none_match = if_modified_since = accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
            elif name == b"if-modified-since":
                if_modified_since = value.decode("latin-1")
            elif name == b"accept-encoding":
                accept_encoding = value
        use_gzip = cached.gzipped is not None and accept_encoding is not None and b"gzip" in accept_encoding.lower()
        headers = list(cached.gzip_headers if use_gzip else cached.plain_headers)
        if is_not_modified(if_none_match, if_modified_since, cached.etag, cached.last_modified):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        body = cached.gzipped if use_gzip and cached.gzipped is not None else cached.body
        headers.append((b"content-type", cached.media_type.encode("latin-1")))
        headers.append((b"content-length", str(len(body)).encode()))
        if use_gzip:
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _feed_target(scope: Scope) -> tuple[str, str] | None:
    """(slug, format) of a feed request; None for anything the router answers."""
    if scope["type"] != "http":
        return None
    path: str = scope["path"]
    if not path.startswith("/feeds/"):
        return None
    name = path[len("/feeds/") :]
    if not name or "/" in name:
        return None  # the feeds index, archives
    slug, dot, fmt = name.rpartition(".")
    return (slug, fmt) if dot else (name, "html")


async def _plain(send: Send, status: int, text: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})
