"""Session 19's cuts to a request's CPU (issue 14): the response written in one `transport.write` with
uvicorn's bytes, header names validated once, the disconnect watch without a timer per request, the
HTTP metrics' series found once, and the metric additions without prometheus_client's per-call method."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import values
from starlette.responses import JSONResponse, Response, StreamingResponse
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from llmops.api import disconnect
from llmops.api.disconnect import WATCH_AFTER_S, cancel_on_disconnect
from llmops.errors import RequestCancelled
from llmops.http_protocol import protocol_class
from llmops.middleware.observe import Observer, Responder
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import build_tracer
from llmops.settings import HttpSettings
from tests.helpers import LeavingClient

DATE = [(b"date", b"Fri, 04 Dec 2026 21:00:00 GMT"), (b"server", b"uvicorn")]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _serve(app: Any, request: bytes, *, ours: bool, default_headers: list[tuple[bytes, bytes]] | None = None,
           requests: int = 1) -> _Transport:
    """Feed `request` (`requests` times, one after another on one connection) to our protocol or uvicorn's
    own; the transport with what was written."""

    async def run() -> _Transport:
        config = Config(app=app, log_config=None, log_level=None, access_log=False, lifespan="off")
        config.load()
        state = ServerState()
        state.default_headers = list(default_headers if default_headers is not None else DATE)
        protocol_type: Any = protocol_class(HttpSettings(implementation="httptools")) if ours else HttpToolsProtocol
        protocol, transport = protocol_type(config=config, server_state=state, app_state={}), _Transport()
        protocol.connection_made(transport)
        for _ in range(requests):
            protocol.data_received(request)
            for _ in range(200):  # the request's task: until its response is complete (or it failed)
                await asyncio.sleep(0)
                if protocol.cycle is not None and (protocol.cycle.response_complete or transport.closed):
                    break
            for _ in range(200):  # and until its task has ended (a stream's task group winds down after)
                if all(t.done() for t in protocol.tasks):
                    break
                await asyncio.sleep(0)
        closed = transport.closed
        protocol.connection_lost(None)
        transport.closed = closed  # as the server left it
        return transport

    return asyncio.run(run())


POST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}")
GET_HEAD = b"HEAD /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _json_app(headers: dict[str, str] | None = None, raw: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        response = JSONResponse({"answer": "w0", "n": 1}, headers=headers)
        if raw:
            response.raw_headers.extend(raw)
        await response(scope, receive, send)
    return app


def test_a_declared_length_answer_is_one_write_of_uvicorns_bytes() -> None:
    app = _json_app({"X-Cache": "bypass", "X-Queue-Position": "0"}, [(b"x-request-id", b"abc123")])
    ours, theirs = _serve(app, POST, ours=True), _serve(app, POST, ours=False)
    assert len(theirs.writes) == 2  # uvicorn: the head, then the body
    assert ours.writes == [b"".join(theirs.writes)]  # one write, the same bytes
    assert ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 21:00:00 GMT\r\nserver: uvicorn\r\n")
    assert not ours.closed


def test_keep_alive_requests_one_after_another_each_get_one_write() -> None:
    app = _json_app({"X-Cache": "bypass"})
    ours, theirs = _serve(app, POST, ours=True, requests=3), _serve(app, POST, ours=False, requests=3)
    assert len(ours.writes) == 3
    assert b"".join(ours.writes) == b"".join(theirs.writes)


def test_a_stream_writes_its_head_at_once() -> None:
    """Chunked (an SSE stream): the head goes out before the first event, as before."""
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

        async def events() -> Any:
            seen.append(len(transport_of[0].writes))
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"
        await StreamingResponse(events(), media_type="text/event-stream")(scope, receive, send)

    transport_of: list[_Transport] = []
    original = _Transport.__init__

    def recording(self: _Transport) -> None:
        original(self)
        transport_of[:] = [self]

    _Transport.__init__ = recording  # type: ignore[method-assign]
    try:
        ours = _serve(app, POST, ours=True)
        theirs = _serve(app, POST, ours=False)
    finally:
        _Transport.__init__ = original  # type: ignore[method-assign]
    assert seen == [1, 1]  # the head alone was out when the first event was made, for both
    assert ours.writes == theirs.writes


@pytest.mark.parametrize("request_bytes", [GET_HEAD, POST])
def test_head_requests_multi_part_bodies_and_empty_bodies_keep_uvicorns_bytes(request_bytes: bytes) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"6"), (b"Content-Type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})

    async def empty(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await Response(status_code=204)(scope, receive, send)

    for target in (app, empty):
        ours, theirs = _serve(target, request_bytes, ours=True), _serve(target, request_bytes, ours=False)
        assert b"".join(ours.writes) == b"".join(theirs.writes)
        assert ours.closed == theirs.closed


@pytest.mark.parametrize("header", [(b"x-bad", b"one\r\nx-injected: two"), (b"x-bad", b"\x00"),
                                   (b"bad name", b"v"), (b"x-ok", b"fine"), (b"bad:name", b"v")])
def test_invalid_headers_are_refused_as_uvicorn_refuses_them(header: tuple[bytes, bytes]) -> None:
    app = _json_app(raw=[header])
    ours, theirs = _serve(app, POST, ours=True), _serve(app, POST, ours=False)
    assert b"".join(ours.writes) == b"".join(theirs.writes)  # nothing of a refused head goes out
    assert ours.closed == theirs.closed
    if header[0] != b"x-ok":
        assert ours.closed
        assert not any(b"injected" in w or b"bad" in w for w in ours.writes)
    # the same name again, now remembered as valid or not: the same verdict
    again = _serve(app, POST, ours=True)
    assert again.writes == ours.writes
    assert again.closed == ours.closed


def test_new_default_headers_are_used_when_uvicorn_replaces_them() -> None:
    app = _json_app()
    first = _serve(app, POST, ours=True)
    later = [(b"date", b"Fri, 04 Dec 2026 21:00:01 GMT"), (b"server", b"uvicorn")]
    second = _serve(app, POST, ours=True, default_headers=later)
    assert b"21:00:00" in first.writes[0]
    assert b"21:00:01" in second.writes[0]
    bad = _serve(app, POST, ours=True, default_headers=[(b"x-bad", b"a\nb")])
    assert bad.closed
    assert bad.writes == []


def test_a_connection_close_answer_closes_after_its_one_write() -> None:
    app = _json_app({"Connection": "close"})
    ours, theirs = _serve(app, POST, ours=True), _serve(app, POST, ours=False)
    assert ours.writes == [b"".join(theirs.writes)]
    assert ours.closed
    assert theirs.closed


_Client = LeavingClient


def test_fast_work_starts_no_watcher_and_no_timer_per_request() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = []
        original = loop.call_later

        def counting(delay: float, callback: Any, *args: Any) -> Any:
            timers.append(callback)
            return original(delay, callback, *args)

        loop.call_later = counting  # type: ignore[method-assign]
        client = _Client()

        async def work(i: int) -> int:
            await asyncio.sleep(0)
            return i

        for i in range(50):
            assert await cancel_on_disconnect(client, work(i)) == i  # type: ignore[arg-type]
        assert client.reads == 0
        assert len(timers) <= 1  # the loop's one sweep (the code before: a timer for each of the 50)

    asyncio.run(run())


def test_a_client_gone_during_slow_work_cancels_it() -> None:
    async def run() -> None:
        client, stopped = _Client(), asyncio.Event()

        async def slow() -> None:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.set()

        task = asyncio.ensure_future(cancel_on_disconnect(client, slow()))  # type: ignore[arg-type]
        deadline = asyncio.get_running_loop().time() + 10
        while client.reads == 0:  # the watcher starts after WATCH_AFTER_S
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(WATCH_AFTER_S / 5)
        client.left.set()
        with pytest.raises(RequestCancelled):
            await task
        assert stopped.is_set()
        sweep = disconnect._sweep
        assert sweep is not None
        assert not sweep.pending
        assert not sweep.watchers

    asyncio.run(run())


def test_the_server_cancelling_a_watched_request_is_a_cancellation() -> None:
    async def run() -> None:
        client = _Client()
        task = asyncio.ensure_future(cancel_on_disconnect(client, asyncio.sleep(30)))  # type: ignore[arg-type]
        deadline = asyncio.get_running_loop().time() + 10
        while client.reads == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(WATCH_AFTER_S / 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sweep = disconnect._sweep
        assert sweep is not None
        assert not sweep.watchers

    asyncio.run(run())


def test_http_series_are_looked_up_once_and_count_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    observer = Observer(metrics, build_tracer(None, "t"))
    looked = []
    labels = metrics.http_requests.labels

    def counting(*values: Any) -> Any:
        looked.append(values)
        return labels(*values)

    monkeypatch.setattr(metrics.http_requests, "labels", counting)

    async def inner(scope: Any, receive: Any, out: Responder) -> None:
        await out({"type": "http.response.start", "status": 200, "headers": []})
        await out({"type": "http.response.body", "body": b""})

    async def sent(message: Any) -> None:
        pass

    async def run() -> None:
        for _ in range(5):
            scope = {"type": "http", "method": "GET", "path": "/health", "headers": [], "state": {}}
            await observer.observe(scope, sent, Responder(sent, []), inner)

    asyncio.run(run())
    assert looked == [("unmatched", "GET", "200")]
    assert labels("unmatched", "GET", "200")._value.get() == 5
    assert metrics.http_latency.labels("unmatched", "GET")._sum.get() > 0


def test_metric_additions_do_not_go_through_prometheus_clients_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """The addition is made inline, under the value's lock (exactness: test_observability's comparison)."""
    metrics = Metrics()
    counter, histogram = metrics.generation_tokens.labels("m"), metrics.ttft.labels("m")

    def refused(self: Any, amount: float) -> None:
        raise AssertionError("MutexValue.inc called")

    monkeypatch.setattr(values.MutexValue, "inc", refused)
    counter.inc(3)
    histogram.observe(0.02)
    assert counter._value.get() == 3
    assert histogram._sum.get() == 0.02
    assert sum(b.get() for b in histogram._buckets) == 1


def test_without_input_rules_the_limits_are_checked_without_the_async_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from llmops.errors import ContentFiltered
    from llmops.pipeline import stages
    from llmops.pipeline.guardrails import Guardrails
    from llmops.settings import GuardrailSettings

    guard = Guardrails(GuardrailSettings(max_input_chars=10), Metrics())

    async def refused(*args: Any) -> list[str]:
        raise AssertionError("the rules' async path called with no input rule")

    monkeypatch.setattr(guard, "check_rules_async", refused)
    monkeypatch.setattr(guard, "check_input_async", refused)
    services: Any = SimpleNamespace(guardrails=guard)

    def call(text: str) -> Any:
        return SimpleNamespace(work=SimpleNamespace(kind="completions", texts=lambda: [text], input_ids=lambda: 0))

    async def run() -> None:
        work: Any = SimpleNamespace(prompt=lambda call, services: None)
        monkeypatch.setattr(stages, "route", lambda services, ctx, w: call("x" * 11))
        with pytest.raises(ContentFiltered, match="at most 10") as refusal:  # the limit still refuses
            await stages.prepare(services, None, work)  # type: ignore[arg-type]
        assert refusal.value.param == "prompt"
        stages.input_limits(services, call("short"))  # within it: nothing raised, nothing changed

    asyncio.run(run())


def test_an_uncacheable_request_reads_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache off (or the request not deterministic) and no semantic cache: no lookup coroutine is made; the
    request still counts as a bypass and says so."""
    from types import SimpleNamespace

    from llmops.pipeline import stages

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache was read")

    metrics = Metrics()
    cacher = SimpleNamespace(key=lambda kind, payload, **kw: None, get=refused)
    services: Any = SimpleNamespace(cacher=cacher, semantic_cache=None, metrics=metrics)
    monkeypatch.setattr(stages, "semantic_lookup", refused)
    ctx = SimpleNamespace(cache_opt_out=False, subject=None, log={})
    call: Any = SimpleNamespace(work=SimpleNamespace(kind="chat"), ctx=ctx, config=SimpleNamespace(name="m"),
                                extra_headers={}, hit=None, semantic=None, cache_key="unset")
    asyncio.run(stages.cache_lookup(services, call))
    assert call.hit is None
    assert call.cache_key is None
    assert call.extra_headers["X-Cache"] == ctx.log["cache"] == "bypass"
    assert metrics.cache_requests.labels("m", "bypass")._value.get() == 1


