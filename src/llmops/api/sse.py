"""Server-sent events for streamed completions: `data: {json}` events, then `data: [DONE]`. An error
after the stream started becomes a final `data: {"error": ...}` event."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from llmops.errors import LLMOpsError, error_body, internal_error

log = logging.getLogger("llmops.api")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: BaseModel | dict[str, Any]) -> bytes:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


async def _guard(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The first event, the rest, [DONE]; an error after the start becomes the last event."""
    try:
        yield first
        async for item in rest:
            yield item
        yield b"data: [DONE]\n\n"
    except LLMOpsError as exc:
        yield event(error_body(exc))
    except Exception as exc:
        log.exception("stream failed after it started")
        yield event(error_body(internal_error(exc)))


async def sse_response(events: AsyncIterator[bytes],
                       headers: Callable[[], dict[str, str]] | None = None) -> StreamingResponse:
    """Start the stream only once its first event exists, so errors raised before any output (full queue,
    deadline, context too long) are still plain HTTP errors with their status code. `headers` is called
    after that first event, when admission has said where the request queued."""
    first = await anext(events)
    extra = headers() if headers else {}
    return StreamingResponse(_guard(first, events), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **extra})
