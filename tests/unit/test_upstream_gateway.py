"""What a client is answered when an upstream engine fails it, as a gateway answers: an upstream that answers
something malformed or breaks off is 502 Bad Gateway (it was a 500, this server's own error, or for a broken
connection before the first token a 503 "unreachable"); one that took the request and went silent past its
read_timeout_s is 504 Gateway Timeout (it was 503 "unreachable", or mid-stream a 500). An upstream that
cannot be reached at all stays 503 upstream_unavailable with Retry-After, on purpose: the answer its circuit
breaker gives once it opens on those failures. Each is still retried before the first token and counted by
the breaker as before."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.engines.base import Message, SamplingParams, TextChunk, TextRequest
from llmops.engines.upstream import UpstreamEngine, UpstreamOptions
from llmops.errors import BadGateway, GatewayTimeout, ServiceUnavailable, error_response_parts
from llmops.settings import load_settings
from tests.helpers import write_config

GOOD = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'


def engine(answer: Callable[[httpx.Request], httpx.Response], **options: Any) -> UpstreamEngine:
    eng = UpstreamEngine("up", UpstreamOptions(base_url="http://upstream.test/v1", backoff_s=0, **options))
    eng.calls = 0  # type: ignore[attr-defined]

    def counted(request: httpx.Request) -> httpx.Response:
        eng.calls += 1  # type: ignore[attr-defined]
        return answer(request)

    eng._client = httpx.AsyncClient(base_url="http://upstream.test/v1", transport=httpx.MockTransport(counted))
    eng._state = "ready"
    return eng


def failing(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)
    return answer


class _BreaksOff(httpx.AsyncByteStream):
    """A 200 stream that sends one token, then fails with `exc`."""

    def __init__(self, exc: type[httpx.TransportError]) -> None:
        self.exc = exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield GOOD
        raise self.exc("simulated")


def collect(eng: UpstreamEngine, seen: list[str] | None = None) -> list[TextChunk]:
    async def run() -> list[TextChunk]:
        chunks = []
        request = TextRequest("r", SamplingParams(max_tokens=4), messages=(Message("user", "hi"),))
        async for chunk in eng.generate(request):
            chunks.append(chunk)
            if seen is not None:
                seen.append(chunk.text)
        return chunks
    return asyncio.run(run())


def status(exc: BaseException) -> tuple[int, str, str | None]:
    assert isinstance(exc, BadGateway | GatewayTimeout | ServiceUnavailable)
    code, body, _ = error_response_parts(exc)
    return code, body["error"]["type"], body["error"]["code"]


def test_an_upstream_that_went_silent_is_a_gateway_timeout_retried_and_counted() -> None:
    eng = engine(failing(httpx.ReadTimeout), max_retries=1, read_timeout_s=7)
    with pytest.raises(GatewayTimeout) as info:
        collect(eng)
    assert status(info.value) == (504, "timeout_error", "upstream_timeout")
    assert "did not answer within 7 s" in info.value.message
    assert eng.calls == 2  # type: ignore[attr-defined]  # retried before the first token, as before
    assert eng.breaker.failures == 2


@pytest.mark.parametrize("exc", [httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError])
def test_a_connection_that_broke_off_before_an_answer_is_a_bad_gateway(exc: type[httpx.TransportError]) -> None:
    eng = engine(failing(exc), max_retries=1)
    with pytest.raises(BadGateway) as info:
        collect(eng)
    assert status(info.value) == (502, "server_error", "upstream_broken")
    assert eng.calls == 2  # type: ignore[attr-defined]
    assert eng.breaker.failures == 2


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout])
def test_an_unreachable_upstream_stays_503_like_its_open_breaker(exc: type[httpx.TransportError]) -> None:
    eng = engine(failing(exc), max_retries=0, breaker_failures=1)
    with pytest.raises(ServiceUnavailable) as info:
        collect(eng)
    assert status(info.value) == (503, "service_unavailable_error", "upstream_unavailable")
    assert info.value.retry_after == 2
    with pytest.raises(ServiceUnavailable) as opened:  # the breaker is open now: the same answer, at once
        collect(eng)
    assert status(opened.value)[::2] == (503, "upstream_unavailable")


@pytest.mark.parametrize(("code", "expected"), [(502, (502, "server_error", "upstream_bad_gateway")),
                                                (504, (504, "timeout_error", "upstream_timeout"))])
def test_an_upstream_that_is_itself_a_failed_gateway_is_passed_on_as_one(
        code: int, expected: tuple[int, str, str]) -> None:
    said = b'{"error": {"message": "no healthy upstream", "type": "server_error"}}'
    eng = engine(lambda request: httpx.Response(code, content=said), max_retries=1)
    with pytest.raises((BadGateway, GatewayTimeout)) as info:
        collect(eng)
    assert status(info.value) == expected
    assert "no healthy upstream" in info.value.message
    assert eng.calls == 2  # type: ignore[attr-defined]  # retried, as any 5xx
    assert eng.breaker.failures == 2


def test_an_upstreams_own_internal_error_stays_an_engine_error() -> None:
    from llmops.errors import EngineError

    eng = engine(lambda request: httpx.Response(500, content=b'{"error": {"message": "boom"}}'), max_retries=0)
    with pytest.raises(EngineError) as info:
        collect(eng)
    assert not isinstance(info.value, BadGateway | GatewayTimeout)
    assert error_response_parts(info.value)[0] == 500


@pytest.mark.parametrize(("exc", "expected"), [(httpx.ReadTimeout, (504, "timeout_error", "upstream_timeout")),
                                               (httpx.ReadError, (502, "server_error", "upstream_broken"))])
def test_mid_stream_failures_are_gateway_errors_not_internal_ones(
        exc: type[httpx.TransportError], expected: tuple[int, str, str]) -> None:
    eng = engine(lambda request: httpx.Response(200, stream=_BreaksOff(exc)), max_retries=2)
    seen: list[str] = []
    with pytest.raises((BadGateway, GatewayTimeout)) as info:
        collect(eng, seen)
    assert seen == ["hi"]
    assert status(info.value) == expected
    assert eng.calls == 1  # type: ignore[attr-defined]  # never retried once a token was sent


class _SilentServer(ThreadingHTTPServer):
    released: threading.Event


class _Silent(BaseHTTPRequestHandler):
    """Takes the request, then says nothing until the test is over (longer than the gateway waits)."""

    server: _SilentServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.released.wait(30)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def silent() -> Iterator[str]:
    server = _SilentServer(("127.0.0.1", 0), _Silent)
    server.released = threading.Event()
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def test_the_client_gets_504_in_the_openai_envelope(tmp_path: Path, silent: str) -> None:
    models = [{"name": "up", "engine": "upstream",
               "options": {"base_url": silent, "max_retries": 0, "read_timeout_s": 0.3}}]
    cfg = write_config(tmp_path / "gw.yaml", models, state={"backend": "memory"})
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json={"model": "up", "stream": True,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 504
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("timeout_error", "upstream_timeout")
        assert "did not answer within 0.3 s" in error["message"]
        assert c.get("/ready").json()["models"]["up"]["consecutive_failures"] == 1


def test_the_schema_lists_the_gateway_answers() -> None:
    """The OpenAPI schema lists every status an operation may answer: 502 too, now that there is one."""
    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    with TestClient(create_app(settings)) as c:
        responses = c.get("/openapi.json").json()["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"500", "502", "503", "504"} <= set(responses)
    assert "upstream_malformed" in responses["502"]["description"]
    assert responses["502"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorEnvelope"
    assert "upstream_timeout" in responses["504"]["description"]


def test_the_client_gets_503_with_retry_after_for_an_unreachable_upstream(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models = [{"name": "up", "engine": "upstream",
               "options": {"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0}}]
    cfg = write_config(tmp_path / "down.yaml", models, state={"backend": "memory"})
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={"model": "up", "stream": stream,
                                                     "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "upstream_unavailable"
            assert int(r.headers["retry-after"]) >= 1
