"""Tenancy on real servers: limits shared through a real Redis by two server processes, keys and spend that
survive a restart (SQLite and Redis), tokens/min, budgets, the spend circuit breaker, and Redis going away."""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from llmops.cli import main
from llmops.pipeline.accounting import TEMPLATE_TOKENS, TOKENS_PER_PART
from llmops.settings import StateSettings
from llmops.stores import build_state
from tests.helpers import RedisServer, eventually, live_server, write_config, writes_of

ADMIN = "admin-secret-for-tests"
# $1 per completion token and $0.1 per prompt token (the fake engine echoes the prompt's words)
PRICED = [{"name": "fake", "engine": "fake", "pricing": {"prompt_usd_per_1k": 100, "completion_usd_per_1k": 1000}}]


@pytest.fixture(autouse=True)
def own_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(tmp_path / "state.db"))  # env beats the YAML


def config(tmp_path: Path, name: str, backend: str, redis: RedisServer | None = None, **extra: Any) -> Path:
    state: dict[str, Any] = {"backend": backend}
    if redis is not None:
        state["redis_url"] = redis.url
    state.update(extra.pop("state", {}))
    return write_config(tmp_path / f"{name}.yaml", PRICED, state=state, **extra)


def create_key(cfg: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    assert main(["keys", "--config", str(cfg), "create", "--name", "t", *flags]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def chat(base: str, secret: str | None, words: int = 3, max_tokens: int = 16) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    content = " ".join(["word"] * words)
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "fake", "max_tokens": max_tokens, "messages": [{"role": "user",
                                                                                    "content": content}]})


def cost(r: httpx.Response) -> float:
    """What a request on PRICED costs."""
    used = r.json()["usage"]
    return float(used["prompt_tokens"] * 0.1 + used["completion_tokens"] * 1.0)


def spent(base: str) -> float:
    """Every key's spend this server has recorded (llmops_spend_usd_total, all series)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{base}/metrics").text.splitlines()
               if line.startswith("llmops_spend_usd_total{"))


def settled(base: str, usd: float) -> None:
    """Wait until the server has recorded `usd` in all: accounting settles in a background task right after
    the response (the tokens/min counter first, then the spend, then the reservation is given back)."""
    assert eventually(lambda: spent(base) == pytest.approx(usd))


def test_two_servers_on_one_redis_enforce_one_limit(tmp_path: Path, redis_server: RedisServer,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, "shared", "redis", redis_server)
    secret = create_key(cfg, capsys, "--rpm", "4")["secret"]
    with live_server(cfg) as a, live_server(cfg) as b:
        codes = [chat(base, secret).status_code for base in (a, b) * 4]
    assert sorted(codes) == [200] * 4 + [429] * 4  # four in total, not four per process
    assert codes[:4] == [200] * 4


def test_two_servers_on_one_redis_share_budget_reservations(tmp_path: Path, redis_server: RedisServer,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """20 requests at once, split across two replicas, on a $0.05 budget that holds the worst cases of six:
    each replica alone would let six in (its own reservations reach the budget), together twelve; the shared
    reservations let six in, and the key spend at most the budget plus one request's worst case."""
    slow = [{"name": "fake", "engine": "fake", "options": {"token_delay_s": 0.3, "capacity": 20},
             "limits": {"max_queued": 20}, "pricing": {"prompt_usd_per_1k": 0.1, "completion_usd_per_1k": 0.1}}]
    cfg = write_config(tmp_path / "budget.yaml", slow, state={"backend": "redis", "redis_url": redis_server.url},
                       spend={"refresh_s": 0})
    key = create_key(cfg, capsys, "--budget", "0.05", "--budget-period", "day")
    headers = {"Authorization": f"Bearer {key['secret']}"}
    # 12 characters: at most 12 + TOKENS_PER_PART + TEMPLATE_TOKENS prompt tokens as admission reserves them
    body = {"model": "fake", "max_tokens": 2, "messages": [{"role": "user", "content": "abcdefghijkl"}]}
    worst = (12 + TOKENS_PER_PART + TEMPLATE_TOKENS + 2) * 0.1 / 1000
    reservations = redis.Redis.from_url(redis_server.url)
    with live_server(cfg) as a, live_server(cfg) as b, ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda base: httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers,
                                                      timeout=60).status_code, [a, b] * 10))
        assert eventually(lambda: reservations.hlen(f"llmops:reserved:{key['id']}") == 0)  # all settled
        spent = httpx.get(f"{a}/v1/usage", headers=headers).json()["budget"]["spent_usd"]
    assert sorted(set(codes)) == [200, 429]
    assert codes.count(200) <= math.ceil(0.05 / worst)
    assert spent <= 0.05 + worst


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_restart_keeps_keys_and_spend(tmp_path: Path, redis_server: RedisServer, backend: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, backend, backend, redis_server)
    key = create_key(cfg, capsys, "--budget", "1000", "--budget-period", "day")
    with live_server(cfg) as base:
        first = chat(base, key["secret"])
        assert first.status_code == 200
        settled(base, cost(first))
    with live_server(cfg) as base:
        usage = httpx.get(f"{base}/v1/usage", headers={"Authorization": f"Bearer {key['secret']}"}).json()
        assert chat(base, key["secret"]).status_code == 200
    used = first.json()["usage"]
    expected = used["prompt_tokens"] * 0.1 + used["completion_tokens"] * 1.0
    assert usage["key_id"] == key["id"]
    assert usage["budget"]["spent_usd"] == pytest.approx(expected)
    assert usage["data"][0]["requests"] == 1
    assert usage["data"][0]["completion_tokens"] == used["completion_tokens"]
    stored = redis_server.dump() if backend == "redis" else b"".join(
        f.read_bytes() for f in tmp_path.glob("state.db*"))
    assert key["secret"].encode() not in stored
    assert key["id"].encode() in stored