def test_an_open_server_admits_without_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmops.middleware.rate_limit import Admission, RateLimiter
    from llmops.stores.counters import MemoryCounters

    limiter = RateLimiter(MemoryCounters(), None, [], Metrics())

    async def refused(*args: Any) -> Any:
        raise AssertionError("limits looked up with none to apply")

    monkeypatch.setattr(limiter, "_limits", refused)
    scope = {"type": "http", "path": "/v1/chat/completions", "headers": [], "client": ("203.0.113.9", 1), "state": {}}
    admitted = asyncio.run(limiter.admit(scope))
    assert admitted == Admission([])


def test_no_breaker_no_breaker_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmops.pipeline.accounting import Accountant
    from llmops.settings import ModelConfig, SpendSettings, StateSettings
    from llmops.stores import build_state

    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        accountant = Accountant(state, SpendSettings(), Metrics())

        async def refused(model: str) -> None:
            raise AssertionError("breaker checked with no ceiling")

        monkeypatch.setattr(accountant, "_check_breaker", refused)
        model = ModelConfig(name="m", engine="fake")
        charge = await accountant.admit(None, model, prompt_chars=8)
        assert charge.estimated_prompt == 2
        await state.close()

    asyncio.run(run())


def test_unlimited_admissions_are_answered_without_a_coroutine() -> None:
    from llmops.http_edge import set_api_key
    from llmops.middleware.rate_limit import Admission, RateLimiter
    from llmops.stores.counters import MemoryCounters
    from llmops.stores.keys import KeyLimits, new_key

    def scope() -> dict[str, Any]:
        return {"type": "http", "path": "/v1/chat/completions", "headers": [], "client": ("203.0.113.9", 1),
                "state": {}}

    open_server = RateLimiter(MemoryCounters(), None, [], Metrics())
    assert open_server.unlimited(scope()) == Admission([]) == asyncio.run(open_server.admit(scope()))
    per_ip = RateLimiter(MemoryCounters(), 60, [], Metrics())
    assert per_ip.unlimited(scope()) is None  # an anonymous per-IP limit: counted by admit
    assert per_ip.unlimited({**scope(), "path": "/health"}) == Admission([])  # the probes never are
    keyed = scope()
    set_api_key(keyed, new_key("k", (), "interactive", KeyLimits(rpm=5))[0])
    assert open_server.unlimited(keyed) is None


