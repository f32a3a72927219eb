"""Tool calls in chat answers: the whole answer's message, the stream's deltas, and a cached answer's calls
replayed as deltas (the engine's `ToolCallDelta`s into the wire's models)."""

from __future__ import annotations

from collections.abc import Sequence

from llmops.engines.base import ToolCallDelta
from llmops.protocol.chat import AssistantMessage, FunctionCall, FunctionDelta, ToolCallDeltaOut, ToolCallOut


def assistant_message(text: str, calls: Sequence[ToolCallDelta]) -> AssistantMessage:
    if not calls:
        return AssistantMessage(content=text)
    out = [ToolCallOut(id=c.id or f"call_{c.index}", function=FunctionCall(name=c.name or "", arguments=c.arguments))
           for c in calls]
    return AssistantMessage(content=text or None, tool_calls=out)


def call_deltas(calls: Sequence[ToolCallDelta]) -> list[ToolCallDeltaOut]:
    return [ToolCallDeltaOut(index=c.index, id=c.id, type="function" if c.id else None,
                             function=FunctionDelta(name=c.name, arguments=c.arguments)) for c in calls]


def replay_deltas(message: AssistantMessage) -> list[ToolCallDeltaOut]:
    calls = [ToolCallDelta(i, c.id, c.function.name, c.function.arguments)
             for i, c in enumerate(message.tool_calls or [])]
    return call_deltas(calls)
