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
from importlib import resources

from llmops.engines.base import Message, ToolSpec
from llmops.engines.constrained import render_call, tools_preamble

ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}
FALLBACK_STOPS = ("\nUser:", "\nAssistant:", "\nSystem:")


def _turn_text(m: Message) -> str:
    calls = "\n".join(render_call(c.name, c.arguments) for c in m.tool_calls)
    return "\n".join(part for part in (m.content.strip(), calls) if part)


def render_fallback(messages: Sequence[Message], tools: ToolSpec | None = None) -> str:
    system = [m.content.strip() for m in messages if m.role in ("system", "developer")]
    if tools is not None:
        system.append(tools_preamble(tools))
    turns = [f"{ROLE_LABELS.get(m.role, m.role.title())}: {_turn_text(m)}"
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



def chatml_tools_template() -> str:
    """A ChatML template that can show tools and tool turns (the Hermes/Qwen convention), for ChatML models
    whose own template cannot (SmolLM2-Instruct's): engine option `chat_template: chatml-tools`."""
    return (resources.files("llmops.engines") / "templates" / "chatml_tools.jinja").read_text(encoding="utf-8")