@pytest.mark.parametrize("budget", [[], ["--budget", "100"]], ids=["tpm-only", "with-a-budget"])
def test_tokens_per_minute_count_prompt_and_completion(tmp_path: Path, redis_server: RedisServer,
                                                       capsys: pytest.CaptureFixture[str], budget: list[str]) -> None:
    """With a budget too, tokens/min is checked in the budget reservation's script (one round trip)."""
    cfg = config(tmp_path, "tpm", "redis", redis_server)
    made = create_key(cfg, capsys, "--tpm", "100", *budget)
    secret = made["secret"]
    with live_server(cfg) as base:
        used, usd = 0, 0.0
        for _ in range(10):
            r = chat(base, secret, words=10, max_tokens=10)
            if r.status_code != 200:
                break
            used += r.json()["usage"]["total_tokens"]
            usd += cost(r)
            settled(base, usd)
        assert r.status_code == 429
        assert "tokens/min" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert 60 < used <= 100  # ~20 tokens a request: refused once the next would pass 100
    reservations = redis.Redis.from_url(redis_server.url)  # the refused request holds none either
    assert eventually(lambda: not reservations.hlen(f"llmops:reserved:{made['id']}")), "a reservation was left held"


def test_budget_exhaustion_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, "budget", "sqlite", auth={"admin_key": ADMIN})
    key = create_key(cfg, capsys, "--budget", "5", "--budget-period", "month")
    other = create_key(cfg, capsys)
    with live_server(cfg) as base:
        first = chat(base, key["secret"])  # ~15 prompt + 3 completion tokens: $4.50 of $5
        settled(base, cost(first))
        second = chat(base, key["secret"])
        assert second.status_code == 200  # $9: over, but admitted while under
        settled(base, cost(first) + cost(second))
        refused = chat(base, key["secret"])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "insufficient_quota"
        third = chat(base, other["secret"])
        assert third.status_code == 200  # another key's budget is its own
        settled(base, cost(first) + cost(second) + cost(third))
        admin = {"Authorization": f"Bearer {ADMIN}"}
        by_key = httpx.get(f"{base}/admin/usage", params={"group_by": "key"}, headers=admin).json()["data"]
        by_model = httpx.get(f"{base}/admin/usage", params={"group_by": "model,day"}, headers=admin).json()["data"]
        metrics = httpx.get(f"{base}/metrics").text
    used = first.json()["usage"]
    each = used["prompt_tokens"] * 0.1 + used["completion_tokens"] * 1.0
    assert 2.5 < each < 5  # two requests pass the $5 budget
    spend = {row["key_id"]: row["cost_usd"] for row in by_key}
    assert spend == {key["id"]: pytest.approx(2 * each), other["id"]: pytest.approx(each)}
    assert len(by_model) == 1
    assert by_model[0]["model"] == "fake"
    assert by_model[0]["requests"] == 3
    assert f'llmops_spend_usd_total{{key="{key["id"]}",model="fake"}} {2 * each}' in metrics
    assert 'reason="budget"' in metrics


def test_spend_circuit_breaker(tmp_path: Path) -> None:
    cfg = config(tmp_path, "breaker", "memory", spend={"max_usd_per_hour": 5})
    with live_server(cfg) as base:
        first = chat(base, None)
        assert first.status_code == 200  # $4.50
        settled(base, cost(first))
        second = chat(base, None)
        assert second.status_code == 200  # $9: the breaker opens after this one
        settled(base, cost(first) + cost(second))
        r = chat(base, None)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "spend_limit_reached"
        assert r.headers["retry-after"] == "60"


def open_and_closed(tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str],
                    rpm: int) -> tuple[Path, Path, str]:
    """Two configs on one Redis, failing open and closed, and a key with a requests/min and a budget."""
    opened = config(tmp_path, "open", "redis", redis_server, state={"on_error": "open"})
    closed = config(tmp_path, "closed", "redis", redis_server, state={"on_error": "closed"})
    return opened, closed, create_key(opened, capsys, "--rpm", str(rpm), "--budget", "1000")["secret"]


