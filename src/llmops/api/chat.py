"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from llmops.api import textcall
from llmops.api.sse import event
from llmops.engines.base import Message
from llmops.pipeline.generation import Choices, Collected, new_id, now, stream_choices
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
    messages = [Message(m.role, m.text()) for m in body.messages]
    call = await textcall.prepare(request, body, "chat", messages=messages)
    return await textcall.respond(request, call, body, replay=lambda hit: _replay(hit, body),
                                  events=lambda choices: _events(choices, body, call),
                                  complete=lambda done: _completion(done, body.model, new_id("chatcmpl"), now()))


def _completion(done: Collected, model: str, chunk_id: str, created: int) -> ChatCompletion:
    out = [ChatChoice(index=i, message=AssistantMessage(content=text), finish_reason=done.finish[i] or "stop")
           for i, text in enumerate(done.texts)]
    return ChatCompletion(id=chunk_id, created=created, model=model, choices=out, usage=done.usage())


async def _events(choices: Choices, body: ChatCompletionRequest, call: textcall.TextCall) -> AsyncIterator[bytes]:
    totals = Collected(texts=[""] * body.n, finish=[None] * body.n)
    chunk_id, created = new_id("chatcmpl"), now()

    def chunk(choices: list[ChatChunkChoice]) -> bytes:
        return event(ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=choices))

    pieces = stream_choices(choices, totals)
    first = await anext(pieces, None)  # errors before any output surface as plain HTTP errors
    for i in range(body.n):
        yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
    if first is not None:
        yield chunk([_piece(*first)])
        async for item in pieces:
            yield chunk([_piece(*item)])
    if body.include_usage():
        yield event(ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=[],
                                        usage=totals.usage()))
    await textcall.store(call, _completion(totals, body.model, chunk_id, created).model_dump())


async def _replay(hit: dict[str, Any], body: ChatCompletionRequest) -> AsyncIterator[bytes]:
    """A cached answer as the stream the model would have sent."""
    cached = ChatCompletion.model_validate(hit)

    def chunk(choices: list[ChatChunkChoice]) -> bytes:
        return event(ChatCompletionChunk(id=cached.id, created=cached.created, model=cached.model, choices=choices))

    for c in cached.choices:
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(role="assistant", content=""))])
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(content=c.message.content))])
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(), finish_reason=c.finish_reason)])
    if body.include_usage():
        yield event(ChatCompletionChunk(id=cached.id, created=cached.created, model=cached.model, choices=[],
                                        usage=cached.usage))


def _piece(index: int, text: str, finish: str | None) -> ChatChunkChoice:
    if finish is not None:
        return ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish)
    return ChatChunkChoice(index=index, delta=ChatDelta(content=text))
