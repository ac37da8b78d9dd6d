"""HTTP out: one polite, bounded GET per source, returning a ``FetchResult``.

Politeness and safety live here and nowhere else:

* conditional GET with the stored ETag / Last-Modified;
* an identifying User-Agent; gzip, deflate and brotli;
* connect / read / total timeouts, and a body cap enforced while streaming and
  after decompression (a gzip bomb stops at the cap, not at the end of memory);
* redirects followed by hand (at most ``max_redirects``) so that 301/308 can move the
  stored URL while 302/307 do not, loops are caught, and every hop passes the
  SSRF guard: private, loopback, link-local and metadata addresses are refused
  unless the operator allowed them;
* a global and a per-host concurrency limit.

It knows nothing of the database: failures come back as a ``FetchResult`` with
``error`` set, never as an exception, so one bad source cannot stop a batch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import httpx

from aggregator import config as defaults
from aggregator.errors import BlockedAddressError, FetchError, ResponseTooLargeError
from aggregator.records import FetchResult, SourceToFetch

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml;q=0.9, application/feed+json;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, application/json;q=0.5, */*;q=0.1"
)
PERMANENT_REDIRECTS = frozenset({301, 308})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Cloud metadata endpoints that are not covered by the private/link-local checks.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})


@dataclass(frozen=True)
class FetchOptions:
    user_agent: str
    connect_timeout: float = defaults.DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = defaults.DEFAULT_READ_TIMEOUT
    total_timeout: float = defaults.DEFAULT_TOTAL_TIMEOUT
    max_body_bytes: int = defaults.DEFAULT_MAX_BODY_BYTES
    max_redirects: int = defaults.DEFAULT_MAX_REDIRECTS
    concurrency: int = defaults.DEFAULT_CONCURRENCY
    per_host_concurrency: int = defaults.DEFAULT_PER_HOST_CONCURRENCY
    allow_private_networks: bool = False


class Fetcher:
    """Owns the HTTP client and the concurrency limits; use as an async context manager."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=options.connect_timeout,
                read=options.read_timeout,
                write=options.read_timeout,
                pool=options.total_timeout,
            ),
            limits=httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency),
            headers={"User-Agent": options.user_agent, "Accept": ACCEPT},
            trust_env=False,
        )
        self._global = asyncio.Semaphore(options.concurrency)
        self._hosts: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(options.per_host_concurrency)
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, source: SourceToFetch) -> FetchResult:
        """GET one source. Never raises for network or HTTP trouble: see ``FetchResult.error``."""
        # Wait for a slot first: time spent queued behind other feeds of the same host must
        # not count against this feed's own timeout.
        async with self._global, self._host_slot(source.url):
            started = time.monotonic()
            fetched_at = datetime.now(UTC)
            return await self._fetch_timed(source, fetched_at, started)

    async def _fetch_timed(self, source: SourceToFetch, fetched_at: datetime, started: float) -> FetchResult:
        try:
            return await asyncio.wait_for(self._fetch(source, fetched_at, started), self.options.total_timeout)
        except TimeoutError:
            error, retryable = f"timed out after {self.options.total_timeout:g}s", True
        except FetchError as exc:
            error, retryable = exc.message, exc.retryable
        except httpx.TimeoutException as exc:
            error, retryable = f"timeout: {type(exc).__name__}", True
        except httpx.HTTPError as exc:
            error, retryable = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, True
        except OSError as exc:
            error, retryable = f"network error: {exc}", True
        return FetchResult(
            source_id=source.id,
            url=source.url,
            fetched_at=fetched_at,
            error=error,
            retryable=retryable,
            elapsed=time.monotonic() - started,
        )

    async def _fetch(self, source: SourceToFetch, fetched_at: datetime, started: float) -> FetchResult:
        url = source.url
        permanent_url: str | None = None
        still_permanent = True
        seen = {url}
        headers = {}
        if source.etag:
            headers["If-None-Match"] = source.etag
        if source.last_modified:
            headers["If-Modified-Since"] = source.last_modified
        for _hop in range(self.options.max_redirects + 1):
            await self._guard(url, source.allow_private)
            async with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    target = urljoin(url, response.headers["location"])
                    if urlsplit(target).scheme not in ("http", "https"):
                        raise FetchError(url, f"redirect to a non-HTTP URL: {target}", retryable=False)
                    if target in seen:
                        raise FetchError(url, f"redirect loop at {target}")
                    seen.add(target)
                    still_permanent = still_permanent and response.status_code in PERMANENT_REDIRECTS
                    if still_permanent:
                        permanent_url = target
                    url = target
                    continue
                body = None
                if response.status_code == 200:
                    body = await self._read_capped(response, url)
                return self._result(source, response, url, body, permanent_url, fetched_at, started)
        raise FetchError(source.url, f"more than {self.options.max_redirects} redirects")

    def _result(
        self,
        source: SourceToFetch,
        response: httpx.Response,
        url: str,
        body: bytes | None,
        permanent_url: str | None,
        fetched_at: datetime,
        started: float,
    ) -> FetchResult:
        status = response.status_code
        h = response.headers
        error = None
        retryable = True
        if status == 410:
            error, retryable = "410 Gone: the publisher removed this feed", False
        elif status != 304 and not 200 <= status < 300:
            error = f"HTTP {status} {response.reason_phrase}".rstrip()
        elif status != 304 and status != 200:
            error = f"HTTP {status}: no feed body"
        return FetchResult(
            source_id=source.id,
            url=url,
            fetched_at=fetched_at,
            status=status,
            body=body,
            content_type=h.get("content-type"),
            # A 304 may omit validators; keep the ones we sent (RFC 9110 §15.4.5).
            etag=h.get("etag") or (source.etag if status == 304 else None),
            last_modified=h.get("last-modified") or (source.last_modified if status == 304 else None),
            permanent_url=permanent_url,
            cache_control=h.get("cache-control"),
            expires=h.get("expires"),
            retry_after=h.get("retry-after"),
            error=error,
            retryable=retryable,
            elapsed=time.monotonic() - started,
        )

    async def _read_capped(self, response: httpx.Response, url: str) -> bytes:
        cap = self.options.max_body_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ResponseTooLargeError(url, f"body of {int(declared)} bytes exceeds the {cap}-byte cap")
        chunks = []
        size = 0
        # aiter_bytes yields decompressed bytes: the cap holds after gzip/brotli too.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise ResponseTooLargeError(url, f"body exceeds the {cap}-byte cap (after decompression)")
            chunks.append(chunk)
        return b"".join(chunks)

    @asynccontextmanager
    async def _host_slot(self, url: str) -> AsyncIterator[None]:
        async with self._hosts[(urlsplit(url).hostname or "").lower()]:
            yield

    async def _guard(self, url: str, allow_private: bool) -> None:
        if self.options.allow_private_networks or allow_private:
            return
        host = urlsplit(url).hostname
        if not host:
            raise FetchError(url, "URL has no host", retryable=False)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise FetchError(url, f"cannot resolve {host}: {exc.strerror}") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if blocked_address(address):
                raise BlockedAddressError(
                    url,
                    f"{host} resolves to {address}, a private or local address; refused "
                    "(set allow_private_networks in settings, or allow_private_network on the source)",
                )


def blocked_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for addresses a public feed has no business living on (SSRF guard)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address in METADATA_ADDRESSES
        or (isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"))
    )
