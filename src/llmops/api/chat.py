"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmops.api import deps
from llmops.api.generation import (
    Collected,
    check_request,
    collect,
    new_id,
    now,
    stream_choices,
    text_requests,
)
from llmops.api.sse import event, sse_response
from llmops.engines.base import Message, TextEngine, TextRequest
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
    cfg, engine = deps.pool(request).text_engine(body.model)
    check_request(body, cfg)
    messages = tuple(Message(m.role, m.text()) for m in body.messages)
    reqs = text_requests(body, cfg, body.requested_max_tokens(), messages=messages)
    if body.stream:
        return await sse_response(_events(engine, reqs, body))
    done = await collect(engine, reqs)
    choices = [ChatChoice(index=i, message=AssistantMessage(content=text), finish_reason=_finish(done, i))
               for i, text in enumerate(done.texts)]
    result = ChatCompletion(id=new_id("chatcmpl"), created=now(), model=body.model, choices=choices,
                            usage=done.usage())
    return JSONResponse(result.model_dump())


def _finish(done: Collected, i: int) -> str:
    return done.finish[i] or "stop"


async def _events(engine: TextEngine, reqs: list[TextRequest], body: ChatCompletionRequest
                  ) -> AsyncIterator[bytes]:
    totals = Collected(texts=[], finish=[])
    chunk_id, created = new_id("chatcmpl"), now()

    def chunk(choices: list[ChatChunkChoice]) -> bytes:
        return event(ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=choices))

    pieces = stream_choices(engine, reqs, totals)
    first = await anext(pieces, None)  # errors before any output surface as plain HTTP errors
    for i in range(len(reqs)):
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
