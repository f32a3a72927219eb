"""Group commit, for the spend ledgers (SQLite and Redis): callers queue an item and go on (or wait until it
is written); one writer task writes everything queued as one batch, then whatever arrived meanwhile, until
nothing is queued. A lone item after a pause is written at once; under load a batch starts at most every
`linger_s`, so the store sees a few writes a second however many requests settle, each carrying many
requests. A reader that waits for the queued items (`written`, `close`) ends the linger at once, so a
longer linger costs a reader nothing. Batches are written in order, so waiting for the last one waits for
everything before it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("llmops.ledger")


class GroupCommit(Generic[T]):
    """`write(batch)` is called with each batch and must report its own failures (log, metric): the items of
    a batch that failed are not retried, and their waiters are released all the same."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], linger_s: float) -> None:
        self._write, self._linger_s = write, linger_s
        self._queued: list[T] = []
        self._queued_written: asyncio.Future[None] | None = None  # resolved once the queued items are written
        self._writing: asyncio.Future[None] | None = None  # the same for the batch being written now
        self._writer: asyncio.Task[None] | None = None
        self._last_write = 0.0  # time.monotonic() when the last batch began
        self._lingering: asyncio.Future[None] | None = None  # resolved when the linger ends (or is cut short)
        self._hurried = False  # someone waits for the queued items: the next batch starts without lingering

    def add(self, item: T) -> asyncio.Future[None]:
        """Queue `item`; the future resolves once the batch holding it has been written (or has failed).
        Await it through `asyncio.shield`: it is shared by every item of the batch."""
        if self._queued_written is None:
            self._queued_written = asyncio.get_running_loop().create_future()
        self._queued.append(item)
        self._start()
        return self._queued_written

    async def written(self) -> None:
        """Wait until every item queued before now has been written."""
        waiting = self._queued_written or self._writing
        if waiting is not None:
            self._hurry()
            await asyncio.shield(waiting)

    async def close(self) -> None:
        """Write every queued item."""
        self._start()  # should a writer have been cancelled with items still queued
        self._hurry()
        while self._writer is not None:
            await asyncio.wait({self._writer})  # never raises: the writer reports its own failures

    def _start(self) -> None:
        if self._writer is None and self._queued:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        try:
            while self._queued:
                linger = self._last_write + self._linger_s - time.monotonic()
                if linger > 0 and not self._hurried:  # under load at most this often; after a pause, at once
                    await self._linger(linger)
                self._last_write, self._hurried = time.monotonic(), False
                batch, self._queued = self._queued, []
                written, self._queued_written = self._queued_written, None
                self._writing = written
                try:
                    await self._write(batch)
                except Exception:  # `write` reports its own failures; this is a bug in it, said once
                    log.exception("writing a batch of %d failed", len(batch))
                finally:
                    self._writing = None
                    if written is not None and not written.done():
                        written.set_result(None)
        finally:
            self._writer = None

    async def _linger(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._lingering = ended = loop.create_future()
        timer = loop.call_later(seconds, _end, ended)
        try:
            await ended
        finally:
            timer.cancel()
            self._lingering = None

    def _hurry(self) -> None:
        """Someone waits for the queued items: write them now."""
        self._hurried = True
        if self._lingering is not None:
            _end(self._lingering)


def _end(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
