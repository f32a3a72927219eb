"""Stop work when the client leaves. Streams are stopped by Starlette itself (it cancels the response
when the connection drops); this covers plain JSON responses, whose handler otherwise runs to the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from llmops.errors import RequestCancelled

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        if watcher.done() and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise RequestCancelled("the client disconnected")
    return task.result()
