"""Stop work when the client leaves: plain JSON responses, whose handler otherwise runs to the end, and
streams (api/sse.py's `EventStream` runs its stream under this watch).

The work runs in the request's own task; a watcher task waits for the disconnect and cancels it. The
watcher starts only once the work has run for WATCH_AFTER_S: most answers from the cache or a fast model
are out before that, and for them the watch costs an entry in a dictionary. (Two tasks and an
`asyncio.wait` per request, the obvious form, cost a request more than its whole admission; a timer per
request, the next form, a timer handle made and cancelled for nearly every request.) One sweep per event
loop, every SWEEP_S while any request is watched, starts the watchers of those that have run long enough:
a disconnect is seen between WATCH_AFTER_S and WATCH_AFTER_S + SWEEP_S after the work began, or at once
once its watcher runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.types import Message

from llmops.errors import RequestCancelled

T = TypeVar("T")
Receive = Callable[[], Awaitable[Message]]


class HasReceive(Protocol):
    """What is watched: a Request (or anything with its `receive`)."""

    @property
    def receive(self) -> Receive: ...


WATCH_AFTER_S = 0.05  # a request done sooner never starts a watcher
SWEEP_S = 0.025  # how often the loop's sweep looks for requests that have run WATCH_AFTER_S


class _Watcher:
    __slots__ = ("left", "receive", "task", "work")

    def __init__(self, receive: Receive, work: asyncio.Task[Any]) -> None:
        self.receive, self.work, self.left = receive, work, False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self.work.cancel()

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _Sweep:
    """One event loop's watched requests: task -> (when its work began, its `receive`), and the watchers
    started for those that ran WATCH_AFTER_S. Its timer runs only while a request is watched."""

    __slots__ = ("loop", "pending", "timer", "watchers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[asyncio.Task[Any], tuple[float, Receive]] = {}
        self.watchers: dict[asyncio.Task[Any], _Watcher] = {}
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self.pending[task] = (self.loop.time(), receive)
        if self.timer is None:
            self.timer = self.loop.call_later(SWEEP_S, self._sweep)

    def done(self, task: asyncio.Task[Any]) -> _Watcher | None:
        """Stop watching `task`; its watcher, when one was started."""
        if self.pending.pop(task, None) is not None:
            return None
        watcher = self.watchers.pop(task, None)
        if watcher is not None:
            watcher.stop()
        return watcher

    def _sweep(self) -> None:
        self.timer = None
        due = self.loop.time() - WATCH_AFTER_S
        started = [task for task, (began, _) in self.pending.items() if began <= due]
        for task in started:
            _, receive = self.pending.pop(task)
            watcher = self.watchers[task] = _Watcher(receive, task)
            watcher.start()
        if self.pending:
            self.timer = self.loop.call_later(SWEEP_S, self._sweep)


_sweep: _Sweep | None = None  # the running loop's (one loop at a time runs requests in a process)


def _loop_sweep() -> _Sweep:
    global _sweep
    loop = asyncio.get_running_loop()
    sweep = _sweep
    if sweep is None or sweep.loop is not loop:
        sweep = _sweep = _Sweep(loop)
    return sweep


async def cancel_on_disconnect(request: HasReceive, work: Awaitable[T]) -> T:
    """`work`'s result; RequestCancelled (and `work` cancelled) when the client disconnects first. `work`
    may be a task (a stream's, api/sse.py): cancelling the awaiting task cancels it too."""
    current = asyncio.current_task()
    if current is None:  # pragma: no cover - always called from a task
        return await work
    sweep = _loop_sweep()
    sweep.watch(current, request.receive)
    try:
        return await work
    except asyncio.CancelledError:
        watcher = sweep.done(current)
        if watcher is not None and watcher.left and current.uncancel() == 0:  # the watcher's, not the server's
            raise RequestCancelled("the client disconnected") from None
        raise
    finally:
        sweep.done(current)
