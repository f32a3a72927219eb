"""A real `llmops serve` answers a value of the wrong JSON type as OpenAI's API does, to the official openai client:
400 `invalid_type` naming the parameter (protocol/wire.py), where pydantic's lax mode took `"n": "2"` as 2."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import FAKE_MODELS
from tests.helpers import live_server, write_config


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    models = [*FAKE_MODELS, {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 8}}]
    cfg = write_config(tmp_path_factory.mktemp("srv") / "fake.yaml", models)
    with live_server(cfg) as base, openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.mark.parametrize(("extra", "param", "message"), [
    ({"n": "2"}, "n", "expected an integer, but got a string instead"),
    ({"stream": 1}, "stream", "expected a boolean, but got an integer instead"),
    ({"temperature": "0.5"}, "temperature", "expected a number, but got a string instead"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}, "messages.0.content.0.text",
     "expected a string, but got an integer instead"),
])
def test_chat_refuses_a_wrong_json_type(client: openai.OpenAI, extra: dict[str, object], param: str,
                                        message: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], extra_body=extra)
    assert refused.value.status_code == 400
    assert (refused.value.param, refused.value.code, refused.value.type) == (param, "invalid_type",
                                                                             "invalid_request_error")
    assert refused.value.body == {"message": f"invalid type for '{param}': {message}", "type": "invalid_request_error",
                                  "param": param, "code": "invalid_type"}


def test_completions_and_embeddings_refuse_one_too(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="fake", prompt="hi", extra_body={"max_tokens": "5"})
    assert (refused.value.param, refused.value.code) == ("max_tokens", "invalid_type")
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="emb", input="hi", extra_body={"dimensions": 8.0})
    assert (refused.value.param, refused.value.code) == ("dimensions", "invalid_type")


def test_the_clients_typed_requests_are_answered(client: openai.OpenAI) -> None:
    """What the client sends for its typed parameters passes the strict types: an integer for a number, a seed,
    a list of stops, a stream with usage."""
    done = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], temperature=1,
                                          top_p=1, presence_penalty=0, n=2, seed=7, max_completion_tokens=8,
                                          stop=["\n\n"], user="u")
    assert len(done.choices) == 2
    chunks = list(client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    assert client.completions.create(model="fake", prompt="hi", max_tokens=4, best_of=1, n=1).choices
    assert len(client.embeddings.create(model="emb", input=["a", "b"], dimensions=8).data) == 2
