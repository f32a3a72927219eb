"""The API contract on the in-process app with the fake engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

CHAT = "/v1/chat/completions"


def chat(client: TestClient, **body: Any) -> Any:
    body.setdefault("model", "fake")
    body.setdefault("messages", [{"role": "user", "content": "hello there"}])
    return client.post(CHAT, json=body)


def assert_error(resp: Any, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return dict(err)


def sse_events(text: str) -> list[Any]:
    lines = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["models"]["fake"]["state"] == "ready"


def test_not_ready_while_the_server_finishes_start_up(client: TestClient) -> None:
    lifecycle = client.app.state.services.lifecycle  # type: ignore[attr-defined]
    lifecycle.warming = True  # server.py: the models loaded, the start-up heap not frozen yet
    try:
        waiting = client.get("/ready")
        assert waiting.status_code == 503
        assert waiting.json()["status"] == "not_ready"
        assert waiting.json()["models"]["fake"]["state"] == "ready"
    finally:
        lifecycle.warming = False
    assert client.get("/ready").status_code == 200


def test_chat_answer_and_usage(client: TestClient) -> None:
    body = chat(client).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    u = body["usage"]
    assert u["completion_tokens"] == 3
    assert u["total_tokens"] == u["prompt_tokens"] + 3


def test_max_tokens_gives_length(client: TestClient) -> None:
    body = chat(client, model="fake-fixed", max_tokens=2).json()
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"
    assert chat(client, model="fake-fixed", max_completion_tokens=3).json()["usage"]["completion_tokens"] == 3


def test_stop_sequence(client: TestClient) -> None:
    body = chat(client, model="fake-fixed", stop=["four"]).json()
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_n_choices(client: TestClient) -> None:
    body = chat(client, model="fake-fixed", n=3).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 18
    assert_error(chat(client, model="fake-fixed", n=4), 400, param="n")


def test_stream_with_usage(client: TestClient) -> None:
    resp = chat(client, stream=True, stream_options={"include_usage": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Echo: hello there"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 3


def test_completions_json_and_stream(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"model": "fake", "prompt": "a b"}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "echo: a b"
    resp = client.post("/v1/completions", json={"model": "fake", "prompt": "a b", "stream": True})
    events = sse_events(resp.text)
    assert "".join(e["choices"][0]["text"] for e in events) == "echo: a b"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_models(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["fake", "fake-fixed", "fake-tiny-context"]
    assert client.get("/v1/models/fake").json()["id"] == "fake"
    assert_error(client.get("/v1/models/nope"), 404, code="model_not_found")


def test_unknown_model(client: TestClient) -> None:
    assert_error(chat(client, model="gpt-9"), 404, param="model", code="model_not_found")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),  # the fake engine calls none
        ({"response_format": {"type": "json_object"}}, "response_format"),  # nor constrains output
        ({"top_k": 5}, "top_k"),  # a vLLM extra: refused, not ignored
        ({"n": 0}, "n"),
    ],
)
def test_bad_fields_name_the_param(client: TestClient, body: dict[str, Any], param: str) -> None:
    assert_error(chat(client, **body), 400, param=param)


def test_missing_field_and_malformed_json(client: TestClient) -> None:
    assert_error(client.post(CHAT, json={"model": "fake"}), 400, param="messages")
    err = assert_error(client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]


def test_context_length_exceeded(client: TestClient) -> None:
    assert_error(chat(client, model="fake-tiny-context", max_tokens=100), 400, code="context_length_exceeded")
    long = [{"role": "user", "content": "word " * 50}]
    assert_error(chat(client, model="fake-tiny-context", messages=long), 400, code="context_length_exceeded")
    # also for streams: the error comes before the stream starts, as a plain HTTP error
    resp = chat(client, model="fake-tiny-context", max_tokens=100, stream=True)
    assert_error(resp, 400, code="context_length_exceeded")


def test_engine_exception_fails_only_that_request(client: TestClient) -> None:
    err = assert_error(chat(client, messages=[{"role": "user", "content": "[[fail]]"}]), 500)
    assert err["type"] == "server_error"
    assert chat(client).status_code == 200


def test_error_after_stream_started_is_a_final_event(client: TestClient) -> None:
    resp = chat(client, messages=[{"role": "user", "content": "a b c [[fail-mid-stream]]"}], stream=True)
    assert resp.status_code == 200
    last = resp.text.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: "))["error"]["type"] == "server_error"
    assert chat(client).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get(CHAT), 405)


def test_request_id_round_trip(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/health", headers={"X-Request-Id": "bad id with spaces"}).headers["x-request-id"]) == 32


def test_body_limit(client: TestClient) -> None:
    big = "x" * 1_100_000
    assert_error(chat(client, messages=[{"role": "user", "content": big}]), 413)


def test_edge_refusals_under_v2_use_its_envelope(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """413, 431, a lone surrogate's 400 and a 500 the edge answers itself: {"error": msg} under /v2, as
    every other /v2 error, and still the OpenAI envelope under /v1."""
    infer, json_type = "/v2/models/fake/infer", {"content-type": "application/json"}
    too_large = client.post(infer, content=b"{}", headers={**json_type, "content-length": str(10**9)})
    many = client.post(infer, json={}, headers={f"x-h{i}": "1" for i in range(120)})
    surrogate = client.post(infer, content=b'{"inputs": "\\ud800"}', headers=json_type)
    for resp, status in ((too_large, 413), (many, 431), (surrogate, 400)):
        assert resp.status_code == status
        assert resp.headers["connection"] == "close"
        assert isinstance(resp.json()["error"], str), resp.text
    assert_error(client.post(CHAT, content=b"{}", headers={**json_type, "content-length": str(10**9)}), 413)

    async def broken(scope: Any) -> None:
        raise RuntimeError("edge bug")

    monkeypatch.setattr(client.app.entry.auth, "check", broken)  # type: ignore[attr-defined]
    v2 = client.get("/v2/models/fake")
    assert v2.status_code == 500
    assert isinstance(v2.json()["error"], str)
    assert_error(client.get("/v1/models"), 500)
