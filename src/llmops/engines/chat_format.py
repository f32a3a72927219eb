"""The fallback chat format, for models that ship no chat template (Gemma 3 270M base is one).

A base model continues text; it does not know turn markers. This format writes the conversation as a
plain transcript that a base model continues naturally, and the stop sequences end the answer where the
model would start writing the next turn itself:

    <system text>

    User: <user text>
    Assistant: <assistant text>
    User: <user text>
    Assistant:
"""

from __future__ import annotations

from collections.abc import Sequence

from llmops.engines.base import Message

ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}
FALLBACK_STOPS = ("\nUser:", "\nAssistant:", "\nSystem:")


def render_fallback(messages: Sequence[Message]) -> str:
    system = [m.content.strip() for m in messages if m.role in ("system", "developer")]
    turns = [f"{ROLE_LABELS.get(m.role, m.role.title())}: {m.content.strip()}"
             for m in messages if m.role not in ("system", "developer")]
    head = "\n\n".join(system)
    body = "\n".join([*turns, "Assistant:"])
    return f"{head}\n\n{body}" if head else body


def merge_stops(requested: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """Request stops first, then the format's own, without duplicates."""
    out: list[str] = []
    for s in (*requested, *extra):
        if s not in out:
            out.append(s)
    return tuple(out)
