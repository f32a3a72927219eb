"""Thread bridging for engines whose backend blocks: run it on worker threads, stream into asyncio."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def available_cores() -> int:
    """The cores this process may use (affinity/cgroup-aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class _Done:
    pass


_DONE = _Done()


class LoopWaker:
    """Wakes the event loop once for every stream that has news: the first push since the loop last woke
    sends the one `call_soon_threadsafe` (a write to the loop's self-pipe), pushes from other streams until
    then only add their reader to the list it releases. llama.cpp decodes all its slots together, so with 16
    streams 16 worker threads push a token each within microseconds: one wake-up for them, not sixteen.
    One per engine (its streams share it), created on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    def on(cls, current: LoopWaker | None, loop: asyncio.AbstractEventLoop) -> LoopWaker:
        """`current` when it serves `loop`, else a new one (an engine outlives a test's event loop)."""
        return current if current is not None and current.loop is loop else cls(loop)

    def wake(self, waiter: asyncio.Future[None]) -> None:
        """From a worker thread: release `waiter` on the loop, with whatever else is due."""
        with self._lock:
            self._waiters.append(waiter)
            if len(self._waiters) > 1:  # a wake-up is already on its way
                return
        self.loop.call_soon_threadsafe(self._release_all)

    def _release_all(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _release(waiter)


class ThreadStream(Generic[T]):
    """Items pushed from a worker thread, read with `async for`, in batches when the reader is behind.

    The worker appends to a list under a lock and wakes the event loop only when the reader is waiting
    for more (through the engine's LoopWaker, shared by its streams), so a busy loop is woken once for many
    items rather than once per item, and the reader takes everything that has piled up in one step
    (`batches`). With `eager=False` (a reader that wants only the whole answer) the loop is woken only at
    the end. `cancelled` tells the worker to stop: it is set when
    the reader stops early (the client left, or the request failed); `push` returns it, so the worker
    learns within one item."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, eager: bool = True,
                 waker: LoopWaker | None = None) -> None:
        self._loop = loop
        self._waker = waker if waker is not None else LoopWaker(loop)
        self._lock = threading.Lock()
        self._items: list[T | BaseException | _Done] = []
        self._waiter: asyncio.Future[None] | None = None
        self._eager = eager
        self.cancelled = threading.Event()

    def push(self, item: T) -> bool:
        """Called from the worker. Returns True when the worker should stop."""
        self._put(item, self._eager)
        return self.cancelled.is_set()

    def finish(self, error: BaseException | None = None) -> None:
        self._put(error if error else _DONE, True)

    def _put(self, item: T | BaseException | _Done, wake: bool) -> None:
        with self._lock:
            self._items.append(item)
            waiter = self._waiter if wake else None
            if waiter is not None:
                self._waiter = None
        if waiter is not None:
            self._waker.wake(waiter)

    async def _take(self) -> list[T | BaseException | _Done]:
        while True:
            with self._lock:
                if self._items:
                    items, self._items = self._items, []
                    return items
                waiter = self._waiter = self._loop.create_future()
            await waiter

    async def batches(self) -> AsyncGenerator[list[T], None]:
        """Every item pushed since the last batch (at least one); ends at `finish`, raising its error."""
        try:
            while True:
                batch: list[T] = []
                for item in await self._take():
                    if isinstance(item, _Done | BaseException):
                        if batch:
                            yield batch
                        if isinstance(item, BaseException):
                            raise item
                        return
                    batch.append(item)
                yield batch
        finally:
            self.cancelled.set()

    async def items(self) -> AsyncIterator[T]:
        """One item at a time (for readers that want them so)."""
        batches = self.batches()
        try:
            async for batch in batches:
                for item in batch:
                    yield item
        finally:
            await batches.aclose()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def run_worker(stream: ThreadStream[T], work: Callable[[], None],
               executor: Callable[[Callable[[], None]], object]) -> None:
    """Submit `work` to `executor`; its exception, or its end, finishes `stream`."""

    def wrapped() -> None:
        try:
            work()
        except BaseException as exc:
            stream.finish(exc)
        else:
            stream.finish()

    executor(wrapped)
