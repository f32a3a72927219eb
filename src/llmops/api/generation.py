"""What chat and completions share: request translation, the n choices, the usage totals."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from llmops.api import deps
from llmops.api.request_meta import RequestMeta
from llmops.engines.base import Message, SamplingParams, TextChunk, TextEngine, TextRequest, TokenUsage
from llmops.errors import InvalidRequest, LLMOpsError, UnsupportedParameter, internal_error
from llmops.middleware.observe import log_fields
from llmops.observability.inference import InferenceObserver
from llmops.pipeline.accounting import Accountant, Charge
from llmops.protocol.common import SamplingFields, Usage
from llmops.scheduling.admission import Ticket
from llmops.scheduling.pool import Served
from llmops.scheduling.runner import admitted_choices
from llmops.settings import ModelConfig

log = logging.getLogger("llmops.api")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def check_request(req: SamplingFields, cfg: ModelConfig) -> None:
    field_name = req.unsupported_field()
    if field_name:
        raise UnsupportedParameter(f"'{field_name}' is not supported by this server", param=field_name)
    if req.n > cfg.limits.max_n:
        raise InvalidRequest(f"n must be at most {cfg.limits.max_n} for model {cfg.name!r}", param="n")


def text_requests(req: SamplingFields, cfg: ModelConfig, max_tokens: int | None, *,
                  prompt: str | None = None, messages: tuple[Message, ...] | None = None) -> list[TextRequest]:
    """One engine request per choice. With a seed, choice i uses seed + i so the n answers differ."""
    base_id = new_id("req")
    out = []
    for i in range(req.n):
        fields = req.sampling_fields()
        if req.seed is not None:
            fields["seed"] = req.seed + i
        sampling = SamplingParams(max_tokens=max_tokens, default_max_tokens=cfg.limits.default_max_tokens,
                                  **fields)
        out.append(TextRequest(f"{base_id}-{i}", sampling, prompt=prompt, messages=messages))
    return out


@dataclass
class Collected:
    texts: list[str]
    finish: list[str | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def add_usage(self, usage: TokenUsage) -> None:
        self.prompt_tokens = max(self.prompt_tokens, usage.prompt_tokens)  # one prompt, counted once
        self.completion_tokens += usage.completion_tokens


Choices = AsyncIterator[tuple[int, TextChunk]]


async def admit(request: Request, cfg: ModelConfig, prompt_chars: int) -> Charge:
    """Budget, spend breaker and tokens/min checks for the caller; the returned charge is settled later."""
    return await deps.accountant(request).admit(deps.api_key(request), cfg, prompt_chars)


def run_choices(request: Request, served: Served, engine: TextEngine, requests: list[TextRequest],
                meta: RequestMeta, charge: Charge) -> Choices:
    """The request's choices, admitted on the model's queue, bound by the request's deadline, observed,
    and accounted (tokens and cost) when they end, however they end."""
    obs = InferenceObserver(request.app.state.metrics, request.app.state.tracer, served.config.name,
                            log_fields(request.scope))

    def on_admit(ticket: Ticket) -> None:
        meta.admitted(ticket)
        obs.admitted(ticket)

    choices = admitted_choices(served.admission, engine, requests, meta.deadline, meta.priority, on_admit)
    return _settled(obs.text(choices), deps.accountant(request), charge)


async def _settled(choices: Choices, accountant: Accountant, charge: Charge) -> Choices:
    """Pass the chunks through; at the end settle the tokens. A choice cut short (cancelled, failed) has no
    usage chunk: its streamed chunks are counted as tokens, and the prompt as estimated."""
    prompt, completion = 0, 0
    chunks: dict[int, int] = {}
    reported: set[int] = set()
    try:
        async for index, chunk in choices:
            chunks[index] = chunks.get(index, 0) + (1 if chunk.text else 0)
            if chunk.usage:
                prompt = max(prompt, chunk.usage.prompt_tokens)
                completion += chunk.usage.completion_tokens
                reported.add(index)
            yield index, chunk
    finally:
        completion += sum(n for i, n in chunks.items() if i not in reported)
        if chunks and not prompt:
            prompt = charge.estimated_prompt
        accountant.settle(charge, prompt, completion)


async def collect(choices: Choices, n: int) -> Collected:
    out = Collected(texts=[""] * n, finish=[None] * n)
    async for index, chunk in _engine_errors(choices):
        out.texts[index] += chunk.text
        if chunk.finish_reason:
            out.finish[index] = chunk.finish_reason
        if chunk.usage:
            out.add_usage(chunk.usage)
    return out


async def _engine_errors(chunks: AsyncIterator[tuple[int, TextChunk]]) -> AsyncIterator[tuple[int, TextChunk]]:
    """An unexpected engine exception fails this request only, as a 500 without internals."""
    try:
        async for item in chunks:
            yield item
    except LLMOpsError:
        raise
    except Exception as exc:
        log.exception("engine failed while serving a request")
        raise internal_error(exc) from exc


async def stream_choices(choices: Choices, totals: Collected) -> AsyncIterator[tuple[int, str, str | None]]:
    """(index, text, finish_reason) as they come; usage accumulates into `totals`."""
    async for index, chunk in _engine_errors(choices):
        if chunk.usage:
            totals.add_usage(chunk.usage)
        yield index, chunk.text, chunk.finish_reason
