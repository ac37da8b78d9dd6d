"""HTTP out: one polite, bounded GET per source, returning a ``FetchResult``.

Politeness and safety live here and nowhere else:

* conditional GET with the stored ETag / Last-Modified;
* an identifying User-Agent; gzip, deflate and brotli, decoded in bounded steps by
  ``contentcoding`` rather than by the HTTP client (see there why);
* connect / read / total timeouts, and a body cap enforced while streaming and
  after decompression (a gzip bomb stops at the cap, not at the end of memory);
* redirects followed by hand (at most ``max_redirects``) so that 301/308 can move the
  stored URL while 302/307 do not, and loops are caught;
* the SSRF guard: private, loopback, link-local and metadata addresses are refused
  unless the operator allowed them. It runs where the socket is opened, on the very
  addresses we connect to, so it covers every redirect hop and cannot be dodged by a
  name that resolves to a public address for the check and a private one for the
  connection (DNS rebinding);
* a per-host and a global concurrency limit.

The client is aiohttp, not httpx: httpx's connection pool rescans every connection for
every request, so with a thousand feeds the client itself became the main process's
largest CPU cost, in a first ingest and in a round of conditional polls alike.

It knows nothing of the database: failures come back as a ``FetchResult`` with
``error`` set, never as an exception, so one bad source cannot stop a batch. Only
410 Gone is reported as permanent (``retryable=False``): every other failure —
including a refused address, which the operator can lift in the config — is retried
with backoff, because a source must never be switched off by errors alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from aggregator import config as defaults
from aggregator import contentcoding
from aggregator.contentcoding import ACCEPT_ENCODING, DECODE_ERRORS
from aggregator.errors import BlockedAddressError, FetchError, ResponseTooLargeError
from aggregator.plaintext import visible
from aggregator.records import FetchResult, SourceToFetch

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml;q=0.9, application/feed+json;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, application/json;q=0.5, */*;q=0.1"
)
PERMANENT_REDIRECTS = frozenset({301, 308})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Cloud metadata endpoints that are not covered by the private/link-local checks.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


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
    """Owns the HTTP sessions and the concurrency limits; use as an async context manager
    (inside a running event loop).

    ``clock`` stamps ``FetchResult.fetched_at`` (a pipeline on a test clock passes its
    own). ``resolve`` and ``is_blocked`` are the SSRF guard's two halves, replaceable so
    tests can stand a name or an address in for "the public internet" without DNS.
    """

    def __init__(
        self,
        options: FetchOptions,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        resolve: Resolver | None = None,
        is_blocked: Callable[[IPAddress], bool] | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        # Two pools: a connection opened for a source allowed onto private networks must
        # never be reused by a source that is not (a redirect to the same intranet host).
        self._open = _session(options, None)
        self._guarded = (
            None
            if options.allow_private_networks
            else _session(options, _Guard(resolve or _system_resolve, is_blocked or blocked_address))
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
        await self._open.close()
        if self._guarded is not None:
            await self._guarded.close()

    async def fetch(self, source: SourceToFetch) -> FetchResult:
        """GET one source. Never raises for network or HTTP trouble: see ``FetchResult.error``."""
        # Wait for a slot first: time spent queued behind other feeds of the same host must
        # not count against this feed's own timeout. The host slot comes first so that a
        # feed waiting behind its own host does not sit on one of the global slots too.
        async with self._host_slot(source.url), self._global:
            return await self._fetch_timed(source, time.monotonic())

    async def _fetch_timed(self, source: SourceToFetch, started: float) -> FetchResult:
        try:
            return await asyncio.wait_for(self._fetch(source, started), self.options.total_timeout)
        except (FetchError, aiohttp.ClientError, OSError, ValueError) as exc:
            error = visible(failure_message(exc, self.options))  # it may quote a server's Location
        return FetchResult(
            source_id=source.id,
            url=source.url,
            # Backoff counts from when we gave up, not from when we started waiting.
            fetched_at=self.clock(),
            error=error,
            retryable=True,
            elapsed=time.monotonic() - started,
        )

    async def _fetch(self, source: SourceToFetch, started: float) -> FetchResult:
        session = self._open if self._guarded is None or source.allow_private else self._guarded
        url = source.url
        permanent_url: str | None = None
        still_permanent = True
        seen = {url}
        headers = {}
        if source.etag and is_validator(source.etag):
            headers["If-None-Match"] = source.etag
        if source.last_modified and is_validator(source.last_modified):
            headers["If-Modified-Since"] = source.last_modified
        for _hop in range(self.options.max_redirects + 1):
            if urlsplit(url).scheme not in ("http", "https"):
                raise FetchError(url, f"redirect to a non-HTTP URL: {url}")
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                if response.status in REDIRECTS and "location" in response.headers:
                    target = urljoin(url, response.headers["location"])
                    if target in seen:
                        raise FetchError(url, f"redirect loop at {target}")
                    seen.add(target)
                    still_permanent = still_permanent and response.status in PERMANENT_REDIRECTS
                    if still_permanent:
                        permanent_url = target
                    url = target
                    continue
                body = None
                if response.status == 200:
                    body = await self._read_capped(response, url)
                return self._result(source, response, url, body, permanent_url, started)
        raise FetchError(source.url, f"more than {self.options.max_redirects} redirects")

    def _result(
        self,
        source: SourceToFetch,
        response: aiohttp.ClientResponse,
        url: str,
        body: bytes | None,
        permanent_url: str | None,
        started: float,
    ) -> FetchResult:
        status = response.status
        h = response.headers
        error = None
        retryable = True
        if status == 410:
            error, retryable = "410 Gone: the publisher removed this feed", False
        elif status != 304 and not 200 <= status < 300:
            error = visible(f"HTTP {status} {response.reason or ''}".rstrip())
        elif status != 304 and status != 200:
            error = f"HTTP {status}: no feed body"
        return FetchResult(
            source_id=source.id,
            url=url,
            # Stamped once the answer is in: Retry-After and max-age count from when we
            # heard them, so "come back in 60 s" can never be scheduled a few ms early.
            fetched_at=self.clock(),
            status=status,
            body=body,
            content_type=h.get("content-type"),
            # A 304 may omit validators; keep the ones we sent (RFC 9110 §15.4.5).
            etag=_validator(h.get("etag")) or (source.etag if status == 304 else None),
            last_modified=_validator(h.get("last-modified")) or (source.last_modified if status == 304 else None),
            permanent_url=permanent_url,
            # A list-valued header sent on several lines is one list (RFC 9110 §5.3).
            cache_control=", ".join(h.getall("cache-control", ())) or None,
            expires=h.get("expires"),
            retry_after=h.get("retry-after"),
            error=error,
            retryable=retryable,
            elapsed=time.monotonic() - started,
        )

    async def _read_capped(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        cap = self.options.max_body_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ResponseTooLargeError(url, f"body of {int(declared)} bytes exceeds the {cap}-byte cap")
        encoding = response.headers.get("content-encoding", "")
        decoder = contentcoding.decoder(encoding, url)
        after = f" (after {encoding} decompression)" if decoder.decodes else ""
        chunks: list[bytes] = []
        size = 0

        def keep(pieces: Iterable[bytes]) -> None:
            nonlocal size
            for piece in pieces:
                size += len(piece)
                if size > cap:
                    raise ResponseTooLargeError(url, f"body exceeds the {cap}-byte cap{after}")
                chunks.append(piece)

        try:
            async for raw in response.content.iter_any():
                keep(decoder.feed(raw))
            keep(decoder.flush())
        except DECODE_ERRORS as exc:
            raise FetchError(url, f"cannot decode the {encoding} body: {exc}") from None
        return b"".join(chunks)

    @asynccontextmanager
    async def _host_slot(self, url: str) -> AsyncIterator[None]:
        async with self._hosts[(urlsplit(url).hostname or "").lower()]:
            yield


def blocked_address(address: IPAddress) -> bool:
    """True for addresses a public feed has no business living on (SSRF guard). An IPv6 address
    that carries an IPv4 one (mapped, 6to4 ``2002::/16``, Teredo's client) is judged on that too:
    on a network that routes 6to4, ``2002:7f00:1::`` reaches 127.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = (address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None)
        if any(inner is not None and blocked_address(inner) for inner in carried):
            return True
        if address.ipv4_mapped:
            address = address.ipv4_mapped
        elif address.is_site_local:  # fec0::/10: deprecated, still routed on some networks
            return True
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address in METADATA_ADDRESSES
        or (isinstance(address, ipaddress.IPv4Address) and address in CARRIER_GRADE_NAT)
    )


