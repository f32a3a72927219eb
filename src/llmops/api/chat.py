"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from llmops.api import textcall, tool_calls
from llmops.api.sse import event
from llmops.pipeline import chat_controls
from llmops.pipeline.generation import Choices, Collected, new_id, now, stream_choices
from llmops.protocol.chat import (
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
    messages = chat_controls.messages(body)
    call = await textcall.prepare(request, body, "chat", messages=messages)
    return await textcall.respond(request, call, body, replay=lambda hit: _replay(hit, body),
                                  events=lambda choices: _events(choices, body, call),
                                  complete=lambda done: _completion(done, body.model, new_id("chatcmpl"), now()))


def _completion(done: Collected, model: str, chunk_id: str, created: int) -> ChatCompletion:
    out = [ChatChoice(index=i, message=tool_calls.assistant_message(text, done.calls.get(i, [])),
                      finish_reason=done.finish[i] or "stop") for i, text in enumerate(done.texts)]
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
    sent: dict[int, int] = {}  # tool-call deltas sent per choice
    if first is not None:
        for part in _pieces(*first, totals, sent):
            yield chunk([part])
        async for item in pieces:
            for part in _pieces(*item, totals, sent):
                yield chunk([part])
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
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(
            content=c.message.content, tool_calls=tool_calls.replay_deltas(c.message) or None))])
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(), finish_reason=c.finish_reason)])
    if body.include_usage():
        yield event(ChatCompletionChunk(id=cached.id, created=cached.created, model=cached.model, choices=[],
                                        usage=cached.usage))


def _pieces(index: int, text: str, finish: str | None, totals: Collected,
            sent: dict[int, int]) -> list[ChatChunkChoice]:
    """The chunk's text (and the tool calls that arrived with it), then its finish: one event each."""
    calls = totals.calls.get(index, [])[sent.get(index, 0):]
    sent[index] = sent.get(index, 0) + len(calls)
    if not calls:
        return [_piece(index, text, finish)]
    out = [ChatChunkChoice(index=index, delta=ChatDelta(content=text or None,
                                                        tool_calls=tool_calls.call_deltas(calls)))]
    return [*out, _piece(index, "", finish)] if finish is not None else out


def _piece(index: int, text: str, finish: str | None) -> ChatChunkChoice:
    if finish is not None:
        return ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish)
    return ChatChunkChoice(index=index, delta=ChatDelta(content=text))
