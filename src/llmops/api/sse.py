"""Server-sent events for streamed completions: `data: {json}` events, then `data: [DONE]`. An error
after the stream started becomes a final `data: {"error": ...}` event.

`EventStream` is the response that sends them. It does what Starlette's StreamingResponse (with the old
guard generator in front of it) did, the same bytes in the same ASGI messages, for less per event: each
event costs one `send`, with no generator layer between the route's events and the send, no check of the
chunk's type, and the stream runs in a task of its own, so resuming it for each token (the engine's chunks
come one per event-loop turn) re-enters only the stream's frames, not the whole request's (the edge,
the observer, the route). The client leaving is watched as the JSON answers' is (api/disconnect.py): the
watch costs nothing for a stream shorter than WATCH_AFTER_S, and past that a watcher reads `receive`,
as Starlette's `listen_for_disconnect` did, and cancels the stream when the client goes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmops.api.disconnect import cancel_on_disconnect
from llmops.errors import LLMOpsError, RequestCancelled, error_body, internal_error

log = logging.getLogger("llmops.api")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
_BODY = "http.response.body"


def event(payload: BaseModel | dict[str, Any]) -> bytes:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def _error_event(exc: Exception) -> bytes:
    """The stream's last event for an error after it started: the error's envelope (an unexpected one is
    logged here and answered as a 500 without internals)."""
    if isinstance(exc, LLMOpsError):
        return event(error_body(exc))
    log.error("stream failed after it started", exc_info=exc)
    return event(error_body(internal_error(exc)))


class EventStream(Response):
    """A 200 text/event-stream answer: `first`, the events of `rest`, [DONE] (or the error that ended
    `rest`, as the last event), each in its own `http.response.body` message, then the empty last one."""

    media_type = "text/event-stream"

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        self.first, self.rest = first, rest
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        try:
            await cancel_on_disconnect(_Client(receive), stream)
        except RequestCancelled:  # the client left: nobody to answer (the stream was cancelled, or had ended)
            if stream.done() and not stream.cancelled():
                stream.result()  # an error the stream ended with is still raised

    async def _stream(self, send: Send) -> None:
        rest = self.rest
        sending = True  # an exception from `send` is the connection's, not the stream's: not an event
        last = DONE
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": _BODY, "body": self.first, "more_body": True})
            sending = False
            async for item in rest:
                sending = True
                await send({"type": _BODY, "body": item, "more_body": True})
                sending = False
        except Exception as exc:
            if sending:
                raise
            last = _error_event(exc)
        finally:
            if sending:  # whatever stopped the sending (a cancellation too): the events' source stops now
                await _aclose(rest)
        await send({"type": _BODY, "body": last, "more_body": True})
        await send({"type": _BODY, "body": b"", "more_body": False})


class _Client:
    """What the disconnect watch reads of a request: its `receive`."""

    __slots__ = ("receive",)

    def __init__(self, receive: Receive) -> None:
        self.receive = receive


async def _aclose(items: AsyncIterator[bytes]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


async def sse_response(events: AsyncIterator[bytes],
                       headers: Callable[[], dict[str, str]] | None = None) -> EventStream:
    """Start the stream only once its first event exists, so errors raised before any output (full queue,
    deadline, context too long) are still plain HTTP errors with their status code. `headers` is called
    after that first event, when admission has said where the request queued."""
    first = await anext(events)
    extra = headers() if headers else {}
    return EventStream(first, events, {**SSE_HEADERS, **extra})