def test_redis_going_away_fails_open_or_closed_as_configured(
        tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    opened, closed, secret = open_and_closed(tmp_path, redis_server, capsys, rpm=100)
    with live_server(opened) as fail_open, live_server(closed) as fail_closed:
        assert chat(fail_open, secret).status_code == 200
        assert chat(fail_closed, secret).status_code == 200
        assert httpx.get(f"{fail_open}/ready").json()["state"] == {"backend": "redis", "reachable": True}
        redis_server.stop()
        started = time.monotonic()
        still_served = chat(fail_open, secret)
        refused = chat(fail_closed, secret)
        unknown = chat(fail_open, "sk-llmops-never-issued")
        elapsed = time.monotonic() - started
        metrics = httpx.get(f"{fail_open}/metrics").text
        ready = httpx.get(f"{fail_open}/ready")
    assert ready.status_code == 200  # readiness is about this pod: restarting it would not bring Redis back
    assert ready.json()["state"] == {"backend": "redis", "reachable": False}
    assert still_served.status_code == 200  # a key seen before keeps working, limits skipped
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "store_unavailable"
    assert unknown.status_code == 503  # an unknown secret is never let in
    assert elapsed < 10  # each call gives up after the short timeout: no hang
    assert "llmops_state_store_errors_total" in metrics
    assert 'op="keys.lookup"' in metrics


def test_a_redis_that_stops_answering_times_out_then_serves_right_answers_again(
        tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Redis hangs with its connections open (no refusal to see): each call gives up after its timeout and
    the policy decides. Once it answers again, every answer belongs to its own command: a command cut off
    by the timeout leaves no late reply on a connection another command then reads."""
    opened, closed, secret = open_and_closed(tmp_path, redis_server, capsys, rpm=1000)
    with live_server(opened) as fail_open, live_server(closed) as fail_closed:
        assert chat(fail_open, secret).status_code == 200
        assert chat(fail_closed, secret).status_code == 200
        redis_server.pause()
        try:
            with ThreadPoolExecutor(8) as pool:  # several calls cut off at once, on several connections
                hung = list(pool.map(lambda i: chat(fail_open if i % 2 else fail_closed, secret), range(8)))
        finally:
            redis_server.resume()
        assert {r.status_code for r in hung[1::2]} == {200}  # open: served, limits skipped
        assert {r.json()["error"]["code"] for r in hung[0::2]} == {"store_unavailable"}
        for base in (fail_open, fail_closed):  # Redis is back: new connections, every answer its own
            assert eventually(lambda b=base: chat(b, secret).status_code == 200)
            errors = store_errors(base)
            answers = [chat(base, secret) for _ in range(6)]
            assert [r.status_code for r in answers] == [200] * 6
            assert {r.headers["x-ratelimit-limit"] for r in answers} == {"1000"}
            assert store_errors(base) == errors  # no reply read by the wrong command, nothing failed open


def store_errors(base: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{base}/metrics").text.splitlines()
               if line.startswith("llmops_state_store_errors_total{"))


def test_concurrent_requests_per_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slow = [{"name": "fake", "engine": "fake", "options": {"token_delay_s": 0.2}}]
    cfg = write_config(tmp_path / "conc.yaml", slow, state={"backend": "sqlite"})
    secret = create_key(cfg, capsys, "--max-concurrent", "1")["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": "fake", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "a b c d"}]}
    with live_server(cfg) as base, httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as first:
            lines = first.iter_lines()
            next(lines)  # the first request is streaming
            second = client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
            assert second.status_code == 429
            assert "in flight" in second.json()["error"]["message"]
            list(lines)
        # the place is given back right after the stream ends (in a task of its own)
        assert eventually(lambda: client.post(f"{base}/v1/chat/completions", json=body,
                                              headers=headers).status_code == 200)


def test_a_dead_replicas_reservation_expires(redis_server: RedisServer) -> None:
    """A replica that dies holds its reservations only until their TTL; a settled one is given back at once."""
    async def run() -> None:
        state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
        budgets = state.budgets
        assert budgets is not None
        held = await budgets.reserve("k", 0, 1.0, 1.0, "dead-replica", 0.5)
        assert held is not None
        assert held.made
        refused = await budgets.reserve("k", 0, 1.0, 0.1, "other", 60)
        assert refused is not None
        assert (refused.made, refused.reserved) == (False, 1.0)
        deadline = time.monotonic() + 10
        while not (later := await budgets.reserve("k", 0, 1.0, 0.1, "other", 60)) or not later.made:
            assert time.monotonic() < deadline, "the dead replica's reservation never expired"
            await asyncio.sleep(0.05)
        budgets.release("k", "other")
        await writes_of(state).written()
        after = await budgets.reserve("k", 0, 1.0, 0.1, "third", 60)
        assert after is not None
        assert after.reserved == 0.0
        await state.close()

    asyncio.run(run())
