"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from llmops.api import textcall, tool_calls
from llmops.api.chunks import ChunkEncoder, whole_answer
from llmops.api.logprobs import chat_logprobs
from llmops.api.sse import event
from llmops.engines.base import TextChunk
from llmops.errors import LLMOpsError
from llmops.pipeline import chat_controls
from llmops.pipeline.generation import Choices, Collected, new_id, now, unexpected
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
    """The answer's events, read straight from the pipeline's chunks (no generator between them and this
    one): the choices' role events once the first chunk exists (errors before any output stay plain HTTP
    errors), a text event per chunk, the usage. The texts are gathered only when a cache keeps the answer
    (the usage needs the counts alone)."""
    n = body.n
    totals = Collected.empty(n)
    chunk_id, created = new_id("chatcmpl"), now()
    encode = ChunkEncoder("chat", chunk_id, created, body.model)  # the models' bytes, no model per token
    piece, keep = encode.piece, textcall.keeps(call)
    started = False
    try:
        async for index, chunk in choices:
            if not started:
                started = True
                for i in range(n):
                    yield encode.role(i)
            if keep:
                totals.add(index, chunk)
            elif chunk.usage is not None:
                totals.add_usage(chunk.usage)
            if chunk.tool_calls:
                for part in _tool_pieces(encode, index, chunk):
                    yield part
            else:
                yield piece(index, chunk.text, chunk.finish_reason, chunk.logprobs)
    except LLMOpsError:
        raise
    except Exception as exc:  # an unexpected engine exception fails this request alone
        raise unexpected(exc) from exc
    if not started:
        for i in range(n):
            yield encode.role(i)
    if body.include_usage():
        yield encode.usage(totals.usage())
    if keep:
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


def _tool_pieces(encode: ChunkEncoder, index: int, chunk: TextChunk) -> list[bytes]:
    """A chunk with tool calls: its text and the calls in one event (through the models), then its finish."""
    out = [encode.choice(ChatChunkChoice(index=index, delta=ChatDelta(
        content=chunk.text or None, tool_calls=tool_calls.call_deltas(chunk.tool_calls))))]
    return [*out, encode.finish(index, chunk.finish_reason)] if chunk.finish_reason is not None else out
