"""Request bodies take JSON's types as OpenAI's API does (protocol/wire.py): a value of the wrong JSON type is a
400 `invalid_type` naming the parameter, never coerced. pydantic's lax mode read `"max_tokens": "5"` as 5,
`"stream": "true"` and `"stream": 1` as true, `"temperature": "0.5"` as 0.5, `"n": 2.0` as 2 and `"seed": true`
as 1; OpenAI answers "Invalid type for 'max_tokens': expected an integer, but got a string instead."

What stays free stays free: an integer for a number field, strings for `Literal` fields (FastAPI validates the
parsed body in python mode, where a strict `Enum` field would refuse its own values: none is used), the JSON
schemas of `response_format` and of a tool's `parameters`, and `extra` fields (still refused by name when set,
protocol/fields.py). A `Literal` (every one a set of strings) given a value that is not a string is of the
wrong JSON type too; a string it does not list stays an invalid value. And what the official openai client
sends for its typed parameters is all accepted."""

from __future__ import annotations

import enum
import importlib
import json
import pkgutil
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from llmops import protocol
from llmops.api import admin, chat, classifications, classifying, completions, embeddings, images, inference_v2
from llmops.app import create_app
from llmops.errors import InvalidRequest
from llmops.protocol.chat import ChatCompletionRequest
from llmops.protocol.completions import CompletionRequest
from llmops.protocol.embeddings import EmbeddingRequest
from llmops.protocol.images import GenerateRequest, ImageGenerationRequest
from llmops.protocol.inference_v2 import InferenceRequest
from llmops.settings import load_settings

ADMIN_KEY = "admin-secret-for-wire-types"
CHAT, COMPLETIONS, EMBED = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
IMAGES, JOBS, GENERATE, CLASSIFY, KEYS = "/v1/images/generations", "/v1/images/jobs", "/generate", \
    "/v1/classifications", "/admin/keys"
NAMES = {CHAT: "chat", COMPLETIONS: "completions", EMBED: "embeddings", IMAGES: "images", JOBS: "jobs",
         GENERATE: "generate", CLASSIFY: "classify", KEYS: "keys"}
USER = [{"role": "user", "content": "hi"}]
BASES: dict[str, dict[str, Any]] = {
    CHAT: {"model": "fake", "messages": USER}, COMPLETIONS: {"model": "fake", "prompt": "hi"},
    EMBED: {"model": "emb", "input": "hi"}, IMAGES: {"prompt": "a cat"}, JOBS: {"prompt": "a cat"},
    GENERATE: {"prompt": "a cat"}, CLASSIFY: {"images": ["AA=="]}, KEYS: {"name": "k"},
}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, TestClient]]:
    """One app for the inference routes, one for the admin API (a key created there would make the first keyed)."""
    models = [{"name": "fake", "engine": "fake"},
              {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16}},
              {"name": "img", "kind": "image", "engine": "fake-image"}]
    settings = load_settings(None, models=models, state={"backend": "memory"}, auth={"admin_key": ADMIN_KEY})
    with TestClient(create_app(settings), raise_server_exceptions=False) as api, \
            TestClient(create_app(settings), raise_server_exceptions=False) as admin_api:
        yield {"api": api, "admin": admin_api}


