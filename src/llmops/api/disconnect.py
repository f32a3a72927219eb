"""Stop work when the client leaves. Streams are stopped by Starlette itself (it cancels the response
when the connection drops); this covers plain JSON responses, whose handler otherwise runs to the end.

The work runs in the request's own task; a watcher task waits for the disconnect and cancels it. The
watcher starts only once the work has run for WATCH_AFTER_S: most answers from the cache or a fast model
are out before that, and for them a timer is all it costs. (Two tasks and an `asyncio.wait` per request,
the obvious form, cost a request more than its whole admission.)"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from llmops.errors import RequestCancelled

T = TypeVar("T")


WATCH_AFTER_S = 0.05  # a request done sooner never starts a watcher; a disconnect is seen at most this late


class _Watcher:
    __slots__ = ("left", "request", "task", "work")

    def __init__(self, request: Request, work: asyncio.Task[Any]) -> None:
        self.request, self.work, self.left = request, work, False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self.work.cancel()

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; RequestCancelled (and `work` cancelled) when the client disconnects first."""
    current = asyncio.current_task()
    if current is None:  # pragma: no cover - always called from a task
        return await work
    watcher = _Watcher(request, current)
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watcher.start)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.left and current.uncancel() == 0:  # the watcher's cancellation, not the server's
            raise RequestCancelled("the client disconnected") from None
        raise
    finally:
        timer.cancel()
        watcher.stop()
