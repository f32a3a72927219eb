"""A real `llmops serve` on loopback, driven by the official openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import FAKE_MODELS
from tests.helpers import live_server, write_config


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = write_config(tmp_path_factory.mktemp("srv") / "fake.yaml", FAKE_MODELS)
    with live_server(cfg) as base:
        yield base


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi you"}])
    assert r.choices[0].message.content == "Echo: hi you"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.completion_tokens == 3


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi you"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hi you"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 3


def test_completions_and_stream(client: openai.OpenAI) -> None:
    r = client.completions.create(model="fake-fixed", prompt="x", max_tokens=2)
    assert r.choices[0].text == "one two"
    assert r.choices[0].finish_reason == "length"
    pieces = [c.choices[0].text for c in client.completions.create(model="fake-fixed", prompt="x", stream=True)]
    assert "".join(pieces) == "one two three four five six"


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fake", "fake-fixed", "fake-tiny-context"]
    assert client.models.retrieve("fake").id == "fake"


def test_errors_reach_the_client_typed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert br.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as ctx:
        client.chat.completions.create(model="fake-tiny-context", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=500)
    assert ctx.value.code == "context_length_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "[[fail]]"}])


def test_error_event_mid_stream_raises_in_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "a b c [[fail-mid-stream]]"}], stream=True)
    with stream, pytest.raises(openai.APIError):
        list(stream)


def test_server_keeps_serving_after_bad_input(base_url: str, client: openai.OpenAI) -> None:
    for raw in (b"{", b"[]", b"null", b'{"model": 1, "messages": "x"}', b"\xff\xfe"):
        r = httpx.post(f"{base_url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "ok"}]).choices


def test_ready_waits_for_models(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "slow.yaml", [{"name": "slow", "engine": "fake", "options": {"load_delay_s": 3}}])
    with live_server(cfg, wait_for="/health") as base:
        r = httpx.get(f"{base}/ready")
        assert r.status_code == 503
        assert r.headers["retry-after"]
        assert r.json()["models"]["slow"]["state"] == "loading"
        assert httpx.get(f"{base}/health").status_code == 200
        busy = httpx.post(f"{base}/v1/chat/completions",
                          json={"model": "slow", "messages": [{"role": "user", "content": "x"}]})
        assert busy.status_code == 503
        assert "retry-after" in busy.headers
