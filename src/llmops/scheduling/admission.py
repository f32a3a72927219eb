"""Admission per model: at most `max_running` requests on the engine, at most `max_queued` waiting,
interactive before batch and first come first served within a class.

A full queue is refused at once (503 + Retry-After), never accepted and then timed out. A request still
queued at its deadline leaves the queue with 504 without running. The engine therefore never holds more
work than it has slots for, and what waits, waits here, where it can be seen, prioritised and cancelled.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from llmops.errors import DeadlineExceeded, Overloaded, ShuttingDown

Priority = Literal["interactive", "batch"]
_RANK: dict[Priority, int] = {"interactive": 0, "batch": 1}


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    granted: asyncio.Future[None] = field(compare=False)


@dataclass
class Ticket:
    """What admission tells about a request: its place on arrival and how long it waited."""

    position: int
    queued_s: float = 0.0


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running, self.max_queued = max_running, max_queued
        self.running = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self.closed = False

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._heap if not w.granted.done())

    @asynccontextmanager
    async def slot(self, deadline: float, priority: Priority = "interactive") -> AsyncIterator[Ticket]:
        """Hold a running slot for the body of the `async with`. `deadline` is a `time.monotonic()` time."""
        ticket = await self._acquire(deadline, priority)
        try:
            yield ticket
        finally:
            self._release()

    async def _acquire(self, deadline: float, priority: Priority) -> Ticket:
        if self.closed:
            raise ShuttingDown("the server is shutting down", retry_after=5)
        if self.running < self.max_running and not self.waiting:
            self.running += 1
            return Ticket(position=0)
        if self.waiting >= self.max_queued:
            raise Overloaded(f"{self.running} requests running and {self.waiting} queued: try again shortly",
                             retry_after=self._retry_after())
        return await self._wait(deadline, priority)

    async def _wait(self, deadline: float, priority: Priority) -> Ticket:
        waiter = _Waiter(_RANK[priority], next(self._seq), asyncio.get_running_loop().create_future())
        position = sum(1 for w in self._heap if not w.granted.done() and w < waiter)
        heapq.heappush(self._heap, waiter)
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, deadline - started)):
                await asyncio.shield(waiter.granted)
        except TimeoutError:
            if not self._abandon(waiter):
                return Ticket(position, time.monotonic() - started)  # granted just as the deadline hit
            raise DeadlineExceeded(f"the request waited {time.monotonic() - started:.1f} s in the queue and "
                                   "reached its deadline before it could run") from None
        except BaseException:
            if not self._abandon(waiter):
                self._release()
            raise
        return Ticket(position, time.monotonic() - started)

    def _abandon(self, waiter: _Waiter) -> bool:
        """Withdraw a waiter. False when it had already been granted a slot (the caller then owns it)."""
        if waiter.granted.done():
            return False
        waiter.granted.cancel()
        return True

    def _release(self) -> None:
        self.running -= 1
        while self._heap and self.running < self.max_running:
            waiter = heapq.heappop(self._heap)
            if not waiter.granted.done():
                self.running += 1
                waiter.granted.set_result(None)

    def _retry_after(self) -> int:
        return max(1, min(30, (self.waiting + self.running) // max(1, self.max_running)))
