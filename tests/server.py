"""A real HTTP server on 127.0.0.1 for tests, which can misbehave on purpose.

Each path is a ``Route``: a status, a body, headers, and optional misbehaviour — ETag /
Last-Modified with real conditional handling, gzip, a delay before answering, a stall
in the middle of the body, a body trickled out a few bytes at a time, a truncated body,
a chunked body with no Content-Length. Every request is recorded so a test can assert
what the client sent (conditional headers, User-Agent), and the most requests ever in
flight at once is kept so a test can check concurrency limits without timing anything.
"""

from __future__ import annotations

import gzip
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/xml; charset=utf-8"
    etag: str | None = None
    last_modified: str | None = None
    gzip: bool = False
    delay: float = 0.0  # before the status line
    stall_after: int | None = None  # bytes sent before stalling
    stall_seconds: float = 0.0
    truncate_to: int | None = None  # announce the full length, send fewer bytes, close
    chunked: bool = False  # Transfer-Encoding: chunked, so the client cannot know the size up front
    trickle_bytes: int = 0  # send the body this many bytes at a time ...
    trickle_seconds: float = 0.0  # ... with this pause between pieces
    reason: str | None = None  # the status line's reason phrase, if not the standard one


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FeedServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        class Server(ThreadingHTTPServer):
            # The default listen backlog of 5 drops connections when a test fetches dozens of
            # feeds at once, and the client then sees a connect timeout that is not the test's.
            request_queue_size = 128

            def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
                # A client that gives up on a kept-alive connection (a body over its cap, a
                # timeout, a run that stops) resets it, often what the test is about: printed,
                # the server's traceback read like a failure in the test log.
                if isinstance(sys.exc_info()[1], ConnectionError):
                    return
                super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval: stop() waits up to one interval, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server: bytes are for AF_UNIX paths
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, route: Route | None = None, **kwargs: object) -> str:
        self.routes[path] = route or Route(**kwargs)  # type: ignore[arg-type]
        return self.url(path)

    def hits(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> FeedServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(Seen("GET", h.path, {k.lower(): v for k, v in h.headers.items()}))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(h)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        route = self.routes.get(h.path)
        if route is None:
            self._send(h, 404, b"not found", {"Content-Type": "text/plain"})
            return
        if route.delay:
            time.sleep(route.delay)
        headers = {"Content-Type": route.content_type, **route.headers}
        if route.etag:
            headers["ETag"] = route.etag
        if route.last_modified:
            headers["Last-Modified"] = route.last_modified
        if route.status == 200:
            inm = h.headers.get("If-None-Match")
            ims = h.headers.get("If-Modified-Since")
            if (route.etag and inm == route.etag) or (not inm and route.last_modified and ims == route.last_modified):
                headers.pop("Content-Type", None)
                self._send(h, 304, b"", headers)
                return
        body = route.body
        if route.gzip and "gzip" in (h.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._send(h, route.status, body, headers, route)

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], route: Route | None = None
    ) -> None:
        try:
            h.send_response(status, route.reason if route is not None else None)
            for name, value in headers.items():
                h.send_header(name, value)
            if route is not None and route.chunked:
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                for start in range(0, len(body), 16384):
                    piece = body[start : start + 16384]
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                h.wfile.write(b"0\r\n\r\n")
                return
            h.send_header("Content-Length", str(len(body)))
            if route is not None and route.truncate_to is not None:
                h.send_header("Connection", "close")
            h.end_headers()
            if status == 304:
                return
            if route is not None and route.truncate_to is not None:
                h.wfile.write(body[: route.truncate_to])
                h.wfile.flush()
                h.close_connection = True
                return
            if route is not None and route.trickle_bytes:
                for start in range(0, len(body), route.trickle_bytes):
                    h.wfile.write(body[start : start + route.trickle_bytes])
                    h.wfile.flush()
                    time.sleep(route.trickle_seconds)
            elif route is not None and route.stall_after is not None:
                h.wfile.write(body[: route.stall_after])
                h.wfile.flush()
                time.sleep(route.stall_seconds)
                h.wfile.write(body[route.stall_after :])
            else:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
