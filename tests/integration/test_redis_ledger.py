"""The Redis spend ledger on a real redis-server: entries that settle together are written as one MULTI with
their sums (group commit, as SQLite), the sums stay exact, `record` returns only once its entry is in Redis
(budget reservations are released after it), and a batch Redis refuses is said to be lost, not raised."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

from llmops.settings import StateSettings
from llmops.stores import build_state
from llmops.stores.ledger import SpendEntry, day_of
from tests.helpers import RedisServer, writes_of


def _execs(url: str) -> int:
    """MULTI/EXEC transactions Redis has run since it started."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


async def test_entries_settling_together_are_one_transaction_with_exact_sums(redis_server: RedisServer) -> None:
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    at = 1_800_000_000.0  # a fixed time, inside one UTC day and one minute
    entries = [SpendEntry(f"k{i % 2}", f"m{i % 3}", 0.001 * (i + 1), prompt_tokens=i, completion_tokens=2,
                          images=i % 2, at=at) for i in range(200)]
    before = _execs(redis_server.url)
    try:
        await asyncio.gather(*(state.ledger.record(e) for e in entries))
        assert _execs(redis_server.url) - before == 1  # every entry was queued before the writer first ran
        rows = await state.ledger.report(day_of(at), day_of(at))
    finally:
        await state.close()
    assert sum(r.requests for r in rows) == 200
    assert len(rows) == 6  # two keys x three models
    for row in rows:
        mine = [e for e in entries if (e.key_id, e.model) == (row.key_id, row.model)]
        assert row.requests == len(mine)
        assert row.prompt_tokens == sum(e.prompt_tokens for e in mine)
        assert row.completion_tokens == 2 * len(mine)
        assert row.images == sum(e.images for e in mine)
        assert row.cost_usd == pytest.approx(sum(e.cost_usd for e in mine))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert float(client.hget("llmops:keyspend:total", "k0") or 0) == pytest.approx(
        sum(e.cost_usd for e in entries if e.key_id == "k0"))
    assert float(client.get(f"llmops:spendmin:{int(at // 60)}") or 0) == pytest.approx(sum(e.cost_usd for e in entries))
    assert 0 < client.ttl(f"llmops:spendmin:{int(at // 60)}") <= 7200


async def test_record_returns_once_the_entry_is_in_redis_and_reads_see_it(redis_server: RedisServer) -> None:
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for i in range(3):
            await state.ledger.record(SpendEntry("key", "m", 0.5))
            assert float(client.hget("llmops:keyspend:total", "key") or 0) == pytest.approx(0.5 * (i + 1))
        # gather runs the record up to its queueing first, then the read, which must wait for that entry
        _, spent = await asyncio.gather(state.ledger.record(SpendEntry("key", "m", 0.25)),
                                        state.ledger.key_spend("key", 0))
        assert spent == pytest.approx(1.75)
        assert await state.ledger.hour_spend() == pytest.approx(1.75)
    finally:
        await state.close()


async def test_close_writes_what_is_still_queued(redis_server: RedisServer) -> None:
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    # gather runs the five records up to their queueing, then close, before any batch is written
    await asyncio.gather(*(state.ledger.record(SpendEntry("late", "m", 0.1)) for _ in range(5)), state.close())
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert float(client.hget("llmops:keyspend:total", "late") or 0) == pytest.approx(0.5)


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_a_batch_redis_cannot_take_is_said_to_be_lost_and_never_raised(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture, on_error: str) -> None:
    failures: list[str] = []
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url, redis_timeout_s=0.2,
                                      on_error=on_error), on_error=failures.append)
    redis_server.stop()
    try:
        with caplog.at_level(logging.ERROR, logger="llmops.stores"):
            await asyncio.gather(*(state.ledger.record(SpendEntry("gone", "m", 0.01)) for _ in range(3)))
    finally:
        await state.close()
    assert "spend.record" in failures
    lost = [r.getMessage() for r in caplog.records if "they are lost" in r.getMessage()]
    assert lost == ["could not write 3 spend entries ($0.030000 in all, keys ['gone']) to Redis; they are lost"]


