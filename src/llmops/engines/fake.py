"""A real, deterministic engine with no ML dependencies, for tests and demos.

Tokens are whitespace-separated words (`tokenizer: bytes`: the prompt's every UTF-8 byte is a token, the most
any byte-level tokenizer makes, for the budget's tests). The answer is `options.reply` if set, otherwise an echo of the
prompt's last user message (or the prompt). Asked for logprobs, each word gets a made-up one (`_logprob`);
asked to score the prompt (`sampling.prompt_logprobs`), its words get made-up ones too, in a first chunk
before the answer.
Prompts containing `[[fail]]` make the engine raise before any output; `[[fail-mid-stream]]` raises after
two tokens: both exercise the server's error paths.
`tokens_generated` in the health detail counts every token ever produced, so tests can see when
generation stops.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import (
    UNSCORED,
    EngineHealth,
    TextCapabilities,
    TextChunk,
    TextRequest,
    TokenLogprob,
    TokenUsage,
)
from llmops.engines.textgen import last_user_text, prepare_fallback, resolve_max_tokens


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reply: str | None = Field(None, description="fixed answer; default: echo the last user message")
    token_delay_s: float = Field(0.0, ge=0, le=10, description="sleep per generated token")
    load_delay_s: float = Field(0.0, ge=0, le=60, description="sleep in start(), to test readiness")
    context_length: int = Field(2048, ge=16)
    capacity: int = Field(4, ge=1, description="requests it works on at once (admission's default)")
    tokenizer: Literal["words", "bytes"] = Field("words", description="how the prompt's tokens are counted: "
                                                 "its words, or its UTF-8 bytes (a tokenizer at its densest)")
    template_text: str = Field("", max_length=65536, description="text the prompt format adds before every "
                               "prompt, as a chat template's default system prompt does")
    prompt_logprobs: bool = Field(True, description="scores prompts (echo with logprobs); false: refuses to, "
                                  "as engines that cannot (llama.cpp)")


class FakeTextEngine:
    Options = FakeOptions

    def __init__(self, model_name: str, options: FakeOptions) -> None:
        self.model_name = model_name
        self.options = options
        self.context_length = options.context_length
        self.capacity = options.capacity
        self.capabilities = TextCapabilities(logprobs=True, prompt_logprobs=options.prompt_logprobs)
        self.tokens_generated = 0
        self._state: EngineHealth = EngineHealth("loading")

    async def start(self) -> None:
        await asyncio.sleep(self.options.load_delay_s)
        self._state = EngineHealth("ready")

    async def close(self) -> None:
        self._state = EngineHealth("closed")

    def health(self) -> EngineHealth:
        return EngineHealth(self._state.state, {"tokens_generated": self.tokens_generated})

    def _answer(self, request: TextRequest) -> str:
        if self.options.reply is not None:
            return self.options.reply
        if request.messages is not None:
            return f"Echo: {last_user_text(request.messages)}"
        return f"echo: {request.prompt}"

    async def generate(self, request: TextRequest) -> AsyncIterator[TextChunk]:
        prepared = prepare_fallback(request)
        text = self.options.template_text + prepared.text
        prompt_tokens = len(text.split()) if self.options.tokenizer == "words" else \
            len(text.encode("utf-8", "surrogatepass"))
        budget = resolve_max_tokens(request.sampling.max_tokens, prompt_tokens, self.context_length,
                                    request.sampling.default_max_tokens)
        if "[[fail]]" in prepared.text:
            raise RuntimeError("fake engine failure requested by the prompt")
        if request.sampling.prompt_logprobs is not None:
            yield TextChunk("", prompt_logprobs=_scored_prompt(prepared.text, request.sampling.prompt_logprobs))
        words = self._answer(request).split(" ")
        stops = prepared.stops
        find_stop, longest = (_stop_finder(stops), max(map(len, stops))) if stops else (None, 0)
        sent, count = "", 0  # the answer so far (only its last `longest` characters are read), its tokens
        finish: str = "length" if len(words) > budget else "stop"
        fail_mid_stream = "[[fail-mid-stream]]" in prepared.text
        for i, word in enumerate(words[:budget]):
            if i == 2 and fail_mid_stream:
                raise RuntimeError("fake engine failure in the middle of a stream")
            piece = word if i == 0 else " " + word
            if find_stop is not None and find_stop(sent[-longest:] + piece):  # the tail suffices (`_stop_finder`)
                finish = "stop"
                break
            await asyncio.sleep(self.options.token_delay_s)
            self.tokens_generated += 1
            count += 1
            if find_stop is not None:
                sent += piece
            top = request.sampling.logprobs
            yield TextChunk(piece) if top is None else TextChunk(piece, logprobs=(_logprob(piece, i, top),))
        usage = TokenUsage(prompt_tokens, count)
        yield TextChunk("", finish_reason="stop" if finish == "stop" else "length", usage=usage)


@functools.lru_cache(maxsize=256)
def _stop_finder(stops: tuple[str, ...]) -> Callable[[str], object]:
    """What finds any of `stops` in a text, in one search (made once per set of stops: most requests share the
    chat format's). It is given the answer's tail and the next piece: a stop the answer so far held would
    have ended it already, so a new one ends in the piece and starts within the tail's last `len(stop) - 1`
    characters. Reading that, not the whole answer joined again for every token (quadratic in the answer's
    length), finds the same stops."""
    return re.compile("|".join(map(re.escape, stops))).search


def _logprob(piece: str, position: int, top: int) -> TokenLogprob:
    """A made-up but well-formed log probability for the token at `position`: -0.25, -0.5, -0.75, -1.0 in
    turn; its alternatives are the token itself, then ` alt1`, ` alt2`... each one less likely."""
    own = -0.25 * (position % 4 + 1)
    alternatives = [(piece, own), *((f" alt{j}", own - j) for j in range(1, top))][:top]
    return TokenLogprob(piece, own, tuple(piece.encode()),
                        tuple(TokenLogprob(t, lp, tuple(t.encode())) for t, lp in alternatives))


def _scored_prompt(text: str, top: int) -> tuple[TokenLogprob, ...]:
    """The prompt's words as tokens (together they are the prompt, spaces included), each scored as
    `_logprob` scores an answer's; the first UNSCORED, with no alternatives."""
    pieces = [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))]
    first = TokenLogprob(pieces[0], UNSCORED, tuple(pieces[0].encode()))
    return (first, *(_logprob(piece, i, top) for i, piece in enumerate(pieces[1:], start=1)))