# --- the sessions, and the SSRF guard where sockets are opened --------------------------------

MAX_HEADER_LINE = 32 * 1024  # aiohttp's default (8 KiB) refuses feeds behind long CSP or cookie headers


def _session(options: FetchOptions, guard: _Guard | None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=options.concurrency,
        limit_per_host=0,  # ours, with a queue that does not count against the timeouts
        resolver=guard,
        socket_factory=guard.socket if guard is not None else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Timeouts per step; the total is asyncio.wait_for's, around all redirect hops.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout),
        headers={"User-Agent": options.user_agent, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING},
        auto_decompress=False,  # decoded here, in bounded steps
        trust_env=False,
        max_line_size=MAX_HEADER_LINE,
        max_field_size=MAX_HEADER_LINE,
    )


MAX_VALIDATOR = 1024


def is_validator(value: str) -> bool:
    """Whether an ``ETag`` or ``Last-Modified`` value can be sent back in a request header:
    visible ASCII and spaces, not too long. A server's one bad header, stored and sent back,
    made every later request fail before it left ("Forbidden control character"), and only a
    successful fetch would have replaced it."""
    return len(value) <= MAX_VALIDATOR and all(" " <= c <= "~" or c == "\t" for c in value)


def _validator(value: str | None) -> str | None:
    """``value`` if it is a validator we can send back (``is_validator``), else None."""
    return value if value and is_validator(value) else None