async def test_places_reservations_and_token_counts_given_back_together_take_effect(
        redis_server: RedisServer) -> None:
    """The writes no request waits on (RedisWrites) go out together and in order, and each takes effect."""
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    budgets = state.budgets
    assert budgets is not None
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        holders = [f"h{i}" for i in range(8)]
        for h in holders:
            assert await state.counters.acquire("key", 8, h, 60)
            made = await budgets.reserve("key", 0, 100.0, 1.0, h, 60)
            assert made is not None
            assert made.made
        assert not await state.counters.acquire("key", 8, "ninth", 60)
        for h in holders:  # queued, nobody waits: they go out with the next batch of writes
            state.counters.release("key", h)
            budgets.release("key", h)
            state.counters.add_tokens("key", 10)
        await writes_of(state).written()
        assert client.zcard("llmops:inflight:key") == 0
        assert client.hlen("llmops:reserved:key") == 0
        counted = [float(client.get(k) or 0) for k in client.scan_iter("llmops:tpm:key:*")]
        assert sum(counted) == 80  # in this minute's window (or split across two, at a minute's turn)
    finally:
        await state.close()


async def test_writes_redis_cannot_take_are_counted_and_never_raised(redis_server: RedisServer) -> None:
    failures: list[str] = []
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url, redis_timeout_s=0.2,
                                      on_error="closed"), on_error=failures.append)
    assert state.budgets is not None
    redis_server.stop()
    try:
        state.counters.release("key", "h")
        state.budgets.release("key", "h")
        state.counters.add_tokens("key", 5)
        await writes_of(state).written()
    finally:
        await state.close()
    assert "writes" in failures


async def test_requests_per_minute_and_an_in_flight_place_are_one_step(redis_server: RedisServer) -> None:
    """`hit_and_acquire`: a place only for a request the rate allows, and none once all are taken."""
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        counters = state.counters
        first = await counters.hit_and_acquire("key:k", 2, "k", 1, "a", 60)
        assert (first[0].allowed, first[1]) == (True, True)
        full = await counters.hit_and_acquire("key:k", 2, "k", 1, "b", 60)  # the rate allows; no place left
        assert (full[0].allowed, full[1]) == (True, False)
        counters.release("k", "a")
        await writes_of(state).written()
        limited = await counters.hit_and_acquire("key:k", 2, "k", 1, "c", 60)  # two per minute already used
        assert (limited[0].allowed, limited[1]) == (False, False)
        assert client.zcard("llmops:inflight:k") == 0  # the refused request took no place
        assert (await counters.hit_requests("key:k", 2)).allowed is False  # the requests/min script alone
        assert await counters.acquire("solo", 1, "x", 60)  # the in-flight script alone
        assert not await counters.acquire("solo", 1, "y", 60)
    finally:
        await state.close()


async def test_a_budget_reservation_and_tokens_per_minute_are_one_step(redis_server: RedisServer) -> None:
    """A refusal by either holds nothing: no reservation when tokens/min refuses, no tokens counted when the
    budget does."""
    from llmops.stores.ledger import TokenHit

    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    budgets = state.budgets
    assert budgets is not None
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def tokens_counted() -> float:
        return sum(float(client.get(k) or 0) for k in client.scan_iter("llmops:tpm:k:*"))
    try:
        made = await budgets.reserve("k", 0, 1.0, 0.4, "a", 60, TokenHit(100, 60))
        assert made is not None
        assert made.made
        assert made.tokens is not None
        assert made.tokens.allowed
        assert (client.hlen("llmops:reserved:k"), tokens_counted()) == (1, 60)
        too_many = await budgets.reserve("k", 0, 1.0, 0.4, "b", 60, TokenHit(100, 60))  # 120 tokens > 100
        assert too_many is not None
        assert not too_many.made
        assert too_many.tokens is not None
        assert not too_many.tokens.allowed
        assert (client.hlen("llmops:reserved:k"), tokens_counted()) == (1, 60)  # nothing held for it
        await budgets.reserve("k", 0, 1.0, 0.6, "c", 60)  # the budget is now fully reserved
        over_budget = await budgets.reserve("k", 0, 1.0, 0.1, "d", 60, TokenHit(100, 10))
        assert over_budget is not None
        assert not over_budget.made
        assert over_budget.tokens is None  # refused by the budget: tokens/min not looked at
        assert tokens_counted() == 60
    finally:
        await state.close()


