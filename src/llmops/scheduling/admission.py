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
    staged: bool = field(default=False, compare=False)  # granted, it waits for a batch before it runs


@dataclass
class Ticket:
    """What admission tells about a request: its place on arrival and how long it waited."""

    position: int
    queued_s: float = 0.0


class Place:
    """One request's place at admission: granted a running slot already, or waiting in the queue. Made by
    `Admission.enter` (which refuses at once when the queue is full), then awaited with `wait`, then
    given back with `release` however the work ends."""

    def __init__(self, admission: Admission, waiter: _Waiter | None, position: int, staged: bool) -> None:
        self._admission, self._waiter, self.position = admission, waiter, position
        self._staged = staged  # counted as queued (in `Admission.staged`) from its grant until `start`
        self._released = False

    def start(self) -> None:
        """A staged place's work reaches the engine (a batcher calls it): it stops counting as queued."""
        if self._staged and self.granted:
            self._staged = False
            self._admission.staged -= 1

    @property
    def granted(self) -> bool:
        return self._waiter is None or (self._waiter.granted.done() and not self._waiter.granted.cancelled())

    def queue_position(self) -> int | None:
        """Requests ahead of this one now (None once it runs)."""
        if self._waiter is None or self.granted:
            return None
        return self._admission.ahead_of(self._waiter)

    async def wait(self, deadline: float) -> Ticket:
        """Until a slot is granted (504 when `deadline`, a `time.monotonic()` time, passes first)."""
        if self._waiter is None:
            return Ticket(self.position)
        return await self._admission.wait(self._waiter, self.position, deadline)

    def release(self) -> None:
        """Give the slot back, or leave the queue; idempotent."""
        if self._released:
            return
        self._released = True
        if self._staged and self.granted:
            self._staged = False
            self._admission.staged -= 1
        if self._waiter is None:
            self._admission.release()
        elif not self._admission.abandon(self._waiter) and not self._waiter.granted.cancelled():
            self._admission.release()  # granted (not withdrawn earlier): give the slot back


class _Slot:
    """`Admission.slot`'s context manager: a place on entering, waited for; given back on leaving, or at
    once when the wait fails (a deadline, a cancellation). A class, not an @asynccontextmanager: every
    request enters one, and that would be one more async generator each."""

    __slots__ = ("_admission", "_deadline", "_place", "_priority")

    def __init__(self, admission: Admission, deadline: float, priority: Priority) -> None:
        self._admission, self._deadline, self._priority = admission, deadline, priority
        self._place: Place | None = None

    async def __aenter__(self) -> Ticket:
        self._place = place = self._admission.enter(self._priority)
        try:
            return await place.wait(self._deadline)
        except BaseException:
            place.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        if self._place is not None:
            self._place.release()


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running, self.max_queued = max_running, max_queued
        self.running = 0
        self.staged = 0  # granted places not on the engine yet (waiting for their batch): queued, to a reader
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self.closed = False

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._heap if not w.granted.done())

    @property
    def queued(self) -> int:
        """What waits, for metrics and /ready: the queue, plus staged places waiting for their batch."""
        return self.waiting + self.staged

    @property
    def on_engine(self) -> int:
        return self.running - self.staged

    def slot(self, deadline: float, priority: Priority = "interactive") -> _Slot:
        """Hold a running slot for the body of the `async with`. `deadline` is a `time.monotonic()` time."""
        return _Slot(self, deadline, priority)

    def enter(self, priority: Priority = "interactive", *, staged: bool = False) -> Place:
        """A place now: a running slot if one is free and nobody waits, else a place in the queue; 503 at
        once when the queue is full or admission is closed (draining). `staged`: the work waits for a batch
        once granted, and counts as queued until `Place.start`."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        if self.running < self.max_running and not self.waiting:
            self.running += 1
            self.staged += staged
            return Place(self, None, 0, staged)
        waiter = _Waiter(_RANK[priority], next(self._seq), asyncio.get_running_loop().create_future(), staged)
        position = self.ahead_of(waiter)
        heapq.heappush(self._heap, waiter)
        return Place(self, waiter, position, staged)

    def refusal(self) -> ShuttingDown | Overloaded | None:
        """What `enter` would refuse a new request with now (None: it would get a slot or a queue place).
        The HTTP edge asks this before reading a request's body, so a full queue costs a refusal nothing."""
        if self.closed:
            return ShuttingDown("the server is shutting down")
        waiting = self.waiting
        if (self.running >= self.max_running or waiting) and waiting >= self.max_queued:
            return Overloaded(f"{self.running} requests running and {waiting} queued: try again shortly",
                              retry_after=self._retry_after())
        return None

    def ahead_of(self, waiter: _Waiter) -> int:
        return sum(1 for w in self._heap if not w.granted.done() and w < waiter)

    async def wait(self, waiter: _Waiter, position: int, deadline: float) -> Ticket:
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, deadline - started)):
                await asyncio.shield(waiter.granted)
        except TimeoutError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                return Ticket(position, time.monotonic() - started)  # granted just as the deadline hit
            raise DeadlineExceeded(f"the request waited {time.monotonic() - started:.1f} s in the queue and "
                                   "reached its deadline before it could run") from None
        return Ticket(position, time.monotonic() - started)

    def abandon(self, waiter: _Waiter) -> bool:
        """Withdraw a waiter. False when it had already been granted a slot (the caller then owns it)."""
        if waiter.granted.done():
            return False
        waiter.granted.cancel()
        return True

    def release(self) -> None:
        self.running -= 1
        while self._heap and self.running < self.max_running:
            waiter = heapq.heappop(self._heap)
            if not waiter.granted.done():
                self.running += 1
                self.staged += waiter.staged
                waiter.granted.set_result(None)

    def _retry_after(self) -> int:
        return max(1, min(30, (self.waiting + self.running) // max(1, self.max_running)))
