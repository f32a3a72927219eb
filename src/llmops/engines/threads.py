"""Thread bridging for engines whose backend blocks: run it on worker threads, stream into asyncio."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
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


class ThreadStream(Generic[T]):
    """Items pushed from a worker thread, read with `async for`. `cancelled` tells the worker to stop:
    it is set when the reader stops early (the client left, or the request failed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[T | BaseException | _Done] = asyncio.Queue()
        self.cancelled = threading.Event()

    def push(self, item: T) -> bool:
        """Called from the worker. Returns True when the worker should stop."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        return self.cancelled.is_set()

    def finish(self, error: BaseException | None = None) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, error if error else _DONE)

    async def items(self) -> AsyncIterator[T]:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled.set()


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
