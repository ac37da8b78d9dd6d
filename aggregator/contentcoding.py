"""Content-Encoding undone in bounded steps: gzip (multi-member), deflate (zlib or raw) and brotli.

The HTTP client's own decompression inflates each network chunk in one call, so 300 bytes of
brotli can expand to 200 MiB before anyone checks a cap. A ``Decoder`` yields at most
``DECODE_STEP`` bytes at a time, so ``fetch`` checks its body cap between steps and a bomb stops
at the cap, not at the end of memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

from aggregator.errors import FetchError

try:
    import brotli  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - brotli is a declared dependency
    brotli = None

# Only advertise brotli when the installed module can bound its output (brotli >= 1.2).
BROTLI_BOUNDED = brotli is not None and hasattr(brotli.Decompressor, "can_accept_more_data")
ACCEPT_ENCODING = "gzip, deflate, br" if BROTLI_BOUNDED else "gzip, deflate"
DECODE_STEP = 64 * 1024  # the most a decoder produces before the cap is checked again
DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error, brotli.error) if brotli is not None else (zlib.error,)


class Decoder(Protocol):
    decodes: bool

    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def flush(self) -> Iterator[bytes]: ...


def decoder(content_encoding: str, url: str) -> Decoder:
    """The decoder chain for a Content-Encoding list (applied in order, so undone in reverse)."""
    names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
    names = [n for n in names if n != "identity"]
    steps: list[Decoder] = []
    for name in reversed(names):
        if name in ("gzip", "x-gzip"):
            steps.append(_Inflate(zlib.MAX_WBITS | 16))
        elif name == "deflate":
            steps.append(_Inflate(zlib.MAX_WBITS, raw_fallback=True))
        elif name == "br" and BROTLI_BOUNDED:
            steps.append(_Brotli())
        else:
            raise FetchError(url, f"unsupported Content-Encoding {content_encoding!r} (we asked for {ACCEPT_ENCODING})")
    if not steps:
        return _Identity()
    return steps[0] if len(steps) == 1 else _Chain(steps)


class _Identity:
    decodes = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield data

    def flush(self) -> Iterator[bytes]:
        return iter(())


class _Inflate:
    """gzip (possibly multi-member) or deflate; ``raw_fallback`` for servers sending raw deflate."""

    decodes = True

    def __init__(self, wbits: int, *, raw_fallback: bool = False) -> None:
        self._wbits = wbits
        self._multi_member = bool(wbits & 16)  # concatenated gzip members are one valid gzip body
        self._d = zlib.decompressobj(wbits)
        self._raw_fallback = raw_fallback

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._raw_fallback:
            self._raw_fallback = False
            try:
                self._d.copy().decompress(data[:2])
            except zlib.error:
                # "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2); many servers send it raw.
                self._wbits = -zlib.MAX_WBITS
                self._d = zlib.decompressobj(self._wbits)
        while data:
            if self._d.eof:
                if not self._multi_member or not data.strip(b"\0"):
                    return  # trailing bytes (often NUL padding) after the stream: not content
                self._d = zlib.decompressobj(self._wbits)
            out = self._d.decompress(data, DECODE_STEP)
            if out:
                yield out
            data = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
            # All input taken but the output limit was hit: zlib may still hold output.
            while not data and len(out) == DECODE_STEP and not self._d.eof:
                out = self._d.decompress(b"", DECODE_STEP)
                if out:
                    yield out

    def flush(self) -> Iterator[bytes]:
        out = self._d.flush()
        if out:
            yield out


class _Brotli:
    decodes = True

    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        out = self._d.process(data, output_buffer_limit=DECODE_STEP)
        # Drain in bounded steps: brotli may hold output back even when it reports it can
        # take more input, so "until it gives nothing" rather than can_accept_more_data().
        while out:
            yield out
            if self._d.is_finished():
                return
            out = self._d.process(b"", output_buffer_limit=DECODE_STEP)

    def flush(self) -> Iterator[bytes]:
        return iter(())


class _Chain:
    decodes = True

    def __init__(self, steps: list[Decoder]) -> None:
        self._steps = steps

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, iter((data,)))

    def flush(self) -> Iterator[bytes]:
        for index, step in enumerate(self._steps):
            yield from self._through(index + 1, step.flush())

    def _through(self, index: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        if index == len(self._steps):
            yield from pieces
            return
        for piece in pieces:
            yield from self._through(index + 1, self._steps[index].feed(piece))
