"""Chat's output controls between the wire and the engine: `response_format` (structured output), `tools`,
`tool_choice`, `parallel_tool_calls`, and tool turns in the history. Parsing lives in protocol/chat.py; this
module translates them into the engine's dataclasses, refuses them for an engine that cannot honour them
(400 naming the field), and keys the response cache on them. Formatting tool calls into answers is the
edge's (api/chat.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from llmops.engines.base import (
    Message,
    StructuredOutput,
    TextRequest,
    ToolCall,
    ToolSpec,
    capabilities,
)
from llmops.errors import ContentFiltered, UnsupportedParameter
from llmops.protocol.chat import ChatCompletionRequest, ChatMessage, NamedToolChoice


def messages(body: ChatCompletionRequest) -> list[Message]:
    return [_message(m) for m in body.messages]


def _message(m: ChatMessage) -> Message:
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or [])
    return Message(m.role, m.text(), tool_calls=calls, tool_call_id=m.tool_call_id)


def tool_texts(history: Sequence[Message], body: Any) -> list[str]:
    """What the model reads of tools beside the messages' contents: the name and arguments of each of the
    history's tool calls, then every string of each tool definition (its name, its description, and its
    parameters' schema's keys and strings: property names, descriptions, enums, defaults), in that order.
    The input rules read them (and may redact them: `with_tool_texts` takes them back), and the input
    limits count them. (A property named `ignore_all_previous_instructions` is read by the model as much as
    a description is.)"""
    out = [text for m in history for c in m.tool_calls for text in (c.name, c.arguments)]
    for t in getattr(body, "tools", None) or ():
        out.append(t.function.name)
        if t.function.description is not None:
            out.append(t.function.description)
        _strings(t.function.parameters, out)
    return out


def with_tool_texts(history: tuple[Message, ...], body: Any,
                    texts: Sequence[str]) -> tuple[tuple[Message, ...], Any]:
    """The history and body with `tool_texts`' strings replaced by `texts` (as the rules left them)."""
    it = iter(texts)
    history = tuple(replace(m, tool_calls=tuple(replace(c, name=next(it), arguments=next(it)) for c in m.tool_calls))
                    if m.tool_calls else m for m in history)
    defs = getattr(body, "tools", None)
    if defs:
        defs = [t.model_copy(update={"function": t.function.model_copy(update={
            "name": _unchanged(t.function.name, next(it)),
            "description": None if t.function.description is None else next(it),
            "parameters": _replaced(t.function.parameters, it)})}) for t in defs]
        body = body.model_copy(update={"tools": defs})
    return history, body


def _strings(value: Any, out: list[str]) -> None:
    """The strings in a JSON value, its objects' keys (each before its value) and its numbers (as JSON writes
    them: the model reads them too) included, depth first."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out.append(json.dumps(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)


def _unchanged(name: str, checked: str) -> str:
    """A tool's name, or a schema's key or number, as the rules left it: it must be as it was (a redacted name
    no longer matches the tool_choice naming it, nor the pattern of names; two redacted keys become one; a
    number would become a string)."""
    if checked != name:
        raise ContentFiltered("a rule would redact part of a tool's name, or of a key or a number of its "
                              "parameters' schema; a tool cannot be sent with them changed", param="tools")
    return name


def _replaced(value: Any, texts: Iterator[str]) -> Any:
    """`value` with its strings, in `_strings`' order, taken from `texts` (its keys and numbers unchanged)."""
    if isinstance(value, str):
        return next(texts)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _unchanged(json.dumps(value), next(texts))
        return value
    if isinstance(value, dict):
        return {_unchanged(k, next(texts)): _replaced(v, texts) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, texts) for v in value]
    return value


def structured(body: Any) -> StructuredOutput | None:
    fmt = getattr(body, "response_format", None)
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput("json_object")
    return StructuredOutput("json_schema", fmt.json_schema.schema_ if fmt.json_schema else None)


def tools(body: Any) -> ToolSpec | None:
    defs = getattr(body, "tools", None)
    if not defs:
        return None
    choice = body.tool_choice
    name = choice.function.name if isinstance(choice, NamedToolChoice) else (choice or "auto")
    functions = tuple(t.model_dump(exclude_none=True) for t in defs)
    return ToolSpec(functions, name, body.parallel_tool_calls is not False)


def engine_fields(body: Any) -> dict[str, Any]:
    """The TextRequest fields these controls set (none for completions requests)."""
    spec = tools(body)
    if spec is not None and spec.choice == "none":
        spec = None  # the model may not call any: the tools are not shown to it either
    return {"structured": structured(body), "tools": spec}


def check_capabilities(engine: object, requests: Sequence[TextRequest], *, rewritten: bool = False) -> None:
    """400 naming the first control the engine cannot honour. `rewritten`: output guardrails may change the
    answer's text, so its tokens' logprobs would show what they hold back or redact."""
    caps = capabilities(engine)
    for req in requests[:1]:
        if req.sampling.logprobs is not None:
            _check_logprobs(req, caps.logprobs, rewritten)
        if req.structured is not None and not caps.structured_output:
            raise UnsupportedParameter("this model's engine cannot constrain output to JSON; "
                                       "'response_format' is not supported here", param="response_format")
        if req.tools is not None and not caps.tools:
            raise UnsupportedParameter("this model's engine does not call tools; 'tools' is not supported here",
                                       param="tools")
        history = req.messages or ()
        if not caps.tools and any(m.tool_calls or m.role == "tool" for m in history):
            raise UnsupportedParameter("this model's engine does not call tools; tool turns in 'messages' "
                                       "are not supported here", param="messages")


def _check_logprobs(req: TextRequest, capable: bool, rewritten: bool) -> None:
    if not capable:
        raise UnsupportedParameter("this model's engine does not report log probabilities; 'logprobs' is not "
                                   "supported here", param="logprobs")
    if req.tools is not None:
        raise UnsupportedParameter("'logprobs' cannot be combined with 'tools' here (a tool call's tokens "
                                   "have no place in either format)", param="logprobs")
    if rewritten:
        raise UnsupportedParameter("'logprobs' is not available where output guardrails are on: the tokens' "
                                   "log probabilities would show the text they hold back or redact",
                                   param="logprobs")


def cache_part(body: Any) -> dict[str, Any] | None:
    """What the controls add to the response-cache key (None when the request sets none)."""
    fmt = getattr(body, "response_format", None)
    defs = getattr(body, "tools", None)
    turns = [[m.tool_call_id, [c.model_dump() for c in m.tool_calls or []]] for m in getattr(body, "messages", [])]
    if fmt is None and not defs and not any(a or b for a, b in turns):
        return None
    choice = body.tool_choice
    return {"response_format": fmt.model_dump(by_alias=True) if fmt else None,
            "tools": [t.model_dump() for t in defs or []],
            "tool_choice": choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
            "parallel_tool_calls": body.parallel_tool_calls, "tool_turns": turns}
