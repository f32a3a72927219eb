"""OpenAI's rate-limit headers (x-ratelimit-limit-requests, -remaining-requests, -reset-requests and the same
for tokens) on every answer to a limited request, from the decision the store made, on the in-process
backends (memory, and SQLite, whose counters are the process's). Before, only X-RateLimit-Limit / -Remaining /
-Reset (seconds) were sent, for requests/min alone, and nothing said where a key stood with its tokens/min.
The Redis backend's decisions are checked on a real redis-server in tests/integration/test_rate_limit_headers_live.py,
with the official openai client's `with_raw_response`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.http_edge import Refusal, set_api_key
from llmops.middleware.rate_limit import Admission, RateLimiter, duration
from llmops.observability.metrics import Metrics
from llmops.settings import StateSettings, load_settings
from llmops.stores import build_state
from llmops.stores.counters import Decision, MemoryCounters, listen_for_tokens, sliding
from llmops.stores.keys import ApiKey, KeyLimits, new_key

REQUESTS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKENS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0004, "1ms"), (0.017, "17ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"), (8.64, "8.64s"),
    (1.2000000476837158, "1.2s"), (59.9999, "1m0s"), (86.4, "1m26.4s"), (360, "6m0s"), (3600, "1h0m0s"),
    (3725.25, "1h2m5.25s"), (-3, "0s")])
def test_reset_times_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_tokens_reset_counts_the_tokens_just_added() -> None:
    """A window empty before this request holds its tokens after it: they weigh until the next window ends."""
    assert sliding(0, 0, 0.5, 100, 10).reset_s == pytest.approx(90.0)  # was 30: said full before it was
    assert sliding(0, 0, 0.5, 100, 0).reset_s == 0.0  # nothing counted at all: full now
    assert sliding(0, 40, 0.25, 100, 0).reset_s == pytest.approx(45.0)  # only the previous window's fade
    refused = sliding(90, 0, 0.5, 100, 20)
    assert (refused.allowed, refused.remaining, refused.reset_s) == (False, 10, pytest.approx(90.0))


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_each_in_process_backend_tells_what_the_headers_need(backend: str, tmp_path: Any) -> None:
    async def run() -> tuple[list[Decision], list[Decision]]:
        state = build_state(StateSettings(backend=backend, sqlite_path=str(tmp_path / "s.db")))
        heard: list[Decision] = []
        try:
            requests = [await state.counters.hit_requests("key:k", 3) for _ in range(4)]
            listen_for_tokens(heard.append)
            await state.counters.hit_tokens("k", 100, 30)
            await state.counters.hit_tokens("k", 100, 80)  # refused: 30 + 80 > 100
            listen_for_tokens(None)
            await state.counters.hit_tokens("k", 100, 1)  # nobody listens any more
        finally:
            await state.close()
        return requests, heard

    requests, heard = asyncio.run(run())
    assert [(d.allowed, d.limit, d.remaining) for d in requests] == [(True, 3, 2), (True, 3, 1), (True, 3, 0),
                                                                     (False, 3, 0)]
    assert [round(d.reset_s) for d in requests[:3]] == [20, 40, 60]  # one request's allowance back every 20 s
    assert [(d.allowed, d.limit, d.remaining) for d in heard] == [(True, 100, 70), (False, 100, 70)]
    assert 60 < heard[0].reset_s <= 120


def test_remaining_requests_is_not_cut_by_float_rounding() -> None:
    """At 50/min a request is 1.2 s of the minute: 58.8 / 1.2 is 48.99999999999999 in floating point, which
    said 48 requests were left after the first, where 49 are."""
    from llmops.stores.counters import gcra

    for now in (1000.0, 1_777_777_777.123):  # at unix time's size a float holds ~0.2 us, not more
        decision, _ = gcra(now, None, 50)
        assert (decision.remaining, decision.reset_s) == (49, pytest.approx(1.2)), now


def scope_for(key: ApiKey | None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "path": "/v1/chat/completions", "headers": [],
                             "client": ("127.0.0.1", 1)}
    if key is not None:
        set_api_key(scope, key)
    return scope


def names(headers: Any) -> set[str]:
    if isinstance(headers, dict):
        return {k.lower() for k in headers}
    return {k.decode() for k, _ in headers}


def test_the_limiter_sends_only_the_limits_the_request_has() -> None:
    async def run() -> dict[str, Any]:
        limiter = RateLimiter(MemoryCounters(), None, [], Metrics())
        anonymous = RateLimiter(MemoryCounters(), 1, [], Metrics())
        answers: dict[str, Any] = {}
        for name, limits in (("unlimited", KeyLimits()), ("rpm", KeyLimits(rpm=1)),
                             ("tpm", KeyLimits(tpm=50)), ("both", KeyLimits(rpm=1, max_concurrent=1))):
            key, _ = new_key(name, (), "interactive", limits)
            answers[name] = [await limiter.admit(scope_for(key)) for _ in range(2)]
        answers["open"] = await limiter.admit(scope_for(None))
        answers["anonymous"] = [await anonymous.admit(scope_for(None)) for _ in range(2)]
        return answers

    answers = asyncio.run(run())
    legacy = {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}
    for name in ("unlimited", "tpm"):
        assert [a.headers for a in answers[name]] == [[], []], name  # tokens are told later, by the accounting
    assert answers["open"].headers == []
    for name in ("rpm", "both", "anonymous"):
        admitted, refused = answers[name]
        assert isinstance(admitted, Admission)
        assert isinstance(refused, Refusal)
        assert names(admitted.headers) == set(REQUESTS) | legacy, name
        assert refused.headers is not None
        assert names(refused.headers) == set(REQUESTS) | legacy, name
        assert dict(admitted.headers)[b"x-ratelimit-remaining-requests"] == b"0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert [a.tokens_limited for a in answers["tpm"]] == [True, True]
    assert not answers["rpm"][0].tokens_limited


def test_a_refusal_for_places_in_flight_still_says_the_requests_figures() -> None:
    key, _ = new_key("both", (), "interactive", KeyLimits(rpm=10, max_concurrent=1))

    async def run() -> Refusal | Admission:
        limiter = RateLimiter(MemoryCounters(), None, [], Metrics())
        assert isinstance(await limiter.admit(scope_for(key)), Admission)
        return await limiter.admit(scope_for(key))

    refused = asyncio.run(run())
    assert isinstance(refused, Refusal)
    assert refused.headers is not None
    assert (refused.headers["x-ratelimit-limit-requests"], refused.headers["x-ratelimit-remaining-requests"]) == (
        "10", "8")


@pytest.fixture
def app_client() -> Iterator[tuple[TestClient, Any]]:
    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, app


def keyed(c: TestClient, app: Any, limits: KeyLimits) -> dict[str, str]:
    key, secret = new_key("k", (), "interactive", limits)
    c.portal.call(app.state.services.state.keys.add, key)
    return {"Authorization": f"Bearer {secret}"}


def ask(c: TestClient, headers: dict[str, str], stream: bool, words: int = 8) -> Any:
    return c.post("/v1/completions", headers=headers, json={
        "model": "fake", "prompt": " ".join(["word"] * words), "max_tokens": 2, "stream": stream})


def test_answers_carry_both_limits_json_and_streamed(app_client: tuple[TestClient, Any]) -> None:
    c, app = app_client
    auth = keyed(c, app, KeyLimits(rpm=100, tpm=1000))
    plain, streamed = ask(c, auth, False), ask(c, auth, True)
    for r in (plain, streamed):
        assert r.status_code == 200, r.text
        assert set(REQUESTS + TOKENS) <= set(r.headers)
        assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-limit-tokens"]) == ("100", "1000")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert int(plain.headers["x-ratelimit-remaining-requests"]) == 99
    assert int(streamed.headers["x-ratelimit-remaining-requests"]) == 98
    # the prompt (about 10 tokens) and max_tokens are counted at admission, corrected when the answer ends
    assert 950 <= int(plain.headers["x-ratelimit-remaining-tokens"]) < 1000
    assert int(streamed.headers["x-ratelimit-remaining-tokens"]) < int(plain.headers["x-ratelimit-remaining-tokens"])
    assert plain.headers["x-ratelimit-reset-tokens"].endswith("s")


def test_a_token_limit_429_says_where_the_key_stands(app_client: tuple[TestClient, Any]) -> None:
    c, app = app_client
    auth = keyed(c, app, KeyLimits(tpm=20))
    assert ask(c, auth, False).status_code == 200
    refused = ask(c, auth, True, words=40)  # far past what is left
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-tokens"] == "20"
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < 20
    assert "retry-after" in refused.headers
    assert not set(REQUESTS) & set(refused.headers)  # the key has no requests/min: nothing said of one


def test_an_unlimited_key_and_an_open_server_get_no_rate_limit_headers(app_client: tuple[TestClient, Any]) -> None:
    c, app = app_client
    r = ask(c, {}, False)  # no key yet: an open server
    assert r.status_code == 200
    assert not [h for h in r.headers if h.startswith("x-ratelimit")]
    auth = keyed(c, app, KeyLimits())
    for stream in (False, True):
        r = ask(c, auth, stream)
        assert r.status_code == 200
        assert not [h for h in r.headers if h.startswith("x-ratelimit")]


def test_a_browser_may_read_the_headers_cors_exposes_them() -> None:
    """A page on an allowed origin reads a response header only when CORS exposes it by name."""
    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"},
                             web={"cors_origins": ["https://app.example.com"]})
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        auth = keyed(c, app, KeyLimits(rpm=100, tpm=1000))
        r = ask(c, {**auth, "Origin": "https://app.example.com"}, False)
    assert r.status_code == 200
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    sent = {h for h in r.headers if h.startswith("x-ratelimit")}
    assert set(REQUESTS + TOKENS) <= sent
    assert sent <= exposed
