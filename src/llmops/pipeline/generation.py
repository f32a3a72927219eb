"""What chat and completions share: request translation, the n choices, the usage totals."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from llmops.engines.base import (
    Message,
    SamplingParams,
    TextChunk,
    TextRequest,
    TokenLogprob,
    TokenUsage,
    ToolCallDelta,
)
from llmops.errors import InvalidRequest, LLMOpsError, UnsupportedParameter, internal_error
from llmops.ids import unique_hex
from llmops.pipeline import chat_controls
from llmops.protocol.common import SamplingFields, Usage
from llmops.settings import ModelConfig

log = logging.getLogger("llmops.api")


def new_id(prefix: str) -> str:
    return f"{prefix}-{unique_hex()}"


def now() -> int:
    return int(time.time())


def check_request(req: SamplingFields, cfg: ModelConfig) -> None:
    field_name = req.unsupported_field()
    if field_name:
        raise UnsupportedParameter(f"'{field_name}' is not supported by this server", param=field_name)
    if req.n > cfg.limits.max_n:
        raise InvalidRequest(f"n must be at most {cfg.limits.max_n} for model {cfg.name!r}", param="n")


def text_requests(req: SamplingFields, cfg: ModelConfig, max_tokens: int | None, *,
                  prompts: Sequence[str] = (), messages: tuple[Message, ...] | None = None) -> list[TextRequest]:
    """One engine request per choice: n for the messages, or n per prompt (several prompts: choice p * n + j
    is prompt p's j-th, as OpenAI numbers them). With a seed, choice j of each prompt uses seed + j, so the n
    answers differ and a prompt gets the answers it would get sent alone."""
    base_id = new_id("req")
    out = []
    for p, prompt in enumerate(prompts or [None]):
        for j in range(req.n):
            fields = req.sampling_fields()
            if req.seed is not None:
                fields["seed"] = req.seed + j
            sampling = SamplingParams(max_tokens=max_tokens, default_max_tokens=cfg.limits.default_max_tokens,
                                      **fields)
            out.append(TextRequest(f"{base_id}-{p * req.n + j}", sampling, prompt=prompt, messages=messages,
                                   stream=bool(getattr(req, "stream", True)),
                                   **chat_controls.engine_fields(req)))
    return out


@dataclass
class Collected:
    """A whole answer as its chunks arrive: each choice's text pieces (joined once, when `texts` is read: text
    added with `+=` to a list item copies the whole text each time, quadratic in a long answer), finish reasons,
    usage, tool calls and logprobs."""

    parts: list[list[str]]
    finish: list[str | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: dict[int, list[ToolCallDelta]] = field(default_factory=dict)  # tool calls per choice
    logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)  # per choice, when asked for

    @classmethod
    def empty(cls, n: int) -> Collected:
        """Nothing yet for `n` choices."""
        return cls(parts=[[] for _ in range(n)], finish=[None] * n)

    @property
    def texts(self) -> list[str]:
        """Each choice's text."""
        return ["".join(p) for p in self.parts]

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def add_usage(self, usage: TokenUsage) -> None:
        # one prompt, counted once over its n choices (several prompts: pipeline.text reports their running sum)
        self.prompt_tokens = max(self.prompt_tokens, usage.prompt_tokens)
        self.completion_tokens += usage.completion_tokens

    def add(self, index: int, chunk: TextChunk) -> None:
        """One chunk of choice `index`: its text, tool calls, finish reason and usage."""
        if chunk.usage:
            self.add_usage(chunk.usage)
        self.parts[index].append(chunk.text)
        if chunk.tool_calls:
            self.calls.setdefault(index, []).extend(chunk.tool_calls)
        if chunk.logprobs:
            self.logprobs.setdefault(index, []).extend(chunk.logprobs)
        self.finish[index] = chunk.finish_reason or self.finish[index]


Choices = AsyncIterator[tuple[int, TextChunk]]


async def collect(choices: Choices, n: int) -> Collected:
    """The whole answer, read without a generator of its own (one layer less per request than streaming).
    `n`: the request's choices (n per prompt)."""
    out = Collected.empty(n)
    try:
        async for index, chunk in choices:
            out.add(index, chunk)
    except LLMOpsError:
        raise
    except Exception as exc:
        raise unexpected(exc) from exc
    return out




def unexpected(exc: Exception) -> LLMOpsError:
    """An unexpected engine exception fails this request only: logged here with its traceback, answered
    as a 500 without internals."""
    log.exception("engine failed while serving a request", exc_info=exc)
    return internal_error(exc)
