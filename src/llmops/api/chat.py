"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.generation import (
    Choices,
    Collected,
    admit,
    check_request,
    collect,
    new_id,
    now,
    run_choices,
    stream_choices,
    text_requests,
)
from llmops.api.request_meta import request_meta
from llmops.api.sse import event, sse_response
from llmops.engines.base import Message
from llmops.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
)

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    deps.authorize(request, body.model)
    served, engine = deps.pool(request).text_engine(body.model)
    check_request(body, served.config)
    meta = request_meta(request, served.config, body.service_tier())
    messages = tuple(Message(m.role, m.text()) for m in body.messages)
    reqs = text_requests(body, served.config, body.requested_max_tokens(), messages=messages)
    charge = await admit(request, served.config, sum(len(m.text()) for m in body.messages))
    choices = run_choices(request, served, engine, reqs, meta, charge)
    if body.stream:
        return await sse_response(_events(choices, len(reqs), body), meta.headers)
    done = await cancel_on_disconnect(request, collect(choices, len(reqs)))
    out = [ChatChoice(index=i, message=AssistantMessage(content=text), finish_reason=_finish(done, i))
           for i, text in enumerate(done.texts)]
    result = ChatCompletion(id=new_id("chatcmpl"), created=now(), model=body.model, choices=out,
                            usage=done.usage())
    return JSONResponse(result.model_dump(), headers=meta.headers())


def _finish(done: Collected, i: int) -> str:
    return done.finish[i] or "stop"


async def _events(choices: Choices, n: int, body: ChatCompletionRequest) -> AsyncIterator[bytes]:
    totals = Collected(texts=[], finish=[])
    chunk_id, created = new_id("chatcmpl"), now()

    def chunk(choices: list[ChatChunkChoice]) -> bytes:
        return event(ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=choices))

    pieces = stream_choices(choices, totals)
    first = await anext(pieces, None)  # errors before any output surface as plain HTTP errors
    for i in range(n):
        yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
    if first is not None:
        yield chunk([_piece(*first)])
        async for item in pieces:
            yield chunk([_piece(*item)])
    if body.include_usage():
        yield event(ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=[],
                                        usage=totals.usage()))


def _piece(index: int, text: str, finish: str | None) -> ChatChunkChoice:
    if finish is not None:
        return ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish)
    return ChatChunkChoice(index=index, delta=ChatDelta(content=text))
