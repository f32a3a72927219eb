from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.api.usage import group
from llmops.app import create_app
from llmops.errors import QuotaExceeded, RateLimited, SpendLimitReached
from llmops.observability.metrics import Metrics
from llmops.pipeline.accounting import (
    TEMPLATE_TOKENS,
    TOKENS_PER_PART,
    Accountant,
    PromptBound,
    cost_usd,
    worst_case_text_usd,
)
from llmops.pipeline.budget import period_bounds
from llmops.settings import ModelConfig, SpendSettings, StateSettings, load_settings
from llmops.stores import build_state
from llmops.stores.counters import MemoryCounters
from llmops.stores.keys import KeyLimits, new_key
from llmops.stores.ledger import SpendRow
from tests.helpers import write_config

MODEL = ModelConfig(name="m", engine="fake", pricing={"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 2.0,
                                                        "image_usd": 0.5, "gpu_usd_per_hour": 3.6})


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_budget_periods_are_utc_calendar_periods() -> None:
    now = ts("2026-11-27T15:30:00")  # a Friday
    assert period_bounds("day", now) == (ts("2026-11-27T00:00:00"), ts("2026-11-28T00:00:00"))
    assert period_bounds("week", now) == (ts("2026-11-23T00:00:00"), ts("2026-11-30T00:00:00"))
    assert period_bounds("month", now) == (ts("2026-11-01T00:00:00"), ts("2026-12-01T00:00:00"))
    assert period_bounds("month", ts("2026-12-31T23:00:00"))[1] == ts("2027-01-01T00:00:00")
    assert period_bounds("total", now) == (0.0, None)


def test_cost_from_the_price_table() -> None:
    assert cost_usd(MODEL, 1000, 500, 0, 0.0) == pytest.approx(2.0)
    assert cost_usd(MODEL, 0, 0, 2, 10.0) == pytest.approx(1.0 + 10 * 3.6 / 3600)


def test_report_groups_sum_over_the_other_dimensions() -> None:
    rows = [SpendRow("2026-11-26", "k1", "a", 1, 10, 5, 0, 0.5), SpendRow("2026-11-27", "k1", "b", 2, 20, 5, 0, 1.0),
            SpendRow("2026-11-27", "k2", "a", 1, 1, 1, 1, 0.25)]
    by_key = group(rows, ("key",))
    assert by_key == [
        {"key_id": "k1", "requests": 3, "prompt_tokens": 30, "completion_tokens": 10, "images": 0, "cost_usd": 1.5},
        {"key_id": "k2", "requests": 1, "prompt_tokens": 1, "completion_tokens": 1, "images": 1, "cost_usd": 0.25}]
    assert [r["model"] for r in group(rows, ("model",))] == ["a", "b"]


def test_tokens_per_minute_reserve_what_requests_in_flight_may_generate() -> None:
    """Concurrent requests each passed a tokens/min check that counted only their prompts, then their
    completions overran the limit: the most a request may generate is counted up front, and given back
    when it settles with less."""
    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        accountant = Accountant(state, SpendSettings(), Metrics())
        key, _ = new_key("k", (), "interactive", KeyLimits(tpm=100))
        first = await accountant.admit(key, MODEL, prompt_chars=80, max_completion_tokens=50)  # 20 + 50
        assert (first.estimated_prompt, first.counted_tokens) == (20, 70)
        with pytest.raises(RateLimited, match="up to 50 completion tokens"):  # 70 + 70 would pass 100
            await accountant.admit(key, MODEL, prompt_chars=80, max_completion_tokens=50)
        accountant.settle(first, prompt_tokens=18, completion_tokens=2)  # used 20 of the 70: 50 given back
        second = await accountant.admit(key, MODEL, prompt_chars=80, max_completion_tokens=50)
        accountant.settle(second, prompt_tokens=20, completion_tokens=50)
        await state.close()

    asyncio.run(run())


