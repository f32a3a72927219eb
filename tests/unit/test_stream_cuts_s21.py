"""Session 21's cuts to a streamed token's CPU: the events sent by `sse.EventStream` (no guard generator, no
StreamingResponse, the stream in a task of its own under the disconnect watch), the chat route reading the
pipeline's chunks itself, the encoder's per-choice frames, the chunked body framed by our protocol, one
token tally per chunk, and the fake engine's stop check on the answer's tail. Each keeps what it replaced:
the same bytes, the same ASGI messages, the same errors, disconnects and counts."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.responses import StreamingResponse

from llmops.api import chat as chat_route
from llmops.api import disconnect
from llmops.api.chunks import ChunkEncoder
from llmops.api.disconnect import WATCH_AFTER_S
from llmops.api.sse import DONE, SSE_HEADERS, event, sse_response
from llmops.engines.base import SamplingParams, TextChunk, TextRequest, TokenLogprob, TokenUsage, ToolCallDelta
from llmops.engines.fake import FakeOptions, FakeTextEngine
from llmops.engines.textgen import prepare_fallback
from llmops.errors import DeadlineExceeded, EngineError, error_body, internal_error
from llmops.observability.inference import InferenceObserver, TokenTally
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import build_tracer
from llmops.protocol.chat import ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta
from llmops.protocol.completions import Completion, CompletionChoice
from tests.helpers import LeavingClient, ready_client, write_config
from tests.unit.test_chunks import IDS, TEXTS, chat, completion
from tests.unit.test_gateway_cuts_s19 import POST, _serve

# -- the encoder's frames -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_id", "created", "model"), IDS)
def test_every_choices_text_event_equals_the_models(chunk_id: str, created: int, model: str) -> None:
    chats, completions = ChunkEncoder("chat", chunk_id, created, model), ChunkEncoder("completions", chunk_id,
                                                                                        created, model)
    for _ in range(2):  # the second time from the frames made the first
        for index in (0, 1, 7, 12):
            for text in TEXTS:
                want = chat(chunk_id, created, model, [ChatChunkChoice(index=index, delta=ChatDelta(content=text))])
                assert chats.text(index, text) == want
                assert chats.piece(index, text, None) == want
                want = completion(chunk_id, created, model, [CompletionChoice(index=index, text=text,
                                                                              finish_reason=None)])
                assert completions.text(index, text) == want
                assert completions.piece(index, text, None) == want


def test_a_lone_surrogate_still_fails_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        ChunkEncoder("chat", "id", 1, "m").piece(0, "\ud800", None)


# -- EventStream: the ASGI messages of StreamingResponse with the guard in front ---------------------------------


_Client = LeavingClient


SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "path": "/x",
         "headers": []}


async def _events(items: list[bytes], fail: Exception | None = None) -> AsyncIterator[bytes]:
    for item in items:
        await asyncio.sleep(0)
        yield item
    if fail is not None:
        raise fail


async def _reference(items: list[bytes]) -> list[dict[str, Any]]:
    """What the stream sent before: StreamingResponse over the first event, the rest and [DONE]."""
    async def guarded() -> AsyncIterator[bytes]:
        async for item in _events(items):
            yield item
        yield DONE

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    client = _Client()
    response = StreamingResponse(guarded(), media_type="text/event-stream", headers=SSE_HEADERS)
    await response(SCOPE, client.receive, send)
    return sent


async def _ours(items: list[bytes], fail: Exception | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    response = await sse_response(_events(items, fail), lambda: {})
    await response(SCOPE, _Client().receive, send)
    return sent


def test_the_messages_are_starlettes() -> None:
    items = [b"data: {\"a\": %d}\n\n" % i for i in range(5)]

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await _reference(items), await _ours(items)

    theirs, ours = asyncio.run(both())
    assert ours == theirs
    assert ours[0]["headers"] == [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
                                  (b"content-type", b"text/event-stream; charset=utf-8")]
    assert [m.get("body") for m in ours[1:]] == [*items, DONE, b""]


@pytest.mark.parametrize("error", [DeadlineExceeded("too late"), RuntimeError("engine broke")])
def test_an_error_after_the_start_is_the_last_event(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "llmops.api"):
        sent = asyncio.run(_ours([b"data: 1\n\n", b"data: 2\n\n"], fail=error))
    bodies = [m["body"] for m in sent[1:]]
    expected = error if isinstance(error, DeadlineExceeded) else internal_error(error)
    assert bodies == [b"data: 1\n\n", b"data: 2\n\n", event(error_body(expected)), b""]
    assert sent[-1]["more_body"] is False
    unexpected = [r for r in caplog.records if r.getMessage() == "stream failed after it started"]
    assert len(unexpected) == (0 if isinstance(error, DeadlineExceeded) else 1)
    assert b"engine broke" not in bodies[2]  # a 500 without internals


@pytest.mark.parametrize("fails_at", [0, 1, 3])  # the start, the first event, a later one
def test_a_broken_connection_is_not_an_event_and_stops_the_source(fails_at: int) -> None:
    closed = []

    async def source() -> AsyncIterator[bytes]:
        try:
            for i in range(100):
                yield b"data: %d\n\n" % i
        finally:
            closed.append(True)

    async def run() -> None:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            if len(sent) == fails_at:
                raise OSError("the connection broke")
            sent.append(message)

        response = await sse_response(source())
        with pytest.raises(OSError, match="the connection broke"):
            await response(SCOPE, _Client().receive, send)
        assert len(sent) == fails_at  # no error event after

    asyncio.run(run())
    assert closed == [True]


def _wait_until(condition: Any) -> Any:
    async def wait() -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not condition():  # the watcher starts after WATCH_AFTER_S
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(WATCH_AFTER_S / 5)
    return wait()


async def _endless(stopped: asyncio.Event) -> AsyncIterator[bytes]:
    """Events until stopped from outside; `stopped` set when the generator ends."""
    try:
        while True:
            await asyncio.sleep(0.001)
            yield b"data: x\n\n"
    finally:
        stopped.set()


def test_a_client_gone_mid_stream_stops_it_and_the_response_ends_quietly() -> None:
    stopped, sent = asyncio.Event(), []

    async def run() -> None:
        client = _Client()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        response = await sse_response(_endless(stopped))
        task = asyncio.ensure_future(response(SCOPE, client.receive, send))
        await _wait_until(lambda: client.reads > 0)
        client.left.set()
        await task  # no exception: nobody is left to answer
        assert stopped.is_set()
        assert task.cancelling() == 0
        sweep = disconnect._sweep
        assert sweep is not None
        assert not sweep.pending
        assert not sweep.watchers

    asyncio.run(run())
    assert sent[-1]["more_body"] is True  # cut off: no [DONE], no last message


def test_a_watched_stream_that_ends_ends_as_it_should() -> None:
    """A stream long enough to be watched: when it ends, uvicorn's `receive` says http.disconnect (the response
    is complete) and the watcher wakes first; the response still ends normally, everything sent."""
    sent: list[dict[str, Any]] = []
    complete, watched = asyncio.Event(), asyncio.Event()
    reads = [0]

    async def receive() -> dict[str, Any]:  # as uvicorn's after the body: until the client or the response ends
        reads[0] += 1
        watched.set()
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete.set()

    async def slow() -> AsyncIterator[bytes]:
        yield b"data: 0\n\n"
        await asyncio.wait_for(watched.wait(), 10)  # until the watcher has started (after WATCH_AFTER_S)
        for i in range(1, 3):
            await asyncio.sleep(0)
            yield b"data: %d\n\n" % i

    async def run() -> None:
        response = await sse_response(slow())
        task = asyncio.ensure_future(response(SCOPE, receive, send))
        await task
        assert task.cancelling() == 0
        assert reads[0] >= 1

    asyncio.run(run())
    assert [m.get("body") for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", DONE, b""]


def test_the_server_cancelling_a_stream_is_a_cancellation() -> None:
    stopped = asyncio.Event()

    async def run() -> None:
        async def send(message: dict[str, Any]) -> None:
            pass

        response = await sse_response(_endless(stopped))
        task = asyncio.ensure_future(response(SCOPE, _Client().receive, send))
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stopped.is_set()

    asyncio.run(run())


def test_a_short_stream_starts_no_watcher() -> None:
    async def run() -> None:
        client = _Client()
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        for _ in range(20):
            response = await sse_response(_events([b"data: 1\n\n", b"data: 2\n\n"]))
            await response(SCOPE, client.receive, send)
        assert client.reads == 0

    asyncio.run(run())


# -- the wire: our protocol frames a stream's events as uvicorn does ------------------------------------------


ITEMS = [b"data: {\"n\": %d, \"text\": \"\xc3\xa9\"}\n\n" % i for i in range(4)]


def _stream_app(headers: dict[str, str] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        items = list(ITEMS)
        response = await sse_response(_events(items), lambda: headers or {})
        await response(scope, receive, send)
    return app


def test_a_streams_bytes_on_the_wire_are_uvicorns() -> None:
    app = _stream_app({"X-Queue-Position": "0"})
    ours, theirs = _serve(app, POST, ours=True), _serve(app, POST, ours=False)
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert len(ours.writes) == len(theirs.writes) == 7  # the head, 4 events, [DONE], the last chunk: one write each
    assert ours.writes[1:6] == [b"%x\r\n%b\r\n" % (len(e), e) for e in [*ITEMS, DONE]]
    assert ours.writes[-1] == b"0\r\n\r\n"
    assert b"transfer-encoding: chunked\r\n" in ours.writes[0]


def test_keep_alive_streams_one_after_another_are_uvicorns() -> None:
    app = _stream_app()
    ours, theirs = _serve(app, POST, ours=True, requests=3), _serve(app, POST, ours=False, requests=3)
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert not ours.closed


# -- the chat route's events -----------------------------------------------------------------------------------


def _body(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "stream": True, **extra})


def _call(keeps: bool = False) -> Any:
    return SimpleNamespace(services=SimpleNamespace(semantic_cache=None), cache_key="k" if keeps else None,
                           semantic=None)


async def _chunks(items: list[tuple[int, TextChunk]], fail: Exception | None = None
                  ) -> AsyncIterator[tuple[int, TextChunk]]:
    for item in items:
        yield item
    if fail is not None:
        raise fail


def _route_events(items: list[tuple[int, TextChunk]], body: ChatCompletionRequest, call: Any,
                  fail: Exception | None = None) -> list[bytes]:
    async def run() -> list[bytes]:
        return [e async for e in chat_route._events(_chunks(items, fail), body, call)]
    return asyncio.run(run())


def _as_model(raw: bytes) -> ChatCompletionChunk:
    assert raw.startswith(b"data: ")
    assert raw.endswith(b"\n\n")
    chunk = ChatCompletionChunk.model_validate_json(raw[6:-2])
    assert event(chunk) == raw  # each event is the bytes its model gives
    return chunk


def test_tool_call_deltas_and_text_stream_through_the_models() -> None:
    calls = (ToolCallDelta(0, "call_1", "get_weather", '{"city":'), )
    items = [(0, TextChunk("Let me look")), (0, TextChunk("", tool_calls=calls)),
             (0, TextChunk("", tool_calls=(ToolCallDelta(0, arguments='"Paris"}'),))),
             (0, TextChunk("", finish_reason="tool_calls", usage=TokenUsage(5, 9)))]
    events = [_as_model(e) for e in _route_events(items, _body(stream_options={"include_usage": True}), _call())]
    assert events[0].choices[0].delta.role == "assistant"
    assert events[1].choices[0].delta.content == "Let me look"
    first_call = events[2].choices[0].delta.tool_calls
    assert first_call is not None
    assert first_call[0].id == "call_1"
    assert first_call[0].function is not None
    assert first_call[0].function.name == "get_weather"
    more = events[3].choices[0].delta.tool_calls
    assert more is not None
    assert more[0].function is not None
    assert more[0].function.arguments == '"Paris"}'
    assert events[4].choices[0].finish_reason == "tool_calls"
    assert events[5].choices == []
    assert events[5].usage is not None
    assert events[5].usage.completion_tokens == 9
    assert len(events) == 6


def test_a_tool_call_with_its_finish_is_two_events() -> None:
    items = [(0, TextChunk("", finish_reason="tool_calls", tool_calls=(ToolCallDelta(0, "c", "f", "{}"),)))]
    events = [_as_model(e) for e in _route_events(items, _body(), _call())]
    assert events[1].choices[0].delta.tool_calls is not None
    assert events[1].choices[0].finish_reason is None
    assert events[2].choices[0].finish_reason == "tool_calls"


def test_logprobs_and_several_choices_stream_as_the_models() -> None:
    token = TokenLogprob(" a", -0.5, tuple(b" a"), (TokenLogprob(" a", -0.5, tuple(b" a")),))
    items = [(1, TextChunk(" a", logprobs=(token,))), (0, TextChunk("b")),
             (0, TextChunk("", finish_reason="stop", usage=TokenUsage(3, 1))),
             (1, TextChunk("", finish_reason="length", usage=TokenUsage(3, 1)))]
    events = [_as_model(e) for e in _route_events(items, _body(n=2, logprobs=True, top_logprobs=1), _call())]
    assert [e.choices[0].delta.role for e in events[:2]] == ["assistant", "assistant"]
    assert events[2].choices[0].index == 1
    assert events[2].choices[0].logprobs is not None
    assert [e.choices[0].finish_reason for e in events[4:]] == ["stop", "length"]


def test_the_answer_is_built_for_the_cache_only_when_one_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    stored: list[dict[str, Any]] = []

    async def store(call: Any, body: dict[str, Any]) -> None:
        stored.append(body)

    monkeypatch.setattr(chat_route.textcall, "store", store)
    items = [(0, TextChunk("x")), (0, TextChunk(" y")), (0, TextChunk("", finish_reason="stop",
                                                                         usage=TokenUsage(2, 2)))]
    body = _body(stream_options={"include_usage": True})
    plain = _route_events(items, body, _call(keeps=False))
    assert stored == []
    assert json.loads(plain[-1][6:])["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    kept = _route_events(items, body, _call(keeps=True))
    assert json.loads(plain[-1][6:])["usage"] == json.loads(kept[-1][6:])["usage"]
    assert len(stored) == 1
    answer = ChatCompletion.model_validate(stored[0])
    assert answer.choices[0].message.content == "x y"
    assert answer.choices[0].finish_reason == "stop"


def test_an_engine_failure_before_any_output_is_an_http_error_after_it_the_last_event() -> None:
    async def first_fails() -> None:
        events = chat_route._events(_chunks([], RuntimeError("boom")), _body(), _call())
        with pytest.raises(EngineError, match="RuntimeError"):  # before any output: a plain HTTP 500
            await sse_response(events)

    asyncio.run(first_fails())
    with pytest.raises(EngineError, match="RuntimeError"):  # after: sse.EventStream makes it the last event
        _route_events([(0, TextChunk("a"))], _body(), _call(), fail=RuntimeError("boom"))


# -- through the app ----------------------------------------------------------------------------------------------

LONG = " ".join(f"w{i}" for i in range(100)) + " four five six"  # past the guard's held-back text
MODELS: list[dict[str, Any]] = [
    {"name": "fixed", "engine": "fake", "options": {"reply": "one two three four five six"}, "limits": {"max_n": 3}},
    {"name": "long", "engine": "fake", "options": {"reply": LONG}}]
OUTPUT_RULE = {"name": "words", "detector": "blocklist", "stages": ["output"], "terms": ["four five"]}


@contextmanager
def _client(tmp_path: Path, **extra: Any) -> Iterator[TestClient]:
    with ready_client(write_config(tmp_path / "s21.yaml", MODELS, **extra)) as c:
        yield c


def _stream(c: TestClient, **extra: Any) -> list[bytes]:
    resp = c.post("/v1/chat/completions", json={"model": "fixed", "stream": True,
                                                "messages": [{"role": "user", "content": "hi"}], **extra})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.content.endswith(b"\n\n")
    return [e + b"\n\n" for e in resp.content.split(b"\n\n")[:-1]]


def _metric(c: TestClient, name: str, **labels: str) -> float:
    text = c.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{[^}}]*{re.escape(want)}[^}}]*}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_stream_is_the_models_bytes_and_counted_once(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        events = _stream(c, n=2, stream_options={"include_usage": True}, logprobs=True, top_logprobs=2)
        assert events[-1] == DONE
        chunks = [_as_model(e) for e in events[:-1]]
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == 12
        words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].index == 0]
        assert "".join(w or "" for w in words) == "one two three four five six"
        assert _metric(c, "llmops_generation_tokens_total", model="fixed") == 12
        assert _metric(c, "inference_requests_total", model="fixed", status="success") == 1


def test_an_output_guardrail_still_blocks_mid_stream(tmp_path: Path) -> None:
    with _client(tmp_path, guardrails={"rules": [OUTPUT_RULE]}) as c:
        events = _stream(c, model="long")
        assert events[-1] != DONE
        last = json.loads(events[-1][6:])
        assert last["error"]["code"] == "content_filter"
        text = "".join(json.loads(e[6:])["choices"][0]["delta"]["content"] or "" for e in events[:-1])
        assert text.startswith("w0 w1 w2")  # text went out before the block
        assert "four five" not in text


def test_a_streamed_answer_is_still_cached_and_replayed(tmp_path: Path) -> None:
    with _client(tmp_path, cache={"enabled": True}) as c:
        first = _stream(c, temperature=0)
        second = c.post("/v1/chat/completions", json={"model": "fixed", "stream": True, "temperature": 0,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert second.headers["x-cache"] == "hit"
        text = "".join(json.loads(e[6:])["choices"][0]["delta"]["content"] or "" for e in first[:-1])
        replayed = [json.loads(e[6:]) for e in second.content.split(b"\n\n") if e.startswith(b"data: {")]
        assert "".join(e["choices"][0]["delta"]["content"] or "" for e in replayed) == text


def test_an_engine_failure_mid_stream_is_the_last_event_and_counted(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        events = _stream(c, messages=[{"role": "user", "content": "go [[fail-mid-stream]]"}])
        assert json.loads(events[-1][6:])["error"]["type"] == "server_error"
        assert _metric(c, "inference_requests_total", model="fixed", status="error") == 1
        assert _metric(c, "llmops_generation_tokens_total", model="fixed") == 2  # the two words made


# -- one tally a chunk ----------------------------------------------------------------------------------------


def test_the_observer_counts_into_the_requests_tally_as_both_counted() -> None:
    chunks = [(0, TextChunk("a")), (1, TextChunk("")), (0, TextChunk("b")), (1, TextChunk("c")),
              (0, TextChunk("", finish_reason="stop", usage=TokenUsage(4, 7)))]
    own, shared = TokenTally(3), TokenTally(3)
    shared.admitted = True
    observer = InferenceObserver(Metrics(), build_tracer(None, "t"), "m", {}, 3)
    observer.count_into(shared)
    for index, chunk in chunks:
        observer.chunk(index, chunk)
        own.add(index, chunk)
    assert shared.totals() == own.totals() == (4, 7 + 1)  # choice 0's usage; choice 1's one chunk with text
    assert shared.chunks == own.chunks
    assert shared.reported == own.reported
    assert observer.tally is shared


# -- the fake engine's stop check ----------------------------------------------------------------------------


def _old_stop_answer(words: list[str], stops: list[str]) -> list[str]:
    """The fake engine's check before: every stop looked for in the whole answer joined again."""
    out: list[str] = []
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        if any(s in "".join(out) + piece for s in stops):
            break
        out.append(piece)
    return out


