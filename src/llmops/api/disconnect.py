"""Stop work when the client leaves. Streams are stopped by Starlette itself (it cancels the response
when the connection drops); this covers plain JSON responses, whose handler otherwise runs to the end.

The work runs in the request's own task; one watcher task waits for the disconnect and cancels it. (Two
tasks and an `asyncio.wait` per request, the obvious form, cost a request more than its whole admission.)"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from llmops.errors import RequestCancelled

T = TypeVar("T")


class _Watcher:
    __slots__ = ("left", "task")

    def __init__(self, request: Request, work_task: asyncio.Task[Any]) -> None:
        self.left = False
        self.task = asyncio.ensure_future(self._watch(request, work_task))

    async def _watch(self, request: Request, work_task: asyncio.Task[Any]) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.left = True
        work_task.cancel()


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; RequestCancelled (and `work` cancelled) when the client disconnects first."""
    current = asyncio.current_task()
    if current is None:  # pragma: no cover - always called from a task
        return await work
    watcher = _Watcher(request, current)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.left and current.uncancel() == 0:  # the watcher's cancellation, not the server's
            raise RequestCancelled("the client disconnected") from None
        raise
    finally:
        if not watcher.task.done():
            watcher.task.cancel()