async def test_a_settled_requests_reservation_is_given_back_only_once_its_spend_is_in_redis(
        redis_server: RedisServer) -> None:
    """Settling does not wait, but another replica must always see the request's reservation or its spend:
    the reservation is given back only after the batch holding the spend is written."""
    from llmops.observability.metrics import Metrics
    from llmops.pipeline.accounting import Accountant
    from llmops.settings import ModelConfig, SpendSettings
    from llmops.stores.keys import KeyLimits, new_key

    model = ModelConfig(name="m", engine="fake", pricing={"completion_usd_per_1k": 1000.0})
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url))
    accountant = Accountant(state, SpendSettings(), Metrics())
    key, _ = new_key("k", (), "interactive", KeyLimits(budget_usd=100.0, budget_period="total"))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    seen: list[tuple[int, float]] = []  # (reservations held, spend written), polled as the loop runs

    def look() -> tuple[int, float]:
        seen.append((client.hlen(f"llmops:reserved:{key.id}"),
                     float(client.hget("llmops:keyspend:total", key.id) or 0)))
        return seen[-1]
    commit = state.ledger._commit  # type: ignore[attr-defined]
    write = commit._write

    async def slow_write(batch: list[SpendEntry]) -> None:  # a slow link: the window where order matters
        await asyncio.sleep(0.2)
        await write(batch)
    commit._write = slow_write
    try:
        charges = [await accountant.admit(key, model, worst_case_usd=2.0) for _ in range(5)]
        assert look() == (5, 0.0)
        for charge in charges:
            accountant.settle(charge, completion_tokens=1)  # $1 each
        deadline = asyncio.get_running_loop().time() + 10
        while look() != (0, pytest.approx(5.0)):
            assert asyncio.get_running_loop().time() < deadline, seen[-1]
            await asyncio.sleep(0)
    finally:
        await state.close()
    assert all(held == 5 or spend == pytest.approx(5.0) for held, spend in seen), seen


async def test_a_spent_budget_stays_spent_when_redis_fails_open(redis_server: RedisServer) -> None:
    """While Redis answers, the budget is checked there and the process reads no spend of its own; when
    Redis goes away (failing open), the process goes by the spend Redis last told it: a key whose budget was
    spent stays refused (it started from $0 before, and got a whole budget back)."""
    from llmops.errors import QuotaExceeded
    from llmops.observability.metrics import Metrics
    from llmops.pipeline.accounting import Accountant
    from llmops.settings import ModelConfig, SpendSettings
    from llmops.stores.keys import KeyLimits, new_key

    model = ModelConfig(name="m", engine="fake", pricing={"completion_usd_per_1k": 1000.0})
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url, redis_timeout_s=0.2,
                                      on_error="open"))
    accountant = Accountant(state, SpendSettings(refresh_s=0), Metrics())
    key, _ = new_key("k", (), "interactive", KeyLimits(budget_usd=2.5, budget_period="total"))
    try:
        for _ in range(3):  # $1 each: the third passes the budget (reserved at $0.5, it cost $1)
            charge = await accountant.admit(key, model, worst_case_usd=0.5)
            accountant.settle(charge, completion_tokens=1)
            await state.ledger._commit.written()  # type: ignore[attr-defined]
        with pytest.raises(QuotaExceeded):
            await accountant.admit(key, model, worst_case_usd=0.5)  # refused in Redis, which read $3
        redis_server.stop()
        with pytest.raises(QuotaExceeded):
            await accountant.admit(key, model, worst_case_usd=0.5)
    finally:
        await state.close()


def test_redis_replies_are_parsed_by_hiredis() -> None:
    """The `redis` extra installs hiredis, and redis-py then parses every reply in C (in Python, a keyed
    request on Redis cost 8 % more of the server's CPU)."""
    from redis.asyncio.connection import DefaultParser

    assert DefaultParser.__name__ == "_AsyncHiredisParser"


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_spend_reads_redis_cannot_answer_give_no_figure_never_zero(
        redis_server: RedisServer, on_error: str) -> None:
    """Failing open, a spend read answers None (pipeline/spend_totals.py then keeps the last total); failing
    closed, it raises. Never $0, which reset a spent budget while Redis was away."""
    from llmops.errors import StoreUnavailable
    state = build_state(StateSettings(backend="redis", redis_url=redis_server.url, redis_timeout_s=0.2,
                                      on_error=on_error))
    try:
        await state.ledger.record(SpendEntry("spent", "m", 2.0))
        assert await state.ledger.key_spend("spent", 0) == pytest.approx(2.0)
        redis_server.stop()
        if on_error == "open":
            assert await state.ledger.key_spend("spent", 0) is None
            assert await state.ledger.hour_spend() is None
        else:
            with pytest.raises(StoreUnavailable):
                await state.ledger.key_spend("spent", 0)
    finally:
        await state.close()
