"""Constrained output on llama.cpp: structured output and tool calls as llama.cpp grammars.

`response_format` becomes llama.cpp's `json_schema` (compiled by llama.cpp into a grammar, so the answer
always parses and matches). Tools follow the Hermes/Qwen convention that tool-aware chat templates (and
the `chatml-tools` template in chat_format.py) write into the prompt: a call is
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. The grammar (llguidance syntax, which is
what this llama.cpp build speaks) admits only calls of the offered functions with arguments matching their
JSON schema: from the first token for `required` or a named function, from the `<tool_call>` trigger on
for `auto` (a lazy grammar: the model may answer in text instead).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from llmops.engines.base import TextChunk, TextRequest, ToolCallDelta, ToolSpec
from llmops.errors import InvalidRequest

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
SAFE_INTEGER = 2**53 - 1  # the integers JSON interoperates on (RFC 8259): a bound for unbounded ones
MAX_PARALLEL_CALLS = 4
_TRIGGER_WORD = 1  # llama.cpp's COMMON_GRAMMAR_TRIGGER_TYPE_WORD


ITEM_COUNTS = ("minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")


def bounded(schema: Any, limit: int | None = None) -> Any:
    """`schema` with every unbounded integer limited to +-(2^53 - 1): a small model at temperature 0 can
    otherwise write digits until max_tokens, and the answer never closes. With `limit` (the model's
    context, in tokens: each item or property takes at least one), a count no answer could reach is
    settled here, before the grammar compiler spends seconds and gigabytes unrolling it: a minimum above
    it is refused (400), a maximum at or above it says nothing and is dropped. (The schema's shape was
    checked by protocol/json_schema.py, its depth bounded, when the request was read.)"""
    if isinstance(schema, list):
        return [bounded(x, limit) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v, limit) for k, v in schema.items()}
    kind = out.get("type")
    if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGER
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INTEGER
    if limit is not None:
        _settle_counts(out, limit)
    return out


def _settle_counts(schema: dict[str, Any], limit: int) -> None:
    for name in ITEM_COUNTS:
        value = schema.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < limit:
            continue
        if name.startswith("min") and value > limit:
            raise InvalidRequest(f"the schema's {name} of {value} asks for more than an answer of this model's "
                                 f"{limit} tokens of context can hold", param="response_format")
        if name.startswith("max"):
            del schema[name]


def _function_schema(function: dict[str, Any], limit: int | None = None) -> dict[str, Any]:
    fn = function.get("function", function)
    params = fn.get("parameters") or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": bounded(params, limit)},
            "required": ["name", "arguments"]}


def _offered(spec: ToolSpec) -> list[dict[str, Any]]:
    if spec.choice in ("auto", "required"):
        return list(spec.functions)
    return [f for f in spec.functions if f.get("function", f).get("name") == spec.choice]


def tool_grammar(spec: ToolSpec, limit: int | None = None) -> str:
    schemas = [_function_schema(f, limit) for f in _offered(spec)]
    call = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    more = ' ("\\n" tc_call)?' * (MAX_PARALLEL_CALLS - 1) if spec.parallel else ""
    return ("%llguidance {}\n"
            f"start: tc_call{more}\n"
            f'tc_call: "{CALL_OPEN}\\n" %json {json.dumps(call)} "\\n{CALL_CLOSE}"\n')


def grammar_fields(request: TextRequest, limit: int | None = None) -> dict[str, Any]:
    """The llama.cpp completion fields that constrain this request's output (`limit`: the model's context
    in tokens, which bounds the counts a schema may ask for)."""
    if request.tools is not None:
        fields: dict[str, Any] = {"grammar": tool_grammar(request.tools, limit)}
        if request.tools.choice == "auto":
            fields.update(grammar_lazy=True, grammar_triggers=[{"type": _TRIGGER_WORD, "value": CALL_OPEN}])
        return fields
    if request.structured is not None:
        schema = request.structured.schema if request.structured.type == "json_schema" else None
        return {"json_schema": bounded(schema, limit) if schema else {"type": "object"}}
    return {}


def tools_preamble(spec: ToolSpec) -> str:
    """The tools as a system text, for prompts whose format has no place for them (the fallback format)."""
    listed = "\n".join(json.dumps(f) for f in spec.functions)
    return ("You may call functions to answer. They are listed within <tools></tools>:\n"
            f"<tools>\n{listed}\n</tools>\n"
            f"To call one, answer with {CALL_OPEN}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n'
            f"{CALL_CLOSE}")


def render_call(name: str, arguments: str) -> str:
    """A past call as the model writes one (for history in the fallback format)."""
    try:
        args: Any = json.loads(arguments)
    except ValueError:
        args = arguments
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': args})}\n{CALL_CLOSE}"


class _Splitter:
    """Text until the first `<tool_call>`, then calls: holds back what may be the start of the marker."""

    def __init__(self) -> None:
        self.pending = ""
        self.in_calls = False
        self.calls: list[tuple[str, str]] = []

    def feed(self, text: str) -> tuple[str, list[tuple[str, str]]]:
        self.pending += text
        if not self.in_calls:
            at = self.pending.find(CALL_OPEN)
            if at < 0:
                keep = _partial_suffix(self.pending, CALL_OPEN)
                out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
                return out, []
            out, self.pending, self.in_calls = self.pending[:at], self.pending[at:], True
            return out, self._take_calls()
        return "", self._take_calls()

    def _take_calls(self) -> list[tuple[str, str]]:
        found = []
        while (end := self.pending.find(CALL_CLOSE)) >= 0:
            block, self.pending = self.pending[:end], self.pending[end + len(CALL_CLOSE):]
            parsed = _parse_call(block.replace(CALL_OPEN, "", 1))
            if parsed is not None and parsed not in self.calls:  # a repeat of the same call is dropped
                self.calls.append(parsed)
                found.append(parsed)
        return found

    def flush(self) -> str:
        out = "" if self.in_calls else self.pending
        self.pending = ""
        return out


def _partial_suffix(text: str, marker: str) -> int:
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _parse_call(block: str) -> tuple[str, str] | None:
    try:
        data = json.loads(block.strip())
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    return data["name"], json.dumps(data.get("arguments", {}))


async def tool_call_stream(chunks: AsyncIterator[TextChunk]) -> AsyncIterator[TextChunk]:
    """Text chunks with the model's `<tool_call>` blocks turned into tool-call deltas, one per call; a
    stream that made calls finishes with `tool_calls`."""
    splitter = _Splitter()
    async for chunk in chunks:
        text, calls = splitter.feed(chunk.text)
        if chunk.finish_reason is not None:
            text += splitter.flush()
        deltas = tuple(ToolCallDelta(len(splitter.calls) - len(calls) + i, f"call_{uuid.uuid4().hex[:24]}", name,
                                     args) for i, (name, args) in enumerate(calls))
        finish = chunk.finish_reason
        if finish is not None and splitter.calls:
            finish = "tool_calls"
        if text or deltas or finish is not None or chunk.usage is not None:
            yield TextChunk(text, finish, chunk.usage, deltas)