def post(clients: dict[str, TestClient], path: str, extra: dict[str, Any]) -> Any:
    if path == KEYS:
        return clients["admin"].post(path, json={**BASES[path], **extra},
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return clients["api"].post(path, json={**BASES[path], **extra})


def t(expected: str, got: str) -> str:
    return f"expected {expected}, but got {got} instead"


INT, NUM, STR, BOOL, ARR, OBJ = "an integer", "a number", "a string", "a boolean", "an array", "an object"

# (path, fields sent, the param named, the message after "invalid type for '<param>': ")
WRONG_TYPES = [
    # chat: the sampling fields, each JSON type that lax mode coerced
    (CHAT, {"max_tokens": "5"}, "max_tokens", t(INT, "a string")),
    (CHAT, {"max_completion_tokens": 5.0}, "max_completion_tokens", t(INT, "a decimal")),
    (CHAT, {"n": 2.0}, "n", t(INT, "a decimal")),
    (CHAT, {"n": True}, "n", t(INT, "a boolean")),
    (CHAT, {"seed": True}, "seed", t(INT, "a boolean")),
    (CHAT, {"seed": "7"}, "seed", t(INT, "a string")),
    (CHAT, {"stream": "true"}, "stream", t(BOOL, "a string")),
    (CHAT, {"stream": 1}, "stream", t(BOOL, "an integer")),
    (CHAT, {"temperature": "0.5"}, "temperature", t(NUM, "a string")),
    (CHAT, {"temperature": False}, "temperature", t(NUM, "a boolean")),
    (CHAT, {"top_p": "1"}, "top_p", t(NUM, "a string")),
    (CHAT, {"presence_penalty": "0"}, "presence_penalty", t(NUM, "a string")),
    (CHAT, {"top_logprobs": "0"}, "top_logprobs", t(INT, "a string")),
    (CHAT, {"parallel_tool_calls": "false"}, "parallel_tool_calls", t(BOOL, "a string")),
    (CHAT, {"user": 42}, "user", t(STR, "an integer")),
    (CHAT, {"model": 5}, "model", t(STR, "an integer")),
    (CHAT, {"model": None}, "model", t(STR, "null")),
    (CHAT, {"stop": ["a", 5]}, "stop.1", t(STR, "an integer")),
    (CHAT, {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", t(BOOL, "a string")),
    (CHAT, {"stream_options": True}, "stream_options", t(OBJ, "a boolean")),
    # chat: nested in messages, content parts, tools, response_format, prompt
    (CHAT, {"messages": "hi"}, "messages", t(ARR, "a string")),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     t("a string or a list of text parts", "an integer")),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 1}]}]},
     "messages.0.content.1.text", t(STR, "an integer")),
    (CHAT, {"messages": [{"role": "user", "content": "hi", "name": 7}]}, "messages.0.name", t(STR, "an integer")),
    (CHAT, {"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
     "messages.1.tool_calls.0.function.arguments", t(STR, "an object")),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "strict": "true"}}]},
     "tools.0.function.strict", t(BOOL, "a string")),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
     "tools.0.function.description", t(STR, "an integer")),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools.0.function.parameters", t(OBJ, "a string")),
    (CHAT, {"response_format": "json_object"}, "response_format", t(OBJ, "a string")),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": 1}}},
     "response_format.json_schema.strict", t(BOOL, "an integer")),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema.schema", t(OBJ, "an array")),
    (CHAT, {"prompt": {"id": 5}}, "prompt.id", t(STR, "an integer")),
    (CHAT, {"prompt": {"id": "p", "variables": {"who": [1]}}}, "prompt.variables.who",
     t("a string, a number or a boolean", "an array")),
    # a Literal (of strings) given another JSON type: its values named, inside unions too
    (CHAT, {"messages": [{"role": 5, "content": "hi"}]}, "messages.0.role",
     t("'system', 'developer', 'user', 'assistant' or 'tool'", "an integer")),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": 1, "text": "a"}]}]}, "messages.0.content.0.type",
     t("'text'", "an integer")),
    (CHAT, {"response_format": {"type": None}}, "response_format.type",
     t("'text', 'json_object' or 'json_schema'", "null")),
    (CHAT, {"tool_choice": 5}, "tool_choice",
     t("'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}", "an integer")),
    (CHAT, {"tools": [TOOL], "tool_choice": {"type": True, "function": {"name": "f"}}}, "tool_choice.type",
     t("'function'", "a boolean")),
    (CHAT, {"tools": [{"type": ["function"], "function": {"name": "f"}}]}, "tools.0.type", t("'function'", "an array")),
    # completions
    (COMPLETIONS, {"max_tokens": "16"}, "max_tokens", t(INT, "a string")),
    (COMPLETIONS, {"n": "2"}, "n", t(INT, "a string")),
    (COMPLETIONS, {"best_of": 1.0}, "best_of", t(INT, "a decimal")),
    (COMPLETIONS, {"frequency_penalty": "0.1"}, "frequency_penalty", t(NUM, "a string")),
    (COMPLETIONS, {"stream": "false"}, "stream", t(BOOL, "a string")),
    (COMPLETIONS, {"prompt": ["hi", True]}, "prompt.1", t(STR, "a boolean")),
    # embeddings
    (EMBED, {"dimensions": "16"}, "dimensions", t(INT, "a string")),
    (EMBED, {"dimensions": 16.0}, "dimensions", t(INT, "a decimal")),
    (EMBED, {"user": 1}, "user", t(STR, "an integer")),
    (EMBED, {"model": ["emb"]}, "model", t(STR, "an array")),
    (EMBED, {"encoding_format": 1}, "encoding_format", t("'float' or 'base64'", "an integer")),
    # images: the OpenAI route, the jobs API and the guide's /generate
    (IMAGES, {"n": "1"}, "n", t(INT, "a string")),
    (IMAGES, {"num_inference_steps": 4.0}, "num_inference_steps", t(INT, "a decimal")),
    (IMAGES, {"guidance_scale": "7.5"}, "guidance_scale", t(NUM, "a string")),
    (IMAGES, {"seed": "1"}, "seed", t(INT, "a string")),
    (IMAGES, {"size": 512}, "size", t(STR, "an integer")),
    (IMAGES, {"response_format": False}, "response_format", t("'b64_json' or 'url'", "a boolean")),
    (JOBS, {"n": True}, "n", t(INT, "a boolean")),
    (GENERATE, {"width": "512"}, "width", t(INT, "a string")),
    (GENERATE, {"seed": 1.5}, "seed", t(INT, "a decimal")),
    # classifications (parsed by api/classifying.parse_json, JSON mode)
    (CLASSIFY, {"top_k": "1"}, "top_k", t(INT, "a string")),
    (CLASSIFY, {"top_k": 1.0}, "top_k", t(INT, "a decimal")),
    (CLASSIFY, {"images": ["AA==", 5]}, "images.1", t(STR, "an integer")),
    # the admin API's key bodies (FastAPI's own validation, then app.py's handler)
    (KEYS, {"rpm": "10"}, "rpm", t(INT, "a string")),
    (KEYS, {"max_concurrent": 2.0}, "max_concurrent", t(INT, "a decimal")),
    (KEYS, {"budget_usd": "1.5"}, "budget_usd", t(NUM, "a string")),
    (KEYS, {"name": 5}, "name", t(STR, "an integer")),
    (KEYS, {"models": "fake"}, "models", t(ARR, "a string")),
    (KEYS, {"priority": 1}, "priority", t("'interactive' or 'batch'", "an integer")),
]