def test_an_anonymous_charge_is_made_without_a_worst_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from llmops.pipeline import stages
    from llmops.pipeline.accounting import Accountant
    from llmops.settings import ModelConfig, SpendSettings, StateSettings
    from llmops.stores import build_state
    from llmops.stores.keys import KeyLimits, new_key

    model = ModelConfig(name="m", engine="fake")

    def refused(*args: Any) -> Any:
        raise AssertionError("a worst case worked out for a request nothing reserves for")

    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        accountant = Accountant(state, SpendSettings(), Metrics())
        work = SimpleNamespace(texts=lambda: ["x" * 9], model_kind="chat", input_ids=lambda: 0,
                               worst_case_usd=refused, max_completion_tokens=refused)
        call: Any = SimpleNamespace(work=work, config=model, ctx=SimpleNamespace(key=None), charge=None)
        await stages.budget(SimpleNamespace(accountant=accountant), call)  # type: ignore[arg-type]
        assert call.charge == await accountant.admit(None, model, prompt_chars=9)  # admit's own charge
        assert call.charge.estimated_prompt == 3
        key = new_key("k", (), "interactive", KeyLimits(budget_usd=1))[0]
        assert accountant.admit_now(key, model, 9) is None  # a key: admit checks and reserves
        breaker = Accountant(state, SpendSettings(max_usd_per_hour=5), Metrics())
        assert breaker.admit_now(None, model, 9) is None  # a breaker: admit checks it
        await state.close()

    asyncio.run(run())
