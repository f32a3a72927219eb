"""Helpers every text engine shares: prompt rendering, budget checks, stop handling."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmops.engines.base import Message, TextChunk, TextRequest, TokenLogprob
from llmops.engines.chat_format import FALLBACK_STOPS, merge_stops, render_fallback
from llmops.errors import ContextLengthExceeded


@dataclass(frozen=True)
class PreparedPrompt:
    text: str
    stops: tuple[str, ...]
    fallback_chat: bool  # rendered with the fallback transcript format


def prepare_fallback(request: TextRequest) -> PreparedPrompt:
    """The prompt text for a request on a model without a chat template."""
    if request.messages is None:
        return PreparedPrompt(request.prompt or "", request.sampling.stop, False)
    stops = merge_stops(request.sampling.stop, FALLBACK_STOPS)
    return PreparedPrompt(render_fallback(request.messages, request.tools), stops, True)


def resolve_max_tokens(requested: int | None, prompt_tokens: int, context_length: int, default: int) -> int:
    """The completion budget: the request's, checked against the context, or the default capped by it."""
    room = context_length - prompt_tokens
    if requested is not None:
        if requested > room:
            raise ContextLengthExceeded(
                f"this model's context is {context_length} tokens; the prompt has {prompt_tokens} and "
                f"max_tokens asks for {requested} more", param="max_tokens" if room > 0 else "messages")
        return requested
    if room < 1:
        raise ContextLengthExceeded(
            f"this model's context is {context_length} tokens and the prompt alone has {prompt_tokens}",
            param="messages")
    return min(default, room)


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop sequence in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


async def strip_leading_space(chunks: AsyncIterator[TextChunk]) -> AsyncIterator[TextChunk]:
    """Drop the whitespace a base model writes after 'Assistant:' in the fallback format (the tokens that
    wrote it keep their logprobs: they were generated)."""
    started = False
    held: tuple[TokenLogprob, ...] = ()
    async for chunk in chunks:
        if not started and chunk.finish_reason is None:
            text = chunk.text.lstrip()
            if not text:
                held += chunk.logprobs
                continue
            started = True
            chunk = TextChunk(text, logprobs=held + chunk.logprobs)
        elif held:
            chunk, held = TextChunk(chunk.text, chunk.finish_reason, chunk.usage, chunk.tool_calls,
                                    held + chunk.logprobs), ()
        yield chunk


def token_logprobs(found: Any, top: int) -> list[TokenLogprob]:
    """The tokens of an OpenAI-format `logprobs` object (`{"content": [{"token", "logprob", "bytes",
    "top_logprobs": [...]}]}`, as llama.cpp's server and OpenAI-compatible upstreams send it), with at most
    `top` alternatives each. Anything else in its place is no tokens; a log probability that is not a
    finite number or -inf (a token the sampler could not have picked) is -9999.0, as OpenAI writes it."""
    content = found.get("content") if isinstance(found, dict) else None
    if not isinstance(content, list):
        return []
    out = []
    for item in content:
        if not isinstance(item, dict) or _end_of_turn(item):
            continue
        alternatives = item.get("top_logprobs")
        alts = alternatives[:top] if isinstance(alternatives, list) and top else []
        out.append(TokenLogprob(str(item.get("token", "")), _logprob(item.get("logprob")), _bytes(item.get("bytes")),
                                tuple(TokenLogprob(str(a.get("token", "")), _logprob(a.get("logprob")),
                                                   _bytes(a.get("bytes"))) for a in alts if isinstance(a, dict))))
    return out


LOGPROB_FLOOR = -9999.0  # OpenAI's value for a token with no probability


def _end_of_turn(item: dict[str, Any]) -> bool:
    """llama.cpp's entry for the token that ended the answer (no text, no bytes): OpenAI lists no such token."""
    return item.get("token") == "" and not item.get("bytes")


def _logprob(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return LOGPROB_FLOOR
    value = float(value)
    return max(value, LOGPROB_FLOOR) if not math.isnan(value) else LOGPROB_FLOOR


def _bytes(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return None
    return tuple(value)


def last_user_text(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")