@pytest.mark.parametrize("stops", [["o th"], ["three"], ["e f"], ["x"], ["one"], ["ix"], ["two three four"],
                                   ["zz", "ur fi"], [""]])
def test_the_fake_engines_stops_are_found_as_before(stops: list[str]) -> None:
    reply = "one two three four five six"
    engine = FakeTextEngine("m", FakeOptions(reply=reply))
    request = TextRequest("r", SamplingParams(stop=tuple(stops), max_tokens=50), prompt="hello")

    async def run() -> list[TextChunk]:
        return [c async for c in engine.generate(request)]

    chunks = asyncio.run(run())
    want = _old_stop_answer(reply.split(" "), [*stops, *_fallback_stops(request)])
    assert [c.text for c in chunks[:-1]] == want
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(want)
    assert chunks[-1].finish_reason == "stop"


def _fallback_stops(request: TextRequest) -> list[str]:
    return list(prepare_fallback(request).stops)


# -- /v1/completions streams the same way -------------------------------------------------------------------


def _completion_stream(c: TestClient, **extra: Any) -> list[bytes]:
    resp = c.post("/v1/completions", json={"model": "fixed", "stream": True, "prompt": "hi", **extra})
    assert resp.status_code == 200, resp.text
    return [e + b"\n\n" for e in resp.content.split(b"\n\n")[:-1]]


