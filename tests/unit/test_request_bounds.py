"""Requests that used to cost the server a 500, a stalled model or seconds of its event loop are refused
with a 400 naming the problem, before any work: counts beyond 32 bits, JSON schemas no grammar compiler
can take (too deep, dangling or whole-schema $refs, broken patterns, vanishing multipleOf, integers
beyond 64 bits, bad types), and more chat messages than a model's context can hold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.engines.base import Message, SamplingParams, TextRequest
from llmops.engines.llamacpp import LlamaCppEngine, LlamaCppOptions
from llmops.errors import ContextLengthExceeded
from llmops.settings import load_settings

HUGE = 10**400
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def client() -> Any:
    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(("path", "extra"), [
    ("/v1/chat/completions", {"max_tokens": HUGE}),
    ("/v1/chat/completions", {"max_completion_tokens": HUGE}),
    ("/v1/chat/completions", {"n": HUGE}),
    ("/v1/completions", {"max_tokens": HUGE}),
])
def test_counts_beyond_32_bits_are_refused(client: TestClient, path: str, extra: dict[str, Any]) -> None:
    body = {**CHAT, **extra} if path.endswith("chat/completions") else {"model": "fake", "prompt": "hi", **extra}
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("schema", "said"), [
    (deep(400), "deeper than"),
    ({"$ref": "#/$defs/missing"}, "points to nothing"),
    ({"$ref": "#"}, "must point inside"),
    ({"type": "string", "pattern": "(a|b"}, "not a regular expression"),
    ({"type": "number", "multipleOf": 1e-300}, "multipleOf"),
    ({"type": "integer", "minimum": -(10**300)}, "beyond 64 bits"),
    ({"type": 12}, "'type' must name JSON types"),
    ({"type": "array", "minItems": -1}, "non-negative"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1001)}}, "at most 1000"),
])
def test_schemas_no_grammar_compiler_takes_are_refused(client: TestClient, schema: dict[str, Any], said: str) -> None:
    as_format = {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    as_tool = {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
    for body in (as_format, as_tool):
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, response.text
        assert said in response.json()["error"]["message"]


def test_schema_and_tool_choice_errors_name_the_parameter(client: TestClient) -> None:
    """A schema's problem names where the schema is; a tool_choice that names no tool names tool_choice (it
    was answered as 'the request body must be a JSON object', with no parameter)."""
    bad = {"type": 12}
    tools = [{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b",
                                                                                                "parameters": bad}}]
    cases = [
        ({"tools": tools}, "tools.1.function.parameters"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": bad}}},
         "response_format.json_schema.schema"),
        ({"tools": tools[:1], "tool_choice": {"type": "function", "function": {"name": "zzz"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ]
    for extra, param in cases:
        response = client.post("/v1/chat/completions", json={**CHAT, **extra})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param, error
        assert "JSON object" not in error["message"]


def test_schemas_with_keyword_named_properties_and_unicode_patterns_pass(client: TestClient) -> None:
    """A property called "type" or "pattern" is a property, not a keyword; \\p{L} is the schema's regex
    syntax (ECMA 262), not Python's, and is left to the grammar compiler."""
    from llmops.protocol.json_schema import schema_problem
    schema = {"type": "object", "$defs": {"word": {"type": "string", "pattern": "\\p{L}+"}},
              "properties": {"type": {"$ref": "#/$defs/word"}, "pattern": {"enum": [{"type": 12}, 10**15]},
                             "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5}},
              "required": ["type"]}
    assert schema_problem(schema) is None


def test_more_messages_than_the_context_holds_are_refused_before_templating() -> None:
    engine = LlamaCppEngine("m", LlamaCppOptions(context_length=256))  # not started: no template call possible
    many = tuple(Message("user", "a") for _ in range(200))
    with pytest.raises(ContextLengthExceeded, match="200 messages"):
        asyncio.run(engine._prepare(TextRequest("r", SamplingParams(), messages=many)))
