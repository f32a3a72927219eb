"""The upstream engine against an upstream that misbehaves in ways found by an attack run: a half-open trial
whose outcome never comes, error bodies and lines of any size, a stream that closes before its end, a body
that does not decode, an upstream's own Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from llmops.engines import upstream as up
from llmops.engines.base import Message, SamplingParams, TextRequest
from llmops.engines.breaker import CircuitBreaker
from llmops.errors import BadGateway, EngineError, ServiceUnavailable, error_response_parts
from tests.unit.test_upstream_gateway import GOOD, collect, engine, status

DONE = b"data: [DONE]\n\n"


def sse(*lines: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, content=b"".join(lines), headers={"content-type": "text/event-stream"})


class _Counted(httpx.AsyncByteStream):
    """`chunks` pieces of `piece`, counting how many were read."""

    def __init__(self, piece: bytes, chunks: int) -> None:
        self.piece, self.chunks, self.read = piece, chunks, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.read += 1
            yield self.piece


def test_a_trial_given_up_by_its_client_lets_the_next_call_be_the_trial() -> None:
    breaker = CircuitBreaker(1, 0.0)
    breaker.failure()
    trial = breaker.take()
    assert trial
    assert breaker.take() is None  # one trial at a time
    breaker.abandon(trial)
    assert breaker.take()
    breaker.abandon(trial)  # a stale trial's give-back does not free the new one
    assert breaker.take() is None


def test_an_abandoned_half_open_trial_does_not_hold_the_circuit_open() -> None:
    """The trial's client gives up (its deadline, a disconnect) while the upstream has not answered yet."""
    reached, answered = asyncio.Event(), asyncio.Event()
    whole = [GOOD, b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n', DONE]

    async def slow_then_well(request: httpx.Request) -> httpx.Response:
        reached.set()
        await answered.wait()
        return sse(*whole)(request)

    eng = engine(slow_then_well, max_retries=0, breaker_failures=1)  # type: ignore[arg-type]
    eng.breaker.reset_s = 0.0
    eng.breaker.failure()  # open; half-open at once

    async def run() -> list[str]:
        trial = asyncio.create_task(anext(eng.generate(_request())))
        await reached.wait()  # the trial is at the upstream, which has not answered
        trial.cancel()  # no verdict on the upstream
        with pytest.raises(asyncio.CancelledError):
            await trial
        answered.set()
        return [c.text async for c in eng.generate(_request())]

    assert asyncio.run(run()) == ["hi", ""]  # the next call was let through, and closed the circuit
    assert eng.breaker.state == "closed"


def test_an_error_answer_is_read_only_as_far_as_it_is_used() -> None:
    body = _Counted(b"x" * 8192, 100_000)  # 800 MB if read whole
    eng = engine(lambda request: httpx.Response(500, stream=body), max_retries=0)
    with pytest.raises(EngineError):
        collect(eng)
    assert body.read * 8192 <= up.MAX_ERROR_BODY + 8192


def test_an_endless_line_is_malformed_not_buffered() -> None:
    body = _Counted(b"data: " + b"a" * 8186, 100_000)  # no newline, ever
    eng = engine(lambda request: httpx.Response(200, stream=body), max_retries=0)
    with pytest.raises(BadGateway) as info:
        collect(eng)
    assert status(info.value)[2] == "upstream_malformed"
    assert "longer than" in info.value.message
    assert body.read * 8192 <= up.MAX_LINE + 2 * 8192


@pytest.mark.parametrize("tail", [b"", b"data: {\"choices\": [{\"delta\": {\"content\": \"wor\"}}]}\n\n"])
def test_a_stream_that_closes_before_its_end_is_broken_not_a_stop(tail: bytes) -> None:
    eng = engine(sse(GOOD, tail), max_retries=0)
    seen: list[str] = []
    with pytest.raises(BadGateway) as info:
        collect(eng, seen)
    assert status(info.value) == (502, "server_error", "upstream_broken")
    assert "without a finish_reason or [DONE]" in info.value.message
    assert seen == ["hi"] + (["wor"] if tail else [])


@pytest.mark.parametrize("end", [DONE, b'data: {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}\n\n'])
def test_a_stream_ended_by_done_or_any_finish_reason_is_whole(end: bytes) -> None:
    chunks = collect(engine(sse(GOOD, end), max_retries=0))
    assert [c.text for c in chunks] == ["hi", ""]
    assert chunks[-1].finish_reason == "stop"


def test_done_alone_is_not_an_answer() -> None:
    eng = engine(sse(DONE), max_retries=1)
    with pytest.raises(BadGateway) as info:
        collect(eng)
    assert status(info.value)[2] == "upstream_malformed"
    assert eng.calls == 2  # type: ignore[attr-defined]


def test_a_body_that_does_not_decode_is_malformed_retried_and_counted() -> None:
    bad = lambda request: httpx.Response(200, content=b"not gzip at all",  # noqa: E731
                                         headers={"content-encoding": "gzip", "content-type": "text/event-stream"})
    eng = engine(bad, max_retries=1)
    with pytest.raises(BadGateway) as info:
        collect(eng)
    assert status(info.value) == (502, "server_error", "upstream_malformed")
    assert "does not decode" in info.value.message
    assert (eng.calls, eng.breaker.failures) == (2, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize("header", ["60", "HTTP-DATE"])
def test_an_upstream_asking_for_a_long_wait_is_not_retried_and_its_wait_is_passed_on(header: str) -> None:
    if header == "HTTP-DATE":
        header = email.utils.formatdate(time.time() + 90, usegmt=True)
    eng = engine(lambda request: httpx.Response(503, headers={"retry-after": header}), max_retries=3)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        collect(eng)
    assert eng.calls == 1  # type: ignore[attr-defined]  # not asked again inside the wait it asked for
    assert 55 <= (info.value.retry_after or 0) <= 90
    assert time.monotonic() - started < up.MAX_RETRY_WAIT_S  # it was not held for a wait it was told to take


def test_an_error_event_is_the_upstream_answering_not_an_outage() -> None:
    eng = engine(sse(b'data: {"error": {"message": "the model is overloaded"}}\n\n'), max_retries=2,
                 breaker_failures=1)
    eng.breaker.reset_s = 0.0
    eng.breaker.failure()  # half-open: this call is the trial
    with pytest.raises(EngineError) as info:
        collect(eng)
    assert "the model is overloaded" in info.value.message
    assert eng.breaker.state == "closed"


def _request() -> TextRequest:
    return TextRequest("r", SamplingParams(max_tokens=4), messages=(Message("user", "hi"),))


@pytest.mark.parametrize(("code", "expected"), [(401, "upstream_auth"), (403, "upstream_auth"),
                                                (302, "upstream_malformed"), (204, "upstream_malformed")])
def test_an_upstream_refusing_the_servers_credentials_or_not_answering_the_api_is_final(
        code: int, expected: str) -> None:
    eng = engine(lambda request: httpx.Response(code, headers={"location": "https://elsewhere.test/v1"}),
                 max_retries=2)
    with pytest.raises(BadGateway) as info:
        collect(eng)
    status_code, body, headers = error_response_parts(info.value)
    assert (status_code, body["error"]["code"]) == (502, expected)
    assert headers.get("x-should-retry") == "false"  # the openai SDKs stop: an operator must change something
    assert eng.calls == 1  # type: ignore[attr-defined]
