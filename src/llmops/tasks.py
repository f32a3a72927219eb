"""Fire-and-forget work that must still finish (or be cancelled) deliberately: a shadow request. (What a
request gives back when it ends, its in-flight place, reservation and token correction, starts no task:
the stores queue those writes, stores/counters.py.) The set holds a
reference to each task until it ends (asyncio keeps only weak ones). And `SingleFlight`: one run of a
lookup at a time, shared by every caller that asks while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Start `work` now; safe to call from a `finally` (it does not await)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class SingleFlight(Generic[K, V]):
    """At most one run per key: a caller that asks while one runs gets that run, not a new one (so a burst
    of requests needing the same store read sends one query, not one each). A run's error goes to the
    callers that wait for it; one whose callers all left has its error read here, not logged by asyncio as
    never retrieved. `len()` is the number of runs in flight."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._running)

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> asyncio.Future[V]:
        """The run for `key`: the one in flight, or `work()` started now. Await it through
        `asyncio.shield` so that a caller who leaves does not cancel it for the others."""
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(work())
            running.add_done_callback(lambda done: self._ended(key, done))
        return running

    async def cancel(self) -> None:
        """Cancel every run in flight and wait for them to end."""
        running = list(self._running.values())
        for run in running:
            run.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def _ended(self, key: K, done: asyncio.Future[V]) -> None:
        self._running.pop(key, None)
        if not done.cancelled():
            done.exception()
