"""What chat and completions share at the HTTP edge: run the pipeline (pipeline.stages, pipeline.text) and
answer as JSON or server-sent events, from the cache when it has the answer. The routes (chat.py,
completions.py) parse and format; this module sends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.sse import sse_response
from llmops.engines.base import Message
from llmops.pipeline import stages, text
from llmops.pipeline.generation import Choices, Collected, collect
from llmops.pipeline.stages import Call
from llmops.pipeline.text import TextKind, TextWork

TextCall = Call  # the name the routes' formatting functions use


async def prepare(request: Request, body: Any, kind: TextKind, *, messages: list[Message] | None = None,
                  prompts: Sequence[str] = ()) -> Call:
    """The stages before the engine; raises the request's 4xx/5xx (a block, a budget, a full breaker).
    `prompts`: completions' (each answered with n choices)."""
    work = TextWork(kind, body, tuple(messages) if messages is not None else None, tuple(prompts))
    return await stages.prepare(deps.services(request), deps.context(request), work)


def keeps(call: Call) -> bool:
    """Whether a cache keeps this request's answer (a stream gathers its texts only then)."""
    return stages.keeps_answer(call.services, call)


async def store(call: Call, body: dict[str, Any]) -> None:
    await stages.cache_store(call.services, call, body)


async def respond(request: Request, call: Call, body: Any, *,
                  replay: Callable[[dict[str, Any]], AsyncIterator[bytes]],
                  events: Callable[[Choices], AsyncIterator[bytes]],
                  complete: Callable[[Collected], BaseModel],
                  encode: Callable[[Collected], bytes | None] = lambda _: None) -> Response:
    """The answer as JSON or SSE: from the cache when it has it, else from the engine (and then cached).
    The route gives the formats: `replay` a cached body as events, `events` for live chunks, `complete`
    for the whole answer, and `encode` its JSON bytes without the model when it can (None: it cannot),
    used when no cache keeps the answer (a cache wants the model's dict)."""
    if call.hit is not None:
        if body.stream:
            return await sse_response(replay(call.hit), call.headers)
        return JSONResponse(call.hit, headers=call.headers())
    services = call.services
    assert isinstance(call.work, TextWork)
    choices = text.run(services, call, call.work)
    if body.stream:
        return await sse_response(events(choices), call.headers)
    try:
        done = await cancel_on_disconnect(request, collect(choices, call.work.choice_count))
    finally:  # the chunks settle the request; this covers a client gone before they started
        stages.settle_unused(services, call)
    if not stages.keeps_answer(services, call):
        raw = encode(done)
        if raw is not None:
            return Response(raw, headers=call.headers(), media_type="application/json")
    answer = complete(done)
    await stages.cache_store(services, call, answer)
    return encode_answer(answer, call.headers())


def encode_answer(answer: BaseModel, headers: dict[str, str]) -> Response:
    """pydantic's own encoder, straight to bytes: half the cost of a dict through json.dumps, same JSON."""
    return Response(answer.model_dump_json(), headers=headers, media_type="application/json")