def test_a_reserve_given_back_after_the_minute_turned_leaves_the_new_minute_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request reserved near a minute's end and settled in the next: its give-back went into the new
    window (a large negative count there) while the old one kept the whole reserve, which the sliding
    minute only fades out, so the key then passed its limit by half (seen: 1,629 tokens in 56 s on 1,000)."""
    clock = [60.0 * 1000 + 54]  # second 54 of a minute
    monkeypatch.setattr("llmops.pipeline.accounting.time.time", lambda: clock[0])

    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        state.counters = MemoryCounters(clock=lambda: clock[0])
        accountant = Accountant(state, SpendSettings(), Metrics())
        key, _ = new_key("k", (), "interactive", KeyLimits(tpm=1000))
        early = await accountant.admit(key, MODEL, prompt_chars=8, max_completion_tokens=990)  # 2 + 990
        clock[0] += 9  # second 3 of the next minute
        accountant.settle(early, prompt_tokens=3, completion_tokens=10)
        clock[0] += 47  # second 50: the old minute still weighs 1/6 of what it holds
        admitted = 0
        for _ in range(6):
            try:
                charge = await accountant.admit(key, MODEL, prompt_chars=16, max_completion_tokens=400)
            except RateLimited:
                break
            accountant.settle(charge, prompt_tokens=4, completion_tokens=400)
            admitted += 1
        assert 13 + 404 * admitted <= 1000, admitted  # what the last 56 seconds used stays within the limit
        await state.close()

    asyncio.run(run())


def test_a_completion_reserve_never_refuses_a_request_that_fits_alone() -> None:
    """max_tokens beyond the limit reserves only what the limit leaves beside the prompt: a request the
    limit admits on an empty minute is not refused for asking a large max_tokens."""
    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        accountant = Accountant(state, SpendSettings(), Metrics())
        key, _ = new_key("k", (), "interactive", KeyLimits(tpm=100))
        charge = await accountant.admit(key, MODEL, prompt_chars=80, max_completion_tokens=100_000)
        assert charge.counted_tokens == 100
        accountant.settle(charge, prompt_tokens=20, completion_tokens=5)
        await state.close()

    asyncio.run(run())


def test_accountant_budget_tokens_and_breaker() -> None:
    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        accountant = Accountant(state, SpendSettings(max_usd_per_hour=10.0), Metrics())
        key, _ = new_key("k", (), "interactive", KeyLimits(tpm=100, budget_usd=3.0, budget_period="day"))
        charge = await accountant.admit(key, MODEL, prompt_chars=200)  # ~50 tokens counted up front
        assert charge.estimated_prompt == 50
        with pytest.raises(RateLimited, match="tokens/min"):
            await accountant.admit(key, MODEL, prompt_chars=240)  # 60 more would pass 100
        accountant.settle(charge, prompt_tokens=40, completion_tokens=1000)  # $0.04 + $2
        with pytest.raises(RateLimited):  # 1040 tokens this minute now
            await accountant.admit(key, MODEL, prompt_chars=4)
        unlimited, _ = new_key("u", (), "interactive", KeyLimits(budget_usd=3.0, budget_period="day"))
        accountant.settle(await accountant.admit(unlimited, MODEL), completion_tokens=1500)  # $3: spent
        with pytest.raises(QuotaExceeded) as info:
            await accountant.admit(unlimited, MODEL)
        assert info.value.retry_after is not None
        assert 0 < info.value.retry_after <= 86400
        accountant.settle(await accountant.admit(None, MODEL), completion_tokens=3000)  # $6: $11 this hour
        with pytest.raises(SpendLimitReached):
            await accountant.admit(None, MODEL)
        rows = await state.ledger.report("2000-01-01", "2100-01-01")
        assert sum(r.cost_usd for r in rows) == pytest.approx(11.04)
        await state.close()

    asyncio.run(run())


AUTH_SETTINGS = {"admin_key": "admin-secret-for-the-tests", "key_refresh_s": 0}
ADMIN_AUTH = {"Authorization": "Bearer admin-secret-for-the-tests"}
HELLO = [{"role": "user", "content": "hello there"}]


def _budget_burst(cfg: Path, budget: dict[str, Any], body: dict[str, Any], at_once: int,
                  worst_model: str) -> tuple[list[Any], float, float]:
    """`at_once` requests sent together with a key holding `budget`: the answers, the key's spend once every
    reservation is settled, and one request's worst case at `worst_model`'s prices."""
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        made = c.post("/admin/keys", json={"name": "k", **budget}, headers=ADMIN_AUTH).json()
        auth = {"Authorization": f"Bearer {made['secret']}"}
        services = c.app.state.services  # type: ignore[attr-defined]
        prompt = len("hello there") + TOKENS_PER_PART + TEMPLATE_TOKENS  # what admission reserves for HELLO
        worst = worst_case_text_usd(services.pool.config(worst_model, "chat"), prompt, body["max_tokens"], 1)
        with ThreadPoolExecutor(at_once) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/chat/completions", json=body, headers=auth),
                                    range(at_once)))
        deadline = time.monotonic() + 30
        while services.accountant.reserved(made["id"]) > 0:  # settling runs just after each response
            assert time.monotonic() < deadline
            time.sleep(0.01)
        spent = c.get("/v1/usage", headers=auth).json()["budget"]["spent_usd"]
    return answers, spent, worst


def test_concurrent_requests_cannot_overspend_a_budget(tmp_path: Path) -> None:
    """20 requests at once on a $0.005 budget: each reserves its worst case when admitted, so the key spends
    at most the budget plus one request's worst case (without reservations all 20 were admitted)."""
    priced = {"name": "fake", "engine": "fake", "options": {"token_delay_s": 0.02},
              "pricing": {"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 1.0}}
    cfg = write_config(tmp_path / "c.yaml", [priced], auth=AUTH_SETTINGS,
                       state={"backend": "memory"}, spend={"refresh_s": 0})
    answers, spent, worst = _budget_burst(cfg, {"budget_usd": 0.005, "budget_period": "day"},
                                          {"model": "fake", "max_tokens": 2, "messages": HELLO}, 20, "fake")
    codes = [a.status_code for a in answers]
    assert 429 in codes
    assert 200 in codes
    assert spent <= 0.005 + worst


def test_a_route_reserves_for_its_dearest_fallback(tmp_path: Path) -> None:
    """A route whose first model is free and cannot take the load falls back to a priced one: each request
    reserves the fallback's worst case, so 16 at once on a $0.50 budget spend at most the budget plus one
    request's worst case at the fallback's prices (reserving at the free model's prices admitted them all)."""
    free = {"name": "free", "engine": "fake", "options": {"capacity": 1, "token_delay_s": 0.05},
            "limits": {"max_queued": 0}}
    priced = {"name": "priced", "engine": "fake", "options": {"token_delay_s": 0.02, "capacity": 32},
              "pricing": {"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 10.0}}
    cfg = write_config(tmp_path / "c.yaml", [free, priced],
                       routes=[{"name": "auto", "variants": [{"model": "free"}], "fallbacks": ["priced"]}],
                       auth=AUTH_SETTINGS, state={"backend": "memory"},
                       spend={"refresh_s": 0})
    answers, spent, worst = _budget_burst(cfg, {"budget_usd": 0.5, "budget_period": "total"},
                                          {"model": "auto", "max_tokens": 4, "messages": HELLO}, 16, "priced")
    assert 429 in [a.status_code for a in answers]
    assert any(a.headers.get("x-llmops-variant") == "priced" for a in answers)
    assert spent <= 0.5 + worst


def _real_costs(answers: list[Any], prompt_usd_per_1k: float, completion_usd_per_1k: float) -> list[float]:
    """What each answered request cost, from the usage it reported."""
    return [(a.json()["usage"]["prompt_tokens"] * prompt_usd_per_1k +
             a.json()["usage"]["completion_tokens"] * completion_usd_per_1k) / 1000
            for a in answers if a.status_code == 200]


EMPTY_TURNS = [{"role": "assistant", "content": ""}] * 300


@pytest.mark.parametrize("text", ["价格上涨了百分之五" * 20, "🙂🚀" * 90, "Zalgo" + "\u0301\u0302\u0303" * 100,
                                  "aGVsbG8gd29y/+ZA==" * 20, ""], ids=["chinese", "emoji", "marks", "base64", "turns"])
def test_dense_prompts_at_once_cannot_overspend_a_budget(tmp_path: Path, text: str) -> None:
    """20 requests at once of text that tokenizes far denser than four characters a token, on an engine that
    makes a token of every byte (the densest a byte-level tokenizer can be): the key spends less than the
    budget plus one request's real cost. Reserving the estimate (a quarter of the characters) let all 20 in,
    spending two to six times the budget."""
    dense = {"name": "fake", "engine": "fake", "options": {"token_delay_s": 0.02, "tokenizer": "bytes",
                                                           "context_length": 8192},
             "pricing": {"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 1.0}}
    cfg = write_config(tmp_path / "c.yaml", [dense], auth=AUTH_SETTINGS, state={"backend": "memory"},
                       spend={"refresh_s": 0})
    messages = [{"role": "user", "content": text}] if text else [*EMPTY_TURNS, {"role": "user", "content": "hi"}]
    body = {"model": "fake", "max_tokens": 2, "messages": messages}  # turns: 300 empty ones, framing alone
    answers, spent, _ = _budget_burst(cfg, {"budget_usd": 5.0, "budget_period": "day"}, body, 20, "fake")
    costs = _real_costs(answers, 1.0, 1.0)
    assert costs
    assert 429 in [a.status_code for a in answers]
    assert spent < 5.0 + max(costs)


def test_a_template_longer_than_the_margin_is_reserved_once_seen(tmp_path: Path) -> None:
    """A template whose own text (a default system prompt of 300 bytes, at a token a byte) is longer than
    TEMPLATE_TOKENS: the first request's prompt comes out over its bound, the model's margin grows to what it
    showed, and then 20 requests at once spend less than the budget plus one request's real cost (with the
    margin left as it was, all 20 were let in)."""
    dense = {"name": "fake", "engine": "fake", "options": {"token_delay_s": 0.02, "tokenizer": "bytes",
                                                           "template_text": "You are a helpful assistant. " * 10},
             "pricing": {"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 1.0}}
    cfg = write_config(tmp_path / "c.yaml", [dense], auth=AUTH_SETTINGS, state={"backend": "memory"},
                       spend={"refresh_s": 0})
    body = {"model": "fake", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        made = c.post("/admin/keys", json={"name": "k", "budget_usd": 5.0, "budget_period": "day"},
                      headers=ADMIN_AUTH).json()
        auth = {"Authorization": f"Bearer {made['secret']}"}
        first = c.post("/v1/chat/completions", json=body, headers=auth)
        assert first.status_code == 200
        accountant = c.app.state.services.accountant  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while accountant.reserved(made["id"]) > 0:  # the margin is learned as the request settles
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert accountant.prompt_margin("fake", 1) > TEMPLATE_TOKENS
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/chat/completions", json=body, headers=auth), range(20)))
        while accountant.reserved(made["id"]) > 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        spent = c.get("/v1/usage", headers=auth).json()["budget"]["spent_usd"]
    assert 429 in [a.status_code for a in answers]
    assert spent < 5.0 + max(_real_costs([first, *answers], 1.0, 1.0))


def test_the_template_margin_is_a_line_in_the_parts_that_prompts_showed() -> None:
    """A prompt of many parts over its bound raises the margin per part (each turn's framing), one of few
    parts the fixed margin (a template's own text): either to what the engine counted, no more, so a client
    sending many parts does not make every prompt of the model reserve as if it had as many."""
    async def run() -> None:
        state = build_state(StateSettings(backend="memory"))
        accountant = Accountant(state, SpendSettings(), Metrics())
        assert accountant.prompt_margin("m", 300) == TEMPLATE_TOKENS
        many = await accountant.admit(None, MODEL)
        many.prompt_bound = PromptBound(3000, 300)
        accountant.settle(many, prompt_tokens=3000 + TEMPLATE_TOKENS + 1200)  # 4 more tokens a part
        assert accountant.prompt_margin("m", 1) == TEMPLATE_TOKENS + 4
        assert accountant.prompt_margin("m", 300) == TEMPLATE_TOKENS + 1200
        few = await accountant.admit(None, MODEL)
        few.prompt_bound = PromptBound(50, 1)
        accountant.settle(few, prompt_tokens=50 + 500)  # a long default system prompt
        assert accountant.prompt_margin("m", 1) == 500
        assert accountant.prompt_margin("m", 300) == 500 - 4 + 4 * 300
        within = await accountant.admit(None, MODEL)
        within.prompt_bound = PromptBound(50, 2)
        accountant.settle(within, prompt_tokens=60)  # under its bound: nothing learned
        assert accountant.prompt_margin("m", 1) == 500
        await state.close()

    asyncio.run(run())


def test_token_ids_are_in_the_embeddings_bound(tmp_path: Path) -> None:
    """Ids sent as ids count one for one in the bound: 2,000 of them once raised the model's margin for every
    key by 2,000 tokens (they were counted by the engine and not by the bound)."""
    models = [{"name": "emb", "kind": "embeddings", "engine": "fake-embeddings"}]
    cfg = write_config(tmp_path / "c.yaml", models, auth=AUTH_SETTINGS, state={"backend": "memory"})
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        made = c.post("/admin/keys", json={"name": "k", "budget_usd": 5.0, "budget_period": "day"},
                      headers=ADMIN_AUTH).json()
        answer = c.post("/v1/embeddings", json={"model": "emb", "input": [[1] * 2000]},
                        headers={"Authorization": f"Bearer {made['secret']}"})
        assert answer.status_code == 200
        assert answer.json()["usage"]["prompt_tokens"] >= 2000
        accountant = c.app.state.services.accountant  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while accountant.reserved(made["id"]) > 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert accountant.prompt_margin("emb", 1) == TEMPLATE_TOKENS
