"""``Fetcher`` against a real HTTP server on 127.0.0.1 that misbehaves on purpose.

Every failure must come back as a ``FetchResult`` with a readable ``error`` — never as
an exception, since one bad source must not stop a batch — and only 410 may say
"permanent". Timeouts are kept small so the file runs in seconds; nothing here
asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest

from aggregator.fetch import Fetcher, FetchOptions, IPAddress, blocked_address
from aggregator.records import FetchResult, SourceToFetch
from tests.feeds import rss2
from tests.server import FeedServer

UA = "aggregator-test/1.0 (+http://feeds.test.example)"
OPTIONS = FetchOptions(
    user_agent=UA,
    connect_timeout=1.0,
    read_timeout=0.5,
    total_timeout=2.0,
    max_body_bytes=1024 * 1024,
    allow_private_networks=True,
)
BODY = rss2(1, 5)
LAST_MODIFIED = "Fri, 20 Nov 2026 12:00:00 GMT"
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def fetch(
    url: str,
    options: FetchOptions = OPTIONS,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    allow_private: bool = False,
    **fetcher_kwargs: Any,
) -> FetchResult:
    async def go() -> FetchResult:
        async with Fetcher(options, **fetcher_kwargs) as fetcher:
            return await fetcher.fetch(SourceToFetch(1, "test", url, etag, last_modified, allow_private))

    return asyncio.run(go())


def fetch_many(options: FetchOptions, urls: list[str], **fetcher_kwargs: Any) -> list[FetchResult]:
    async def go() -> list[FetchResult]:
        async with Fetcher(options, **fetcher_kwargs) as fetcher:
            sources = [SourceToFetch(n, f"s{n}", url) for n, url in enumerate(urls)]
            return list(await asyncio.gather(*(fetcher.fetch(s) for s in sources)))

    return asyncio.run(go())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def resolver(names: dict[str, str]) -> Callable[[str, int], Any]:
    """DNS as a dict: lets a test say "this name resolves there" without a DNS server."""

    async def resolve(host: str, _port: int) -> list[str]:
        if host in names:
            return [names[host]]
        try:
            return [str(ipaddress.ip_address(host))]  # literals resolve to themselves
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    return resolve


def loopback_plays_public(address: IPAddress) -> bool:
    """The guard, except that 127.0.0.1 stands in for a public server (our test server)."""
    return address != LOOPBACK and blocked_address(address)


# --- conditional GET and validators ---------------------------------------------------------


def test_first_fetch_is_unconditional_then_validators_get_a_304(server: FeedServer) -> None:
    url = server.add("/feed", body=BODY, etag='"v1"', last_modified=LAST_MODIFIED)
    first = fetch(url)
    assert (first.status, first.body, first.etag, first.last_modified) == (200, BODY, '"v1"', LAST_MODIFIED)
    assert first.ok and not first.not_modified
    assert "if-none-match" not in server.hits("/feed")[0].headers

    second = fetch(url, etag='"v1"', last_modified=LAST_MODIFIED)
    assert second.status == 304 and second.not_modified and second.ok
    assert second.body is None
    assert (second.etag, second.last_modified) == ('"v1"', LAST_MODIFIED)
    sent = server.hits("/feed")[1].headers
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == LAST_MODIFIED


def test_a_304_without_validators_keeps_the_ones_we_sent(server: FeedServer) -> None:
    url = server.add("/bare-304", status=304)
    result = fetch(url, etag='"kept"', last_modified=LAST_MODIFIED)
    assert result.not_modified
    assert (result.etag, result.last_modified) == ('"kept"', LAST_MODIFIED)


def test_a_changed_etag_brings_the_new_body_and_new_validators(server: FeedServer) -> None:
    url = server.add("/feed", body=rss2(1, 6), etag='"v2"')
    result = fetch(url, etag='"v1"')
    assert (result.status, result.body, result.etag) == (200, rss2(1, 6), '"v2"')


def test_unchanged_200_without_validators_sends_no_conditional_headers(server: FeedServer) -> None:
    url = server.add("/plain", body=BODY)
    results = [fetch(url), fetch(url)]
    assert [r.status for r in results] == [200, 200]
    assert results[0].body == results[1].body == BODY
    assert [r.etag for r in results] == [None, None]
    for seen in server.hits("/plain"):
        assert "if-none-match" not in seen.headers and "if-modified-since" not in seen.headers


def test_identifies_itself_and_offers_compression(server: FeedServer) -> None:
    url = server.add("/feed", body=BODY, gzip=True)
    result = fetch(url)
    assert result.body == BODY  # gzip on the wire, the feed bytes in the result
    sent = server.hits("/feed")[0].headers
    assert sent["user-agent"] == UA
    assert {e.strip() for e in sent["accept-encoding"].split(",")} == {"gzip", "deflate", "br"}
    assert "application/atom+xml" in sent["accept"] and "application/rss+xml" in sent["accept"]


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
def test_every_offered_encoding_is_decoded(server: FeedServer, encoding: str, encode: Callable[[bytes], bytes]) -> None:
    big = rss2(2, 400)  # several decode steps' worth
    url = server.add("/enc", body=encode(big), headers={"Content-Encoding": encoding})
    result = fetch(url)
    assert result.error is None
    assert result.body == big


def test_an_encoding_we_did_not_offer_is_an_error_not_garbage(server: FeedServer) -> None:
    url = server.add("/zstd", body=b"\x28\xb5\x2f\xfd...", headers={"Content-Encoding": "zstd"})
    result = fetch(url)
    assert not result.ok and result.retryable
    assert result.error is not None and "unsupported Content-Encoding 'zstd'" in result.error


def test_corrupt_gzip_is_a_clear_error(server: FeedServer) -> None:
    url = server.add("/bad-gzip", body=b"\x1f\x8b\x08\x00not really gzip", headers={"Content-Encoding": "gzip"})
    result = fetch(url)
    assert result.error is not None and result.error.startswith("cannot decode the gzip body")


# --- status codes ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("retry_after", ["120", "Fri, 20 Nov 2026 13:00:00 GMT"])
def test_throttling_surfaces_retry_after_in_both_forms(server: FeedServer, status: int, retry_after: str) -> None:
    url = server.add("/busy", status=status, body=b"slow down", headers={"Retry-After": retry_after})
    result = fetch(url)
    assert result.status == status
    assert result.retry_after == retry_after
    assert not result.ok and result.retryable
    assert result.error == f"HTTP {status} {'Too Many Requests' if status == 429 else 'Service Unavailable'}"
    assert result.body is None


def test_server_error_is_retryable(server: FeedServer) -> None:
    result = fetch(server.add("/boom", status=500, body=b"oops"))
    assert (result.status, result.error, result.retryable) == (500, "HTTP 500 Internal Server Error", True)


def test_410_gone_is_the_one_permanent_failure(server: FeedServer) -> None:
    result = fetch(server.add("/gone", status=410))
    assert result.status == 410
    assert result.retryable is False
    assert result.error == "410 Gone: the publisher removed this feed"


def test_404_is_retried_not_retired(server: FeedServer) -> None:
    result = fetch(server.url("/nothing-here"))
    assert (result.status, result.retryable) == (404, True)


def test_cache_headers_are_passed_on(server: FeedServer) -> None:
    url = server.add("/cached", body=BODY, headers={"Cache-Control": "public, max-age=3600", "Expires": LAST_MODIFIED})
    result = fetch(url)
    assert (result.cache_control, result.expires) == ("public, max-age=3600", LAST_MODIFIED)


def test_fetched_at_comes_from_the_clock_given(server: FeedServer) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    ok = fetch(server.add("/feed", body=BODY), clock=lambda: moment)
    refused = fetch(f"http://127.0.0.1:{closed_port()}/feed", clock=lambda: moment)
    assert ok.fetched_at == refused.fetched_at == moment


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "permanent"), [(301, True), (308, True), (302, False), (307, False)])
def test_only_permanent_redirects_move_the_feed(server: FeedServer, status: int, permanent: bool) -> None:
    new = server.add("/new", body=BODY)
    old = server.add("/old", status=status, headers={"Location": "/new"})  # relative, resolved against /old
    result = fetch(old)
    assert result.ok and result.body == BODY
    assert result.url == new
    assert result.permanent_url == (new if permanent else None)


def test_a_permanent_move_is_kept_up_to_the_first_temporary_hop(server: FeedServer) -> None:
    server.add("/a", status=301, headers={"Location": "/b"})
    b = server.add("/b", status=302, headers={"Location": "/c"})
    server.add("/c", body=BODY)
    assert fetch(server.url("/a")).permanent_url == b  # /b is where the feed lives now; /c is temporary
    server.add("/d", status=302, headers={"Location": "/e"})
    server.add("/e", status=301, headers={"Location": "/c"})
    assert fetch(server.url("/d")).permanent_url is None  # a temporary hop first: nothing is permanent


def test_validators_follow_the_redirect(server: FeedServer) -> None:
    server.add("/new", body=BODY, etag='"v1"')
    result = fetch(server.add("/old", status=301, headers={"Location": "/new"}), etag='"v1"')
    assert result.not_modified
    assert server.hits("/new")[0].headers["if-none-match"] == '"v1"'


def test_redirect_loop_is_caught(server: FeedServer) -> None:
    server.add("/ping", status=302, headers={"Location": "/pong"})
    server.add("/pong", status=302, headers={"Location": "/ping"})
    result = fetch(server.url("/ping"))
    assert result.error == f"redirect loop at {server.url('/ping')}"
    assert result.retryable
    assert len(server.requests) == 2


@pytest.mark.parametrize(("hops", "ok"), [(2, True), (3, False)])
def test_at_most_max_redirects_are_followed(server: FeedServer, hops: int, ok: bool) -> None:
    for n in range(hops):
        server.add(f"/hop{n}", status=302, headers={"Location": f"/hop{n + 1}"})
    server.add(f"/hop{hops}", body=BODY)
    result = fetch(server.url("/hop0"), replace(OPTIONS, max_redirects=2))
    assert result.ok is ok
    if not ok:
        assert result.error == "more than 2 redirects"
        assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("location", "message"),
    [("ftp://files.example.com/feed.xml", "redirect to a non-HTTP URL"), ("http://[oops/", "invalid URL")],
)
def test_a_bad_redirect_target_is_an_error_not_an_exception(server: FeedServer, location: str, message: str) -> None:
    result = fetch(server.add("/odd", status=301, headers={"Location": location}))
    assert result.error is not None and result.error.startswith(message)
    assert result.retryable


# --- network trouble ------------------------------------------------------------------------


def test_connection_refused() -> None:
    result = fetch(f"http://127.0.0.1:{closed_port()}/feed")
    assert result.status is None and not result.ok and result.retryable
    assert result.error is not None and result.error.startswith("cannot connect to 127.0.0.1:")
    assert "refused" in result.error.lower()


def test_a_server_stalling_mid_body_hits_the_read_timeout(server: FeedServer) -> None:
    url = server.add("/stall", body=BODY, stall_after=100, stall_seconds=3)
    result = fetch(url)
    assert result.status is None and result.retryable
    assert result.error == "timed out: the server sent nothing for 0.5s (read timeout)"


def test_a_server_trickling_forever_hits_the_total_timeout(server: FeedServer) -> None:
    # Each piece comes well within the read timeout; only the total timeout can stop it.
    url = server.add("/trickle", body=BODY, trickle_bytes=64, trickle_seconds=0.2)
    result = fetch(url, replace(OPTIONS, read_timeout=1.0, total_timeout=1.0))
    assert result.error == "timed out: no complete answer within 1s (total timeout)"
    assert result.retryable


def test_a_truncated_body_is_an_error(server: FeedServer) -> None:
    result = fetch(server.add("/short", body=BODY, truncate_to=50))
    assert result.body is None and result.retryable
    assert result.error == "truncated: the connection closed before the whole body arrived"


# --- the size cap ---------------------------------------------------------------------------

CAP = OPTIONS.max_body_bytes


def test_a_declared_length_over_the_cap_is_refused_before_reading(server: FeedServer) -> None:
    result = fetch(server.add("/huge", body=b"x" * (CAP + 1)))
    assert result.error == f"body of {CAP + 1} bytes exceeds the {CAP}-byte cap"


def test_an_undeclared_length_over_the_cap_is_stopped_while_streaming(server: FeedServer) -> None:
    result = fetch(server.add("/huge-chunked", body=b"x" * (CAP + 1), chunked=True))
    assert result.error == f"body exceeds the {CAP}-byte cap"
    exact = fetch(server.add("/exact-chunked", body=b"x" * CAP, chunked=True))
    assert exact.body is not None and len(exact.body) == CAP  # the cap itself is allowed


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("br", lambda b: brotli.compress(b, quality=4))]
)
def test_a_compression_bomb_stops_at_the_cap(
    server: FeedServer, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    bomb = compress(b"\0" * (64 * CAP))  # 64 MiB once inflated
    assert len(bomb) < CAP // 10  # small on the wire: only decompression can catch it
    url = server.add("/bomb", body=bomb, headers={"Content-Encoding": encoding})
    tracemalloc.start()
    try:
        result = fetch(url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.error == f"body exceeds the {CAP}-byte cap (after {encoding} decompression)"
    # Stopped at the cap, not after inflating it all: memory stays near the cap, far from 64x.
    assert peak < 8 * CAP, f"peak {peak / CAP:.1f}x the cap"


# --- the SSRF guard -------------------------------------------------------------------------

GUARDED = replace(OPTIONS, allow_private_networks=False)


def test_loopback_is_refused_by_default_with_a_clear_message(server: FeedServer) -> None:
    result = fetch(server.add("/feed", body=BODY), GUARDED)
    assert result.error == (
        "127.0.0.1 is a private, loopback, link-local or metadata address; refused "
        "(set allow_private_networks: true in settings, or allow_private_network: true on the source)"
    )
    # Retryable: the operator may lift the guard in the config, and the source must then work.
    assert result.retryable
    assert server.requests == []


def test_a_public_looking_name_resolving_to_loopback_is_refused(server: FeedServer) -> None:
    url = server.add("/feed", body=BODY).replace("127.0.0.1", "news.publisher.test")
    result = fetch(url, GUARDED, resolve=resolver({"news.publisher.test": "127.0.0.1"}))
    assert result.error is not None
    assert result.error.startswith("news.publisher.test resolves to 127.0.0.1, which is a private")
    assert server.requests == []


def test_the_guard_connects_to_the_address_it_checked(server: FeedServer) -> None:
    # ".test" names never resolve in real DNS: success proves the socket went to the checked address,
    # so a name cannot pass the check as public and then resolve again to something private.
    url = server.add("/feed", body=BODY).replace("127.0.0.1", "news.publisher.test")
    names = {"news.publisher.test": "127.0.0.1"}
    result = fetch(url, GUARDED, resolve=resolver(names), is_blocked=loopback_plays_public)
    assert result.ok and result.body == BODY
    assert server.hits("/feed")[0].headers["host"].startswith("news.publisher.test:")


@pytest.mark.parametrize(
    ("target", "refused"),
    [
        ("http://127.0.0.2:{port}/admin", "127.0.0.2 is a private"),
        ("http://[::1]:{port}/admin", "::1 is a private"),
        ("http://internal.publisher.test:{port}/admin", "internal.publisher.test resolves to 10.1.2.3"),
        ("http://metadata.publisher.test/latest/meta-data/", "metadata.publisher.test resolves to 169.254.169.254"),
    ],
)
def test_a_redirect_into_a_private_network_is_refused(server: FeedServer, target: str, refused: str) -> None:
    port = server.httpd.server_address[1]
    url = server.add("/feed", status=302, headers={"Location": target.format(port=port)})
    names = {"internal.publisher.test": "10.1.2.3", "metadata.publisher.test": "169.254.169.254"}
    result = fetch(url, GUARDED, resolve=resolver(names), is_blocked=loopback_plays_public)
    assert result.error is not None and result.error.startswith(refused), result.error
    assert [r.path for r in server.requests] == ["/feed"]  # the first hop went out, the second never did


def test_an_unresolvable_name_is_a_retryable_error() -> None:
    result = fetch("http://nowhere.publisher.test/feed", GUARDED, resolve=resolver({}))
    assert result.error is not None and result.error.startswith("cannot resolve nowhere.publisher.test")
    assert result.retryable


def test_the_per_source_flag_lifts_the_guard_for_that_source_only(server: FeedServer) -> None:
    url = server.add("/feed", body=BODY)
    assert fetch(url, GUARDED, allow_private=True).body == BODY
    assert not fetch(url, GUARDED).ok


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # AWS/GCP/Azure metadata
        ("100.100.100.200", True),  # Alibaba metadata
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fd00:ec2::254", True),  # AWS metadata over IPv6
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", True),
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
        ("::ffff:93.184.216.34", False),
        ("2002:7f00:1::", True),  # 6to4 carrying 127.0.0.1 (found by the security audit)
        ("2002:a9fe:a9fe::", True),  # ... carrying 169.254.169.254
        ("2002:5db8:d822::", False),  # ... carrying a public address
        ("fec0::1", True),  # site-local: deprecated, still routed on some networks
    ],
)
def test_blocked_address(address: str, blocked: bool) -> None:
    assert blocked_address(ipaddress.ip_address(address)) is blocked


# --- concurrency ----------------------------------------------------------------------------


def test_per_host_concurrency_is_respected(server: FeedServer) -> None:
    urls = [server.add(f"/slow{n}", body=BODY, delay=0.2) for n in range(6)]
    results = fetch_many(replace(OPTIONS, per_host_concurrency=2, concurrency=8), urls)
    assert all(r.ok for r in results)
    assert server.max_in_flight == 2


def test_a_busy_host_does_not_hold_global_slots_hostage(server: FeedServer) -> None:
    """Three feeds on one host (one at a time) and one elsewhere, with two global slots.

    The other host's feed must go out while the first busy-host feed is still being
    answered, not wait behind feeds that are only queuing for their own host.
    """
    port = server.httpd.server_address[1]
    busy = [server.add(f"/busy{n}", body=BODY, delay=0.3).replace("127.0.0.1", "busy.test") for n in range(3)]
    other = server.add("/other", body=BODY).replace("127.0.0.1", "other.test")
    names = {"busy.test": "127.0.0.1", "other.test": "127.0.0.1"}
    options = replace(GUARDED, concurrency=2, per_host_concurrency=1)
    results = fetch_many(options, [*busy, other], resolve=resolver(names), is_blocked=loopback_plays_public)
    assert all(r.ok for r in results), [r.error for r in results]
    paths = [r.path for r in server.requests]
    # /other went out while /busy0 was still being answered, before /busy1 could start.
    assert paths.index("/other") < paths.index("/busy1")
    assert port  # (the names above carry the server's port)
