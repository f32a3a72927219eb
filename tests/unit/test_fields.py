"""Every field of the openai SDK's request types has a documented fate (protocol/fields.py), the README's
table is that table, refused fields get 400 naming them, null is accepted for unset options, and unknown
/v1/ routes are named as unsupported."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types import completion_create_params, embedding_create_params, image_generate_params
from openai.types.chat import completion_create_params as chat_create_params

from llmops.protocol.fields import CHAT, COMPLETIONS, EMBEDDINGS, IMAGES, markdown_table
from tests.unit.test_api import assert_error

README = Path(__file__).resolve().parents[2] / "README.md"


def sdk_fields(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


@pytest.mark.parametrize(("params", "table"), [
    (chat_create_params.CompletionCreateParamsStreaming, CHAT),
    (completion_create_params.CompletionCreateParamsStreaming, COMPLETIONS),
    (embedding_create_params.EmbeddingCreateParams, EMBEDDINGS),
    (image_generate_params.ImageGenerateParamsStreaming, IMAGES),
])
def test_every_sdk_field_has_a_fate(params: Any, table: dict[str, Any]) -> None:
    missing = sdk_fields(params) - set(table)
    assert not missing, f"fields of {params.__name__} with no documented fate: {sorted(missing)}"


def test_readme_table_is_the_code_table() -> None:
    text = README.read_text()
    found = re.search(r"<!-- fields:start -->\n(.*?)\n<!-- fields:end -->", text, re.S)
    assert found is not None, "README lacks the fields table markers"
    assert found.group(1).strip() == markdown_table()


REFUSED_VALUES: dict[str, Any] = {"logit_bias": {"50256": -100},
                                  "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
                                  "prediction": {"type": "content", "content": "x"}, "functions": [{"name": "f"}],
                                  "function_call": "auto", "metadata": {"a": "b"}, "store": True,
                                  "reasoning_effort": "low", "verbosity": "low", "web_search_options": {},
                                  "best_of": 2, "echo": True, "suffix": "x", "moderation": "auto"}


@pytest.mark.parametrize("name", sorted(n for n, f in CHAT.items() if not f.honoured))
def test_refused_chat_fields_name_themselves(client: TestClient, name: str) -> None:
    value = REFUSED_VALUES.get(name, "x")
    if value == {}:
        value = {"search_context_size": "low"}
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], name: value}
    assert_error(client.post("/v1/chat/completions", json=body), 400, param=name, code="unsupported_parameter")


@pytest.mark.parametrize("name", sorted(n for n, f in COMPLETIONS.items() if not f.honoured))
def test_refused_completions_fields_name_themselves(client: TestClient, name: str) -> None:
    body = {"model": "fake", "prompt": "hi", name: REFUSED_VALUES.get(name, "x")}
    assert_error(client.post("/v1/completions", json=body), 400, param=name, code="unsupported_parameter")


@pytest.mark.parametrize("extra", ["top_k", "ignore_eos", "min_tokens", "repetition_penalty"])
def test_vllm_extras_are_refused_not_ignored(client: TestClient, extra: str) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], extra: 1}
    assert_error(client.post("/v1/chat/completions", json=body), 400, param=extra)


def test_null_means_unset(client: TestClient) -> None:
    nulls = {name: None for name in CHAT if name not in ("model", "messages")}
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **nulls}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "Echo: hi"
    nulls = {name: None for name in COMPLETIONS if name not in ("model", "prompt")}
    assert client.post("/v1/completions", json={"model": "fake", "prompt": "hi", **nulls}).status_code == 200


def test_unknown_v1_route_is_named_unsupported(client: TestClient) -> None:
    err = assert_error(client.post("/v1/responses", json={}), 404, code="unsupported_route")
    assert "/v1/responses" in err["message"]
    assert_error(client.get("/v1/audio/voices"), 404, code="unsupported_route")
    assert client.get("/v1/chat/completions").status_code == 405  # a known route keeps its 405


def test_embeddings_on_a_chat_model_is_404(client: TestClient) -> None:
    assert_error(client.post("/v1/embeddings", json={"model": "fake", "input": "x"}), 404, param="model")
    assert_error(client.post("/v1/embeddings", json={"model": "fake", "input": []}), 400)
