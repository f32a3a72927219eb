"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from llmops.api import textcall, tool_calls
from llmops.api.chunks import ChunkEncoder, whole_answer
from llmops.api.logprobs import chat_logprobs
from llmops.api.sse import event
from llmops.engines.base import TokenLogprob
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
                                  complete=lambda done: _completion(done, body, new_id("chatcmpl"), now()),
                                  encode=lambda done: _answer_json(done, body))


def _answer_json(done: Collected, body: ChatCompletionRequest) -> bytes | None:
    """`_completion(...).model_dump_json()`'s bytes without the models, for an answer of text alone (no tool
    calls, no logprobs asked for); None otherwise, and the route builds the model."""
    if body.logprobs or done.calls:
        return None
    return whole_answer("chat", new_id("chatcmpl"), now(), body.model, done)


def _completion(done: Collected, body: ChatCompletionRequest, chunk_id: str, created: int) -> ChatCompletion:
    out = [ChatChoice(index=i, message=tool_calls.assistant_message(text, done.calls.get(i, [])),
                      finish_reason=done.finish[i] or "stop",
                      logprobs=chat_logprobs(done.logprobs.get(i, ())) if body.logprobs else None)
           for i, text in enumerate(done.texts)]
    return ChatCompletion(id=chunk_id, created=created, model=body.model, choices=out, usage=done.usage())


async def _events(choices: Choices, body: ChatCompletionRequest, call: textcall.TextCall) -> AsyncIterator[bytes]:
    totals = Collected(texts=[""] * body.n, finish=[None] * body.n)
    chunk_id, created = new_id("chatcmpl"), now()
    encode = ChunkEncoder("chat", chunk_id, created, body.model)  # the models' bytes, no model per token
    pieces = stream_choices(choices, totals)
    first = await anext(pieces, None)  # errors before any output surface as plain HTTP errors
    for i in range(body.n):
        yield encode.role(i)
    sent: dict[int, int] = {}  # tool-call deltas sent per choice
    if first is not None:
        for part in _pieces(encode, *first, totals, sent):
            yield part
        async for item in pieces:
            for part in _pieces(encode, *item, totals, sent):
                yield part
    if body.include_usage():
        yield encode.usage(totals.usage())
    await textcall.store(call, _completion(totals, body, chunk_id, created).model_dump())


async def _replay(hit: dict[str, Any], body: ChatCompletionRequest) -> AsyncIterator[bytes]:
    """A cached answer as the stream the model would have sent."""
    cached = ChatCompletion.model_validate(hit)

    def chunk(choices: list[ChatChunkChoice]) -> bytes:
        return event(ChatCompletionChunk(id=cached.id, created=cached.created, model=cached.model, choices=choices))

    for c in cached.choices:
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(role="assistant", content=""))])
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(
            content=c.message.content, tool_calls=tool_calls.replay_deltas(c.message) or None),
            logprobs=c.logprobs)])
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(), finish_reason=c.finish_reason)])
    if body.include_usage():
        yield event(ChatCompletionChunk(id=cached.id, created=cached.created, model=cached.model, choices=[],
                                        usage=cached.usage))


def _pieces(encode: ChunkEncoder, index: int, text: str, finish: str | None, logprobs: tuple[TokenLogprob, ...],
            totals: Collected, sent: dict[int, int]) -> list[bytes]:
    """The chunk's text (and the tool calls that arrived with it, or its tokens' logprobs), then its finish:
    one event each."""
    calls = totals.calls.get(index, [])[sent.get(index, 0):]
    sent[index] = sent.get(index, 0) + len(calls)
    if not calls:
        return [encode.piece(index, text, finish, logprobs)]
    out = [encode.choice(ChatChunkChoice(index=index, delta=ChatDelta(content=text or None,
                                                                      tool_calls=tool_calls.call_deltas(calls))))]
    return [*out, encode.finish(index, finish)] if finish is not None else out