@pytest.mark.parametrize(("path", "extra", "param", "message"), WRONG_TYPES,
                         ids=[f"{NAMES[p]}-{param}" for p, _, param, _ in WRONG_TYPES])
def test_a_wrong_json_type_is_named_not_coerced(clients: dict[str, TestClient], path: str, extra: dict[str, Any],
                                                param: str, message: str) -> None:
    response = post(clients, path, extra)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"message": f"invalid type for '{param}': {message}",
                                        "type": "invalid_request_error", "param": param, "code": "invalid_type"}


def test_inference_v2_bodies_are_strict_too() -> None:
    """The Open Inference Protocol's request (parsed by the same parse_json as /v1/classifications): a shape's
    dimensions are integers, as KServe's clients send them; the tensor's data and parameters stay free JSON."""
    tensor = {"name": "image", "datatype": "BYTES", "data": ["AA==", 1, 2.5], "parameters": {"x": "1"}}
    body = InferenceRequest.model_validate({"inputs": [{**tensor, "shape": [1]}], "parameters": {"top_k": "2"}})
    assert (body.inputs[0].data, body.parameters) == (["AA==", 1, 2.5], {"top_k": "2"})
    for shape, got in (["1"], "a string"), ([1.0], "a decimal"), ([True], "a boolean"):
        raw = json.dumps({"inputs": [{**tensor, "shape": shape}]}).encode()
        with pytest.raises(InvalidRequest) as refused:
            classifying.parse_json(raw, InferenceRequest)
        assert (refused.value.param, refused.value.code) == ("inputs.0.shape.0", "invalid_type")
        assert refused.value.message == f"invalid type for 'inputs.0.shape.0': {t(INT, got)}"
    raw = json.dumps({"inputs": [{**tensor, "shape": [1], "datatype": 5}]}).encode()
    with pytest.raises(InvalidRequest) as refused:
        classifying.parse_json(raw, InferenceRequest)
    assert (refused.value.param, refused.value.code) == ("inputs.0.datatype", "invalid_type")
    assert refused.value.message.endswith("'FP64' or 'BYTES', but got an integer instead")


