"""An upstream that answers 200 with something that is not the OpenAI stream's shape (a data line that is not
JSON, `{"error": "a string"}`, `[1,2]`, `choices: [null]`, content that is a number, token counts that are
not counts) made a 500 "internal error (JSONDecodeError/AttributeError/TypeError)" and never reached the
circuit breaker. Now it is an EngineError (code upstream_malformed) saying the upstream answered something
malformed, counted as an upstream failure (retried before the first token, and opening the breaker), and
answered 502 Bad Gateway (errors.BadGateway), as a gateway whose upstream failed it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.engines.base import Message, SamplingParams, TextChunk, TextRequest
from llmops.engines.upstream import UpstreamEngine, UpstreamOptions
from llmops.errors import EngineError, ServiceUnavailable
from llmops.settings import load_settings
from tests.helpers import write_config

GOOD = 'data: {"choices": [{"delta": {"content": "hi"}}]}'
MALFORMED = {
    "not json": "data: {not json}",
    "error string": 'data: {"error": "plain string error"}',
    "a list": "data: [1,2]",
    "a string": 'data: "str"',
    "choices not a list": 'data: {"choices": "x"}',
    "choice null": 'data: {"choices": [null]}',
    "delta not an object": 'data: {"choices": [{"delta": 5}]}',
    "content a number": 'data: {"choices": [{"delta": {"content": 5}}]}',
    "text a list": 'data: {"choices": [{"text": ["a"]}]}',
    "usage a string": 'data: {"usage": "x"}',
    "tokens a string": 'data: {"usage": {"prompt_tokens": "x"}}',
    "tokens negative": 'data: {"usage": {"prompt_tokens": -1000000, "completion_tokens": -5}}',
    "tokens infinite": 'data: {"usage": {"prompt_tokens": 1e400}}',
}


def request() -> TextRequest:
    return TextRequest("r", SamplingParams(max_tokens=4), messages=(Message("user", "hi"),))


def engine(body: str, *, done: bool = True, **options: Any) -> UpstreamEngine:
    """An upstream engine whose upstream answers 200 with `body` (then `data: [DONE]`) to every request."""
    eng = UpstreamEngine("up", UpstreamOptions(base_url="http://upstream.test/v1", backoff_s=0, **options))
    eng.calls = 0  # type: ignore[attr-defined]

    def answer(req: httpx.Request) -> httpx.Response:
        eng.calls += 1  # type: ignore[attr-defined]
        return httpx.Response(200, content=(body + ("\n\ndata: [DONE]\n\n" if done else "")).encode(),
                              headers={"content-type": "text/event-stream"})

    eng._client = httpx.AsyncClient(base_url="http://upstream.test/v1", transport=httpx.MockTransport(answer))
    eng._state = "ready"
    return eng


async def collect(eng: UpstreamEngine) -> list[TextChunk]:
    return [chunk async for chunk in eng.generate(request())]


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_answers_are_an_upstream_failure(body: str) -> None:
    eng = engine(body.replace("\n", "\n\n"), max_retries=1)
    with pytest.raises(EngineError) as info:
        asyncio.run(collect(eng))
    assert info.value.code == "upstream_malformed"
    assert "upstream http://upstream.test/v1 answered something malformed" in info.value.message
    assert eng.calls == 2  # type: ignore[attr-defined]  # retried, as a 5xx is, before the first token
    assert eng.breaker.failures == 2


def test_a_200_with_no_events_is_malformed_not_an_empty_answer() -> None:
    eng = engine("<html>not an OpenAI API</html>", done=False, max_retries=0)
    with pytest.raises(EngineError) as info:
        asyncio.run(collect(eng))
    assert info.value.code == "upstream_malformed"
    assert "no server-sent events" in info.value.message


def test_the_breaker_opens_on_a_malformed_upstream() -> None:
    eng = engine("data: [1,2]", max_retries=0, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(EngineError):
            asyncio.run(collect(eng))
    assert eng.breaker.state == "open"
    with pytest.raises(ServiceUnavailable) as info:
        asyncio.run(collect(eng))
    assert info.value.code == "upstream_unavailable"
    assert eng.calls == 2  # type: ignore[attr-defined]  # the third failed fast


def test_malformed_after_the_first_token_fails_and_is_counted() -> None:
    eng = engine(f"{GOOD}\n\ndata: {{\"choices\": [null]}}", max_retries=2)
    seen: list[str] = []

    async def run() -> None:
        async for chunk in eng.generate(request()):
            seen.append(chunk.text)

    with pytest.raises(EngineError) as info:
        asyncio.run(run())
    assert info.value.code == "upstream_malformed"
    assert seen == ["hi"]
    assert eng.calls == 1  # type: ignore[attr-defined]  # never retried once a token was sent
    assert eng.breaker.failures == 1


def test_well_formed_streams_and_error_events_are_unchanged() -> None:
    usage = 'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 1}, "choices": []}'
    chunks = asyncio.run(collect(engine(f"{GOOD}\n\n{usage}")))
    assert [c.text for c in chunks] == ["hi", ""]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 1)
    eng = engine('data: {"error": {"message": "model exploded"}}', max_retries=2)
    with pytest.raises(EngineError) as info:
        asyncio.run(collect(eng))
    assert (info.value.code, info.value.message) == ("engine_error", "upstream: model exploded")


class _Scripted(BaseHTTPRequestHandler):
    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("stream", [False, True])
def test_the_client_is_told_the_upstream_answered_something_malformed(
        tmp_path: Path, scripted: tuple[str, type[_Scripted]], stream: bool) -> None:
    base, handler = scripted
    handler.body = b'data: {"choices": [{"delta": {"content": 5}}]}\n\ndata: [DONE]\n\n'
    models = [{"name": "up", "engine": "upstream",
               "options": {"base_url": base, "max_retries": 0, "breaker_failures": 2}}]
    cfg = write_config(tmp_path / "gw.yaml", models, state={"backend": "memory"})
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json={"model": "up", "stream": stream,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        text = r.text
        assert "internal error" not in text
        assert "answered something malformed" in text
        assert "upstream_malformed" in text
        if not stream:
            assert r.status_code == 502  # a gateway whose upstream failed it: Bad Gateway, not its own 500
            assert r.json()["error"]["type"] == "server_error"
        assert c.get("/ready").json()["models"]["up"]["consecutive_failures"] == 1
