"""Group commit: fetch results waiting for the database writer share one transaction.

DESIGN.md decision 3: a fetch result is never split across transactions, and several may
share one. Every commit rewrites the pages it touched (SQLite copies each of them into its
WAL again, PostgreSQL logs and flushes them), and the story-matching keys of unrelated feeds
land on the same few index pages: a transaction per result paid for those pages once per
result, a batch pays once per batch.

``GroupCommit`` only decides *when* a batch goes and *what* is in it; ``run`` (the
pipeline's) commits it, all or nothing, and retries a failed batch result by result, so
this module knows nothing of the database.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")

# A batch goes when MAX_BATCH results wait, or when the oldest has waited MAX_DELAY seconds.
# Bounded so that a batch stays a short transaction: a claim queued behind it on the same writer
# thread waits for one batch at most, and a crash costs at most this many re-fetches. The delay
# is what makes batches during a first ingest, when results trickle in at the parse pool's pace
# and the writer is idle: on SQLite a batch of two or three saves nothing measurable (the pages
# a commit rewrites grow with it), the saving comes with a dozen results and more. A result
# waiting a quarter of a second costs nothing for a feed polled every few minutes.
MAX_BATCH = 64
MAX_DELAY = 0.25


class GroupCommit(Generic[A, R]):
    """Collect calls on the event loop and hand them to ``run`` in batches, at most ``slots`` at once.

    ``run`` gets the waiting calls' arguments in arrival order and returns one outcome per call:
    its result, or the exception that call alone raises. A batch starts as soon as a slot is
    free and either ``max_batch`` calls wait or the oldest has waited ``max_delay``: while the
    writer is busy, results pile up and go together the moment it is free, without waiting
    more. A caller cancelled before its batch starts is left out of it (as a call still queued
    for an executor is dropped); once started, its result is committed all the same.
    """

    def __init__(
        self,
        run: Callable[[list[A]], Awaitable[Sequence[R | Exception]]],
        *,
        slots: int,
        max_batch: int | None = None,
        max_delay: float | None = None,
    ) -> None:
        self._run = run
        self.slots = slots
        self.max_batch = MAX_BATCH if max_batch is None else max_batch
        self.max_delay = MAX_DELAY if max_delay is None else max_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[tuple[A, asyncio.Future[R], float]] = deque()
        self._busy = 0
        self._wake: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()  # strong references: the loop keeps weak ones

    async def submit(self, args: A) -> R:
        """Commit ``args`` in the next batch; its own result, or its own exception."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (each ``asyncio.run``): whatever the last one left is gone with it.
            self._loop, self._waiting, self._busy, self._wake, self._flusher = loop, deque(), 0, None, None
            self._batches = set()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((args, future, loop.time()))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="group-commit")
        else:
            self._poke()
        return await future

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _flush(self) -> None:
        """Start batches while calls wait; return when none does."""
        loop = asyncio.get_running_loop()
        while True:
            while self._waiting and self._waiting[0][1].cancelled():
                self._waiting.popleft()
            if not self._waiting:
                return
            timeout: float | None = None
            if self._busy < self.slots:
                timeout = self._waiting[0][2] + self.max_delay - loop.time()
                if len(self._waiting) >= self.max_batch or timeout <= 0:
                    self._start(self._take())
                    continue
            # Woken by a new call (the batch may be full now) or a finished batch (a slot is free).
            self._wake = loop.create_future()
            await asyncio.wait([self._wake], timeout=timeout)
            self._wake = None

    def _take(self) -> list[tuple[A, asyncio.Future[R]]]:
        batch: list[tuple[A, asyncio.Future[R]]] = []
        while self._waiting and len(batch) < self.max_batch:
            args, future, _ = self._waiting.popleft()
            if not future.cancelled():
                batch.append((args, future))
        return batch

    def _start(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        if batch:
            assert self._loop is not None
            self._busy += 1
            task = self._loop.create_task(self._commit(batch), name="group-commit-batch")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _commit(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._run([args for args, _ in batch])
        except Exception as exc:  # the writer itself failed (shut down): every caller hears of it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        else:
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            self._busy -= 1
            self._poke()