@pytest.mark.parametrize(("path", "extra", "param"), [
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    (CHAT, {"tool_choice": "sometimes"}, "tool_choice"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "txt", "text": "a"}]}]}, "messages.0.content.0"),
    (EMBED, {"encoding_format": "int8"}, "encoding_format"),
    (KEYS, {"budget_period": "year"}, "budget_period"),
    (CHAT, {"temperature": 3}, "temperature"),
    (CHAT, {"n": 0}, "n"),
])
def test_a_value_of_the_right_json_type_is_an_invalid_value(clients: dict[str, TestClient], path: str,
                                                            extra: dict[str, Any], param: str) -> None:
    """A string a Literal does not list, a number out of range: invalid values (no `invalid_type` code)."""
    response = post(clients, path, extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, None)
    assert error["message"].startswith(f"invalid value for '{param}': ")


# what stays accepted: validated as FastAPI and the edge validate a body (python mode, the parsed JSON) -----------

ACCEPTED: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (ChatCompletionRequest, {**BASES[CHAT], "temperature": 1, "top_p": 1, "presence_penalty": -2,
                             "frequency_penalty": 0, "stream": True, "n": 2, "seed": -7, "max_tokens": 5, "stop": ["x"],
                             "stream_options": {"include_usage": True}, "tool_choice": "auto",
                             "parallel_tool_calls": False, "service_tier": "flex", "top_logprobs": 0}),
    (ChatCompletionRequest, {"model": "fake", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "developer", "content": [{"type": "text", "text": "x"}]},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]}),
    # a tool's parameters and a response_format's schema are JSON schemas: any JSON inside, strings for numbers too
    (ChatCompletionRequest, {**BASES[CHAT], "tools": [{"type": "function", "function": {
        "name": "f", "strict": True, "parameters": {"type": "object", "properties": {
            "n": {"type": "integer", "default": "5", "enum": [1, "1", True, None]}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": False, "schema": {
            "type": "object", "properties": {"a": {"const": "1", "examples": [1.5, "x"]}}}}}}),
    (ChatCompletionRequest, {**BASES[CHAT],
                             "prompt": {"id": "p", "variables": {"a": "x", "b": 1, "c": 1.5, "d": True}}}),
    (ChatCompletionRequest, {**BASES[CHAT], "temperature": None, "n": None, "stream": None, "max_tokens": None}),
    (CompletionRequest, {**BASES[COMPLETIONS], "temperature": 0, "best_of": 1, "n": 1, "stream": False}),
    (EmbeddingRequest, {**BASES[EMBED], "input": [[1, 2], [3]], "encoding_format": "base64", "dimensions": 16}),
    (ImageGenerationRequest, {**BASES[IMAGES], "guidance_scale": 7, "num_inference_steps": 4, "seed": 0,
                              "size": "64x64", "response_format": "url", "n": 1}),
    (GenerateRequest, {**BASES[GENERATE], "guidance_scale": 2, "width": 64, "height": 64}),
    (admin.KeyCreate, {"name": "k", "priority": "batch", "budget_period": "week", "budget_usd": 5, "rpm": 1}),
]


@pytest.mark.parametrize(("model", "body"), ACCEPTED, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(ACCEPTED)])
def test_every_json_form_is_still_accepted(model: type[BaseModel], body: dict[str, Any]) -> None:
    parsed = model.model_validate(body)
    for name in ("temperature", "guidance_scale", "budget_usd"):  # an integer for a number: a float after
        if isinstance(getattr(parsed, name, None), int | float):
            assert type(getattr(parsed, name)) is float


