"""OpenAI's rate-limit headers on real servers, read the way clients read them (the official openai client's
`with_raw_response`), on the embedded SQLite backend and on a real Redis shared by replicas; and the Redis
backend's decisions, which must carry what the headers need from the round trip that made them (no extra
round trip: a keyed request with every limit still makes two, counted on the redis-server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from llmops.cli import main
from llmops.settings import StateSettings
from llmops.stores import build_state
from llmops.stores.counters import Decision, listen_for_tokens
from llmops.stores.ledger import TokenHit
from tests.helpers import RedisServer, live_server, write_config

REQUESTS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKENS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
MESSAGES: list[Any] = [{"role": "user", "content": "how many requests may I still send this minute?"}]


@pytest.fixture(autouse=True)
def own_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(tmp_path / "state.db"))  # env beats the YAML


def test_redis_decisions_carry_the_figures(redis_server: RedisServer) -> None:
    async def run() -> tuple[list[Decision], tuple[Decision, bool], list[Decision]]:
        state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
        heard: list[Decision] = []
        try:
            requests = [await state.counters.hit_requests("key:a", 3) for _ in range(4)]
            both = await state.counters.hit_and_acquire("key:b", 6, "b", 2, "holder", 60)
            listen_for_tokens(heard.append)
            await state.counters.hit_tokens("a", 100, 30)
            await state.counters.hit_tokens("a", 100, 80)  # refused: 30 + 80 > 100
            assert state.budgets is not None
            reserved = await state.budgets.reserve("c", 0, 10.0, 0.01, "h", 60, TokenHit(50, 20))
            assert reserved is not None
            assert reserved.made
            listen_for_tokens(None)
            await state.counters.hit_tokens("a", 100, 1)
        finally:
            await state.close()
        return requests, both, heard

    requests, (both, placed), heard = asyncio.run(run())
    assert [(d.allowed, d.limit, d.remaining, d.measured) for d in requests] == [
        (True, 3, 2, True), (True, 3, 1, True), (True, 3, 0, True), (False, 3, 0, True)]
    assert [round(d.reset_s) for d in requests[:3]] == [20, 40, 60]
    assert placed
    assert (both.allowed, both.limit, both.remaining, round(both.reset_s)) == (True, 6, 5, 10)
    # tokens/min from its own script and from the budget's script alike
    assert [(d.allowed, d.limit, d.remaining) for d in heard] == [(True, 100, 70), (False, 100, 70), (True, 50, 30)]
    assert all(60 < d.reset_s <= 120 for d in (heard[0], heard[2]))


def test_redis_failing_open_tells_nothing(redis_server: RedisServer) -> None:
    async def run() -> tuple[Decision, list[Decision]]:
        state = build_state(StateSettings(backend="redis", redis_url=redis_server.url, on_error="open",
                                          redis_timeout_s=0.2))
        heard: list[Decision] = []
        redis_server.stop()
        try:
            listen_for_tokens(heard.append)
            await state.counters.hit_tokens("a", 100, 30)
            listen_for_tokens(None)
            return await state.counters.hit_requests("key:a", 3), heard
        finally:
            await state.close()

    decision, heard = asyncio.run(run())
    assert decision.allowed
    assert not decision.measured
    assert heard == []


def serve(tmp_path: Path, capsys: pytest.CaptureFixture[str], state: dict[str, Any],
          *flags: str) -> tuple[Path, str]:
    cfg = write_config(tmp_path / "rl.yaml", [{"name": "fake", "engine": "fake"}], state=state)
    assert main(["keys", "--config", str(cfg), "create", "--name", "limited", *flags]) == 0
    secret: str = json.loads(capsys.readouterr().out)["secret"]
    return cfg, secret


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"backend": "sqlite"}
        return
    server = RedisServer(tmp_path).start()
    try:
        yield {"backend": "redis", "redis_url": server.url}
    finally:
        server.stop()


def test_the_openai_client_reads_both_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             backend: dict[str, Any]) -> None:
    cfg, secret = serve(tmp_path, capsys, backend, "--rpm", "50", "--tpm", "5000", "--budget", "100")
    with live_server(cfg) as base, openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="fake", messages=MESSAGES, max_tokens=16)
        assert raw.parse().choices[0].message.content
        streamed = client.chat.completions.with_raw_response.create(model="fake", messages=MESSAGES, max_tokens=16,
                                                                    stream=True)
        headers = streamed.headers  # there before the first event is read
        assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        for h in (raw.headers, headers):
            assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-limit-tokens"]) == ("50", "5000")
            assert set(REQUESTS + TOKENS) <= set(h)
        assert (raw.headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-requests"]) == (
            "49", "48")
        # counted at admission: the prompt (about 12 tokens) and max_tokens, reserved until the answer ends
        assert 5000 - 16 - 30 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 5000 - 16
        assert 4900 < int(headers["x-ratelimit-remaining-tokens"]) < int(raw.headers["x-ratelimit-remaining-tokens"])
        assert raw.headers["x-ratelimit-reset-requests"] == "1.2s"  # one request's share of the minute
        assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")


def test_a_429_carries_the_headers_to_the_client(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 backend: dict[str, Any]) -> None:
    cfg, secret = serve(tmp_path, capsys, backend, "--rpm", "1")
    with live_server(cfg) as base, openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0) as client:
        client.models.with_raw_response.list()  # any limited request counts
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="fake", messages=MESSAGES)
        h = info.value.response.headers
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("1", "0")
        assert h["x-ratelimit-reset-requests"].endswith("s")
        assert int(h["retry-after"]) >= 1
        assert not set(TOKENS) & set(h)  # no tokens/min on this key


def test_no_extra_round_trip_on_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      redis_server: RedisServer) -> None:
    """Requests/min (with its in-flight place) is one script, the budget with tokens/min another: the
    headers come from those two, as the architecture says (docs/architecture.md, 'two round trips')."""
    state = {"backend": "redis", "redis_url": redis_server.url}
    cfg, secret = serve(tmp_path, capsys, state, "--rpm", "50", "--tpm", "5000", "--budget", "100",
                        "--max-concurrent", "4")
    stats = redis.Redis.from_url(redis_server.url)

    def scripts_run() -> int:
        info = stats.info("commandstats")
        return sum(int(info.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))

    with live_server(cfg) as base, openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0) as client:
        client.chat.completions.with_raw_response.create(model="fake", messages=MESSAGES)  # scripts loaded
        before = scripts_run()
        raw = client.chat.completions.with_raw_response.create(model="fake", messages=MESSAGES)
        assert scripts_run() - before == 2
        assert set(REQUESTS + TOKENS) <= set(raw.headers)