def _completion_text(events: list[bytes], index: int = 0) -> str:
    chunks = [Completion.model_validate_json(e[6:-2]) for e in events if e.startswith(b"data: {")]
    return "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == index)


def test_a_completions_stream_counts_usage_and_is_the_models_bytes(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        events = _completion_stream(c, n=2, prompt=["a", "b"], stream_options={"include_usage": True})
        assert events[-1] == DONE
        for e in events[:-1]:
            assert event(Completion.model_validate_json(e[6:-2])) == e
        usage = json.loads(events[-2][6:])["usage"]
        assert usage["completion_tokens"] == 24  # 4 choices of 6 words
        assert [_completion_text(events, i) for i in range(4)] == ["one two three four five six"] * 4
        assert _metric(c, "llmops_generation_tokens_total", model="fixed") == 24


def test_a_streamed_completion_is_cached_only_when_a_cache_keeps_it_and_replayed(tmp_path: Path) -> None:
    with _client(tmp_path, cache={"enabled": True}) as c:
        first = _completion_stream(c, temperature=0)
        second = c.post("/v1/completions", json={"model": "fixed", "stream": True, "prompt": "hi",
                                                 "temperature": 0})
        assert second.headers["x-cache"] == "hit"
        replayed = [e + b"\n\n" for e in second.content.split(b"\n\n")[:-1]]
        assert _completion_text(replayed) == _completion_text(first) == "one two three four five six"


def test_an_engine_failure_mid_completion_stream_is_the_last_event(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        events = _completion_stream(c, prompt="go [[fail-mid-stream]]")
        assert json.loads(events[-1][6:])["error"]["type"] == "server_error"
        assert _metric(c, "inference_requests_total", model="fixed", status="error") == 1