def test_extra_fields_are_kept_as_sent_and_refused_by_name() -> None:
    """`extra` is not validated: a field the server does not take is refused by name, whatever its type."""
    chat = ChatCompletionRequest.model_validate({**BASES[CHAT], "top_k": "5", "logit_bias": {"1": "x"}})
    assert chat.model_extra == {"top_k": "5", "logit_bias": {"1": "x"}}
    assert chat.unsupported_field() == "top_k"


def test_accepted_bodies_are_answered(clients: dict[str, TestClient]) -> None:
    """Over HTTP, through the edge's validation and FastAPI's: integers for numbers and strings for literals."""
    assert post(clients, EMBED, {"encoding_format": "float", "dimensions": 16}).status_code == 200
    assert post(clients, IMAGES, {"model": "img", "guidance_scale": 2, "response_format": "b64_json"}).status_code \
        == 200
    created = post(clients, KEYS, {"priority": "batch", "budget_period": "day", "budget_usd": 3})
    assert created.status_code == 201, created.text
    assert (created.json()["priority"], created.json()["budget_usd"]) == ("batch", 3.0)


# every request model is strict, and none has an Enum field -----------------------------------------------------

def _models(tp: Any, seen: set[type[BaseModel]]) -> Iterator[tuple[type[BaseModel], str, Any]]:
    """(model, field, annotation) for every field of every model under `tp`."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return
        seen.add(tp)
        for name, field in tp.model_fields.items():
            yield tp, name, field.annotation
            yield from _models(field.annotation, seen)
    else:
        for arg in typing.get_args(tp):
            yield from _models(arg, seen)


def _enums(tp: Any) -> bool:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return True
    return any(_enums(arg) for arg in typing.get_args(tp))


def _literals(tp: Any) -> list[Any]:
    """Every value of every Literal under `tp`."""
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    return [v for arg in typing.get_args(tp) for v in _literals(arg)]


def request_bodies() -> set[type[BaseModel]]:
    routers = (chat.router, completions.router, embeddings.router, images.router, classifications.router,
               inference_v2.router, admin.router)
    bodies: set[type[BaseModel]] = {p.field_info.annotation for router in routers for route in router.routes
                                    if isinstance(route, APIRoute) for p in route.dependant.body_params}
    for info in pkgutil.iter_modules(protocol.__path__):
        module = importlib.import_module(f"{protocol.__name__}.{info.name}")
        bodies |= {v for k, v in vars(module).items() if k.endswith("Request") and isinstance(v, type)
                   and issubclass(v, BaseModel)}
    return bodies


def test_every_request_model_is_strict_about_json_types() -> None:
    bodies = request_bodies()
    names = {b.__name__ for b in bodies}
    assert {"ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "ImageGenerationRequest",
            "GenerateRequest", "ClassificationRequest", "InferenceRequest", "KeyCreate"} <= names
    seen: set[type[BaseModel]] = set()
    fields = [f for body in bodies for f in _models(body, seen)]
    lax = sorted({m.__name__ for m in seen if m.model_config.get("strict") is not True})
    assert lax == []
    assert {"ChatMessage", "TextPart", "ToolDef", "FunctionDef", "ResponseFormat", "JsonSchemaFormat", "PromptRef",
            "StreamOptions", "NamedToolChoice", "RequestInput"} <= {m.__name__ for m in seen}
    enums = [f"{m.__name__}.{name}" for m, name, tp in fields if _enums(tp)]
    assert enums == [], "a strict Enum field refuses its own values from parsed JSON: use a Literal"
    # wire.wrong_type takes a Literal given anything but a string for a value of the wrong JSON type
    not_strings = [f"{m.__name__}.{name}" for m, name, tp in fields if any(not isinstance(v, str)
                                                                           for v in _literals(tp))]
    assert not_strings == [], "a wire Literal takes strings only"


def test_wrong_type_says_json_types_as_openai_does() -> None:
    from llmops.protocol.wire import json_type, wrong_type  # here: the module is new, the rest runs on old code

    assert [json_type(v) for v in (None, True, 0, 0.5, "", [], {})] == \
        ["null", "a boolean", "an integer", "a decimal", "a string", "an array", "an object"]
    assert wrong_type({"type": "int_type", "input": "5"}) == "expected an integer, but got a string instead"
    assert wrong_type({"type": "greater_than_equal", "input": 0}) is None
    literal = {"type": "literal_error", "ctx": {"expected": "'a' or 'b'"}}
    assert wrong_type({**literal, "input": 1}) == "expected 'a' or 'b', but got an integer instead"
    assert wrong_type({**literal, "input": "c"}) is None  # a string: an invalid value, not a wrong type


# what the official openai client sends for its typed parameters is accepted as it is sent ---------------------

def _sent_by_openai(call: Any) -> tuple[str, dict[str, Any]]:
    """The path and JSON body the openai client sends for `call(client)` (answered by a stub, not a server)."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, text="data: [DONE]\n\n", headers={"content-type": "text/event-stream"})
        data = [{"object": "embedding", "index": 0, "embedding": "AAAAAA=="}] \
            if request.url.path.endswith("/embeddings") else []  # the client decodes base64 embeddings itself
        return httpx.Response(200, json={"id": "x", "object": "list", "created": 0, "model": "m", "choices": [],
                                         "data": data})

    with openai.OpenAI(base_url="http://stub/v1", api_key="k", max_retries=0,
                       http_client=httpx.Client(transport=httpx.MockTransport(answer))) as client:
        result = call(client)
        if isinstance(result, openai.Stream):
            list(result)
    assert len(sent) == 1
    return sent[0].url.path, json.loads(sent[0].content)


