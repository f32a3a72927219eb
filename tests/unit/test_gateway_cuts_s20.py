"""Session 20's cuts to a request's CPU (issue 14): a non-streamed answer's JSON written without its models
(api/chunks.whole_answer), a request with no output guardrail read through one generator with its
observer called inline (pipeline/text._served, observability/inference.InferenceObserver.chunk/end), and
one choice read under its deadline without with_deadline's generator (scheduling/runner.admitted_choices).
What they must keep: the models' exact bytes, and the settling, metrics and closing on every way a request ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from llmops.api import chat, completions
from llmops.api.chunks import whole_answer
from llmops.engines.base import ToolCallDelta
from llmops.errors import DeadlineExceeded, EngineError, LLMOpsError
from llmops.pipeline import chat_controls, stages, text
from llmops.pipeline.context import RequestContext
from llmops.pipeline.generation import Collected, collect
from llmops.pipeline.services import Services
from llmops.pipeline.stages import Call
from llmops.pipeline.text import TextWork
from llmops.protocol.chat import ChatCompletion, ChatCompletionRequest
from llmops.protocol.completions import Completion, CompletionRequest
from llmops.scheduling.admission import Admission
from llmops.scheduling.runner import admitted_choices
from tests.helpers import ready_client, write_config

TEXTS = ["", "hello", 'quote " and \\ backslash', "new\nline\ttab\r\b\f", "\x00\x01\x1f\x7f",
         "émoji 🦙 中文 \u2028 \u2029", "</script>", "{\"json\": [1, 2]}", "\ud7ff\ue000\uffff"]
IDS = [("chatcmpl-abc", 1_700_000_000, "gemma"), ('we"ird\\id', 0, "módel/ü \n x")]
FINISHES: list[list[str | None]] = [["stop"], ["length"], [None], ["stop", "length", None]]


def _done(texts: list[str], finish: list[str | None], prompt: int = 3, completion: int = 7) -> Collected:
    return Collected(parts=[[t] for t in texts], finish=list(finish), prompt_tokens=prompt,
                     completion_tokens=completion)


def _chat_body(model: str, **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                 **extra})


def _completions_body(model: str, **extra: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": model, "prompt": "hi", **extra})


@pytest.mark.parametrize(("answer_id", "created", "model"), IDS)
@pytest.mark.parametrize("content", TEXTS)
@pytest.mark.parametrize("finish", FINISHES)
def test_the_whole_answer_equals_the_models_json(answer_id: str, created: int, model: str, content: str,
                                                 finish: list[str | None]) -> None:
    texts = [content, content + " more", ""][:len(finish)]
    done = _done(texts, finish)
    want = chat._completion(done, _chat_body(model), answer_id, created).model_dump_json().encode()
    assert whole_answer("chat", answer_id, created, model, done) == want
    want = completions._completion(done, _completions_body(model), answer_id, created).model_dump_json().encode()
    assert whole_answer("completions", answer_id, created, model, done) == want


@pytest.mark.parametrize(("prompt", "completion"), [(0, 0), (12, 64), (2**31 - 1, 2**31 - 1)])
def test_the_usage_equals_the_models(prompt: int, completion: int) -> None:
    done = _done(["a"], ["stop"], prompt, completion)
    want = chat._completion(done, _chat_body("m"), "id", 5).model_dump_json().encode()
    assert whole_answer("chat", "id", 5, "m", done) == want


def test_a_chat_tool_calls_finish_is_written_and_a_completion_leaves_it_to_the_model() -> None:
    done = _done(["x"], ["tool_calls"])
    want = chat._completion(done, _chat_body("m"), "id", 5).model_dump_json().encode()
    assert whole_answer("chat", "id", 5, "m", done) == want
    assert whole_answer("completions", "id", 5, "m", done) is None
    with pytest.raises(ValidationError):  # what the route answers then, as before: the model refuses it
        completions._completion(done, _completions_body("m"), "id", 5)


def test_what_only_the_model_can_say_is_left_to_it() -> None:
    odd = _done(["x"], ["content_filter"])  # a finish reason the answer models refuse
    assert whole_answer("chat", "id", 5, "m", odd) is None
    with pytest.raises(ValidationError):
        chat._completion(odd, _chat_body("m"), "id", 5)
    assert whole_answer("chat", "id", 5, "m", _done(["lone \ud800 surrogate"], ["stop"])) is None
    # the routes: tool calls and logprobs go through the models
    calls = _done(["x"], ["tool_calls"])
    calls.calls[0] = [ToolCallDelta(0, "call_1", "f", "{}")]
    assert chat._answer_json(calls, _chat_body("m")) is None
    assert chat._answer_json(_done(["x"], ["stop"]), _chat_body("m", logprobs=True)) is None
    assert chat._answer_json(_done(["x"], ["stop"]), _chat_body("m", logprobs=False)) is not None
    assert completions._answer_json(_done(["x"], ["stop"]), _completions_body("m", logprobs=0)) is None
    assert completions._answer_json(_done(["x"], ["stop"]), _completions_body("m")) is not None


MODELS: list[dict[str, Any]] = [{"name": "fake", "engine": "fake"},
          {"name": "fixed", "engine": "fake", "options": {"reply": "one two three four five six"},
           "limits": {"max_n": 3}},
          {"name": "slow", "engine": "fake", "options": {"reply": "a b c d e f", "token_delay_s": 0.2}},
          {"name": "broken", "engine": "fake"}]
ROUTE = {"name": "alias", "variants": [{"model": "broken"}], "fallbacks": ["fixed"]}
OUTPUT_RULE = {"name": "words", "detector": "blocklist", "stages": ["output"], "terms": ["launch codes"]}


@contextmanager
def _client(tmp_path: Path, *, guarded: bool = False, cache: bool = False) -> Iterator[TestClient]:
    extra: dict[str, Any] = {"routes": [ROUTE]}
    if guarded:
        extra["guardrails"] = {"rules": [OUTPUT_RULE]}
    if cache:
        extra["cache"] = {"enabled": True}
    with ready_client(write_config(tmp_path / "s20.yaml", MODELS, **extra)) as c:
        yield c


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path) as c:
        yield c


def test_the_routes_send_the_models_bytes(plain: TestClient) -> None:
    answers = [plain.post("/v1/chat/completions", json={"model": "fixed", "n": 3, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]}),
               plain.post("/v1/chat/completions", json={"model": "fake", "messages": [
                   {"role": "user", "content": "émoji 🦙 \"quoted\" \\ \u2028 </script>"}]})]
    for resp in answers:
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/json"
        assert resp.content == ChatCompletion.model_validate_json(resp.content).model_dump_json().encode()
    assert [c["finish_reason"] for c in answers[0].json()["choices"]] == ["length"] * 3
    resp = plain.post("/v1/completions", json={"model": "fixed", "prompt": ["a", "b"], "n": 2, "echo": True})
    assert resp.status_code == 200, resp.text
    assert resp.content == Completion.model_validate_json(resp.content).model_dump_json().encode()
    assert len(resp.json()["choices"]) == 4
    logprobs = plain.post("/v1/chat/completions", json={"model": "fixed", "logprobs": True, "top_logprobs": 2,
                                                        "messages": [{"role": "user", "content": "hi"}]})
    assert logprobs.status_code == 200, logprobs.text
    assert logprobs.json()["choices"][0]["logprobs"]["content"][0]["token"] == "one"


def test_a_cached_answer_is_still_stored_through_the_model(tmp_path: Path) -> None:
    body = {"model": "fixed", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    with _client(tmp_path, cache=True) as c:
        first = c.post("/v1/chat/completions", json=body)
        second = c.post("/v1/chat/completions", json=body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == second.json()


# The pipeline's ends, run on the app's own loop (TestClient's portal), with and without an output rule.

def _services(c: TestClient) -> Services:
    services: Services = c.app.state.services  # type: ignore[attr-defined]
    return services


async def _call(services: Services, model: str, content: str, timeout_s: float | None = None) -> Call:
    body = _chat_body(model, messages=[{"role": "user", "content": content}])
    work = TextWork("chat", body, tuple(chat_controls.messages(body)))
    return await stages.prepare(services, RequestContext(None, timeout_s=timeout_s), work)


def _count(services: Services, model: str, status: str) -> float:
    return float(services.metrics.of_model(model).requests(status)._value.get())


def _settled(call: Call) -> bool:
    return call.charge is not None and call.charge.settled


def _running(services: Services, model: str) -> int:
    return services.pool.text_engine(model)[0].admission.running


def _run(c: TestClient, scenario: Callable[[Services], Awaitable[None]]) -> None:
    assert c.portal is not None  # inside the client's `with`: the app's loop runs
    c.portal.call(scenario, _services(c))


@pytest.fixture(params=[False, True], ids=["unguarded", "guarded"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, guarded=request.param) as c:
        yield c


def test_an_answer_settles_and_counts_a_success(app: TestClient) -> None:
    async def scenario(services: Services) -> None:
        call = await _call(services, "fixed", "hi")
        done = await collect(text.run(services, call, call.work), 1)  # type: ignore[arg-type]
        assert done.texts == ["one two three four five six"]
        assert _settled(call)
        assert _count(services, "fixed", "success") == 1
        assert (call.ctx.log["outcome"], call.ctx.log["completion_tokens"]) == ("success", 6)
        assert call.served == "fixed"
        assert _running(services, "fixed") == 0

    _run(app, scenario)


@pytest.mark.parametrize(("content", "tokens"), [("[[fail]]", 0), ("one two three [[fail-mid-stream]]", 2)])
def test_an_engine_failure_settles_and_counts_an_error(app: TestClient, content: str, tokens: int) -> None:
    async def scenario(services: Services) -> None:
        call = await _call(services, "fake", content)
        with pytest.raises(LLMOpsError):
            await collect(text.run(services, call, call.work), 1)  # type: ignore[arg-type]
        assert _settled(call)
        assert _count(services, "fake", "error") == 1
        assert (call.ctx.log["outcome"], call.ctx.log["completion_tokens"]) == ("error", tokens)
        assert _running(services, "fake") == 0

    _run(app, scenario)


def test_a_reader_that_stops_early_closes_the_source_and_settles(app: TestClient) -> None:
    async def scenario(services: Services) -> None:
        call = await _call(services, "fixed", "hi")
        chunks = text.run(services, call, call.work)  # type: ignore[arg-type]
        await anext(chunks)
        assert _running(services, "fixed") == 1  # the engine's generator is mid-answer
        await chunks.aclose()  # type: ignore[attr-defined]
        assert _settled(call)
        assert _count(services, "fixed", "cancelled") == 1
        assert call.ctx.log["outcome"] == "cancelled"
        for _ in range(10):  # the slot is given back (at once unguarded; by the collected generator otherwise)
            if _running(services, "fixed") == 0:
                break
            await asyncio.sleep(0)
        assert _running(services, "fixed") == 0

    _run(app, scenario)


def test_a_cancelled_request_settles_and_counts_a_cancellation(app: TestClient) -> None:
    async def scenario(services: Services) -> None:
        call = await _call(services, "slow", "hi")
        task = asyncio.ensure_future(collect(text.run(services, call, call.work), 1))  # type: ignore[arg-type]
        engine = services.pool.text_engine("slow")[1]
        deadline = asyncio.get_running_loop().time() + 10
        while engine.tokens_generated < 1:  # a token in, the next one on its way
            assert asyncio.get_running_loop().time() < deadline, "no token came"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _settled(call)
        assert _count(services, "slow", "cancelled") == 1
        assert call.ctx.log["outcome"] == "cancelled"
        assert call.ctx.log["completion_tokens"] >= 1  # the tokens made before it went are counted
        assert _running(services, "slow") == 0

    _run(app, scenario)


def test_a_deadline_settles_and_counts_a_refusal(app: TestClient) -> None:
    async def scenario(services: Services) -> None:
        call = await _call(services, "slow", "hi", timeout_s=0.3)
        with pytest.raises(DeadlineExceeded):
            await collect(text.run(services, call, call.work), 1)  # type: ignore[arg-type]
        assert _settled(call)
        assert _count(services, "slow", "deadline") == 1
        assert services.metrics.rejections.labels("slow", "deadline")._value.get() == 1  # counted once
        assert _running(services, "slow") == 0

    _run(app, scenario)


def test_a_model_failing_before_its_first_chunk_falls_back(app: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _services(app).pool.text_engine("broken")[1]

    async def fails(request: Any) -> Any:
        raise EngineError("upstream down")
        yield  # an async generator, as engines' are

    monkeypatch.setattr(broken, "generate", fails)

    async def scenario(services: Services) -> None:
        call = await _call(services, "alias", "hi")
        done = await collect(text.run(services, call, call.work), 1)  # type: ignore[arg-type]
        assert done.texts == ["one two three four five six"]
        assert call.served == call.ctx.log["variant"] == "fixed"
        assert _settled(call)
        assert call.charge is not None
        assert call.charge.model.name == "fixed"
        assert (_count(services, "broken", "error"), _count(services, "fixed", "success")) == (1, 1)
        assert services.metrics.variant_requests.labels("alias", "fixed", "fallback")._value.get() == 1

    _run(app, scenario)


# One choice is read under its deadline in admitted_choices' own frame: the same ends as with_deadline.

class _Source:
    """An engine whose one answer is 0, 1, 2...; `gap`: the third item waits for it."""

    def __init__(self, gap: asyncio.Event | None = None) -> None:
        self.closed = False
        self.gap = gap

    async def generate(self, request: Any) -> AsyncIterator[int]:
        try:
            for i in range(1000):
                if i == 2 and self.gap is not None:
                    await self.gap.wait()
                yield i
        finally:
            self.closed = True


def _one_choice(source: _Source, deadline: float, admission: Admission) -> AsyncIterator[Any]:
    return admitted_choices(admission, source, [object()], deadline, "interactive",  # type: ignore[arg-type, list-item]
                            lambda ticket: None)


async def test_one_choice_past_its_deadline_while_waiting_stops_the_engine() -> None:
    source, admission = _Source(asyncio.Event()), Admission(1, 1)
    stream = _one_choice(source, time.monotonic() + 0.2, admission)
    assert [await anext(stream), await anext(stream)] == [(0, 0), (0, 1)]
    with pytest.raises(DeadlineExceeded):
        await anext(stream)
    assert source.closed
    assert admission.running == 0


async def test_one_choice_past_its_deadline_with_the_consumer_fails_the_next_read() -> None:
    source, admission = _Source(), Admission(1, 1)
    stream = _one_choice(source, time.monotonic() + 0.1, admission)
    assert await anext(stream) == (0, 0)
    fired = asyncio.Event()
    asyncio.get_running_loop().call_later(0.15, fired.set)
    await fired.wait()
    with pytest.raises(DeadlineExceeded):
        await anext(stream)
    assert source.closed
    assert admission.running == 0


async def test_one_choice_cancelled_otherwise_propagates_and_gives_the_slot_back() -> None:
    source, admission = _Source(asyncio.Event()), Admission(1, 1)

    async def read() -> list[Any]:
        return [item async for item in _one_choice(source, time.monotonic() + 60, admission)]

    task = asyncio.ensure_future(read())
    for _ in range(5):
        await asyncio.sleep(0)
    assert admission.running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.running == 0


async def test_one_choice_within_its_deadline_is_read_whole() -> None:
    items = [item async for item in _one_choice(_Source(), time.monotonic() + 60, Admission(1, 1))]
    assert items == [(0, i) for i in range(1000)]