def failure_message(exc: FetchError | aiohttp.ClientError | OSError | ValueError, options: FetchOptions) -> str:
    """Why a fetch failed, in words a feed's owner can act on (the most specific kind first)."""
    if isinstance(exc, FetchError):
        return exc.message
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return _timeout_message(exc, options)
    if isinstance(exc, aiohttp.ClientError):
        return _client_error_message(exc)
    if isinstance(exc, OSError):
        return f"network error: {exc}"
    return f"invalid URL: {exc}"


def _timeout_message(exc: TimeoutError, options: FetchOptions) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"timed out connecting after {options.connect_timeout:g}s"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return f"timed out: the server sent nothing for {options.read_timeout:g}s (read timeout)"
    return f"timed out: no complete answer within {options.total_timeout:g}s (total timeout)"


def _client_error_message(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.InvalidURL):
        # A malformed Location (e.g. "http://[oops/") must cost this source, not the batch.
        return f"invalid URL: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated: the connection closed before the whole body arrived"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Guard(AbstractResolver):
    """The SSRF guard: resolves names itself and refuses blocked addresses, twice over.

    As the connector's resolver it refuses a name that resolves to a blocked address,
    with a message naming both. As its socket factory it checks the very address each
    socket is about to connect to — which also covers IP literals (the connector never
    asks the resolver about those) and leaves no gap between a check and a second DNS
    answer (rebinding). TLS still verifies the certificate against the host name.
    """

    def __init__(self, resolve: Resolver, is_blocked: Callable[[IPAddress], bool]) -> None:
        self._resolve = resolve
        self._is_blocked = is_blocked

    async def resolve(
        self,
        host: str,
        port: int = 0,
        # Part of aiohttp's resolver signature (passed by name): the guard returns every address
        # the name has, each with its own family, and the connector chooses.
        family: socket.AddressFamily = socket.AF_INET,  # noqa: ARG002
    ) -> list[ResolveResult]:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await self._resolve(host, port)]
        except OSError as exc:
            raise FetchError(host, f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
        if not addresses:
            raise FetchError(host, f"cannot resolve {host}: no addresses")
        for address in addresses:
            if self._is_blocked(address):
                raise _refused(host, f"{host} resolves to {address}, which")
        return [  # in resolver order, like a browser without happy eyeballs
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    def socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if self._is_blocked(address):
            raise _refused(str(address), str(address))
        return socket.socket(family, kind, proto)

    async def close(self) -> None:
        pass


def _refused(host: str, shown: str) -> BlockedAddressError:
    return BlockedAddressError(
        host,
        f"{shown} is a private, loopback, link-local or metadata address; refused "
        "(set allow_private_networks: true in settings, or allow_private_network: true on the source)",
    )


def _reason(exc: OSError) -> str:
    """The reason an OS error gives ("Connection refused"), not asyncio's "Connect call failed (…)"."""
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