class Reply(BaseModel):
    answer: str
    score: float


OPENAI_CALLS = {
    "chat": lambda c: c.chat.completions.create(
        model="fake", messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "x"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "reply", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}],
        temperature=0.7, top_p=1, n=1, seed=7, max_tokens=5, max_completion_tokens=5, stop=["x"],
        presence_penalty=0, frequency_penalty=0.5, user="u", logprobs=True, top_logprobs=2, service_tier="flex",
        tools=[openai.pydantic_function_tool(Reply)], tool_choice={"type": "function", "function": {"name": "Reply"}},
        parallel_tool_calls=False, response_format={"type": "json_schema", "json_schema": {
            "name": "reply", "strict": True, "schema": Reply.model_json_schema()}}),
    "chat-stream": lambda c: c.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, temperature=1, response_format={"type": "json_object"}),
    "completions": lambda c: c.completions.create(
        model="fake", prompt="hi", max_tokens=5, temperature=1, top_p=0.9, n=2, best_of=2, logprobs=2, seed=-1,
        stop="x", presence_penalty=0.1, frequency_penalty=0, user="u"),
    "embeddings": lambda c: c.embeddings.create(model="emb", input=["a", "b"], dimensions=8, encoding_format="float",
                                                user="u"),
    "embeddings-ids": lambda c: c.embeddings.create(model="emb", input=[[1, 2], [3]]),  # base64, the default
    # style is refused (protocol/fields.py's images table: it had been ignored without a word); quality
    # "standard" is what is served
    "images": lambda c: c.images.generate(model="img", prompt="a cat", n=1, size="512x512", quality="standard",
                                          response_format="b64_json", user="u"),
}
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest, "/v1/images/generations": ImageGenerationRequest}


@pytest.mark.parametrize("name", OPENAI_CALLS)
def test_the_openai_clients_requests_are_accepted(name: str) -> None:
    path, body = _sent_by_openai(OPENAI_CALLS[name])
    parsed = REQUEST_MODELS[path].model_validate(body)  # as the edge validates the parsed body
    refused = getattr(parsed, "unsupported_field", lambda: None)()
    assert refused is None


@pytest.mark.parametrize(("value", "code"), [(5, "invalid_type"), (True, "invalid_type"), ("bogus", None)])
def test_service_tier_is_one_of_openais_tiers(client: TestClient, value: Any, code: str | None) -> None:
    """It was read from the extra fields, where 5, true or "bogus" were ignored without a word."""
    r = client.post(CHAT, json={"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                                "service_tier": value})
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("service_tier", code)


@pytest.mark.parametrize("value", ["auto", "default", "flex", "scale", "priority", None])
def test_every_openai_service_tier_is_accepted(client: TestClient, value: str | None) -> None:
    r = client.post(CHAT, json={"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                                "service_tier": value})
    assert r.status_code == 200, r.text
