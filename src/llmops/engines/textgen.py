"""Helpers every text engine shares: prompt rendering, budget checks, stop handling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llmops.engines.base import Message, TextChunk, TextRequest
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
    """Drop the whitespace a base model writes after 'Assistant:' in the fallback format."""
    started = False
    async for chunk in chunks:
        if not started and chunk.finish_reason is None:
            text = chunk.text.lstrip()
            if not text:
                continue
            started = True
            chunk = TextChunk(text)
        yield chunk


def last_user_text(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")
