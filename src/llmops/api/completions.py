"""POST /v1/completions: one prompt or several (each answered with n choices, choice p * n + j being prompt
p's j-th, as OpenAI numbers them), and `echo` (each choice's text starts with its prompt)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from llmops.api import textcall
from llmops.api.chunks import ChunkEncoder, whole_answer
from llmops.api.logprobs import completion_logprobs
from llmops.api.sse import event
from llmops.errors import InvalidRequest, LLMOpsError
from llmops.pipeline.generation import Choices, Collected, new_id, now, unexpected
from llmops.pipeline.text import TextWork
from llmops.protocol.completions import Completion, CompletionChoice, CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request) -> Response:
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequest("max_tokens must be at least 1 (0 asks for the prompt alone, with echo)",
                             param="max_tokens")
    call = await textcall.prepare(request, body, "completions", prompts=body.prompts())
    return await textcall.respond(request, call, body, replay=lambda hit: _replay(hit, body),
                                  events=lambda choices: _events(choices, body, call),
                                  complete=lambda done: _completion(done, body, new_id("cmpl"), now()),
                                  encode=lambda done: _answer_json(done, body))


def _answer_json(done: Collected, body: CompletionRequest) -> bytes | None:
    """`_completion(...).model_dump_json()`'s bytes without the models when no logprobs were asked for;
    None otherwise, and the route builds the model."""
    if body.logprobs is not None:
        return None
    return whole_answer("completions", new_id("cmpl"), now(), body.model, done)


def _completion(done: Collected, body: CompletionRequest, chunk_id: str, created: int) -> Completion:
    want = body.logprobs is not None
    out = [CompletionChoice(index=i, text=text, finish_reason=done.finish[i] or "stop",
                            logprobs=completion_logprobs(done.logprobs.get(i, ())) if want else None)
           for i, text in enumerate(done.texts)]
    return Completion(id=chunk_id, created=created, model=body.model, choices=out, usage=done.usage())


async def _events(choices: Choices, body: CompletionRequest, call: textcall.TextCall) -> AsyncIterator[bytes]:
    """The answer's events, read straight from the pipeline's chunks as chat's are (api/chat.py): a text
    event per chunk, the usage; the texts gathered, and the answer's model built, only when a cache keeps
    the answer (the usage needs the counts alone)."""
    count = call.work.choice_count if isinstance(call.work, TextWork) else body.n
    totals = Collected.empty(count)
    chunk_id, created = new_id("cmpl"), now()
    encode = ChunkEncoder("completions", chunk_id, created, body.model)  # the models' bytes, no model per token
    piece, keep = encode.piece, textcall.keeps(call)
    try:
        async for index, chunk in choices:
            if keep:
                totals.add(index, chunk)
            elif chunk.usage is not None:
                totals.add_usage(chunk.usage)
            yield piece(index, chunk.text, chunk.finish_reason, chunk.logprobs)
    except LLMOpsError:
        raise
    except Exception as exc:  # an unexpected engine exception fails this request alone
        raise unexpected(exc) from exc
    if body.include_usage():
        yield encode.usage(totals.usage())
    if keep:
        await textcall.store(call, _completion(totals, body, chunk_id, created).model_dump())


async def _replay(hit: dict[str, Any], body: CompletionRequest) -> AsyncIterator[bytes]:
    cached = Completion.model_validate(hit)
    for c in cached.choices:
        for choice in (CompletionChoice(index=c.index, text=c.text, finish_reason=None, logprobs=c.logprobs),
                       CompletionChoice(index=c.index, text="", finish_reason=c.finish_reason)):
            yield event(Completion(id=cached.id, created=cached.created, model=cached.model, choices=[choice]))
    if body.include_usage():
        yield event(Completion(id=cached.id, created=cached.created, model=cached.model, choices=[],
                               usage=cached.usage))
