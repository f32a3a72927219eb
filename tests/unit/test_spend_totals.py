"""Spend totals (pipeline/spend_totals.py): one query per due total however many requests find it due, no
request waits for a re-read once a total is known, and this process's spend during a re-read is kept."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmops.observability.metrics import Metrics
from llmops.pipeline.accounting import Accountant
from llmops.pipeline.spend_totals import SpendTotals
from llmops.settings import ModelConfig, SpendSettings, StateSettings
from llmops.stores import build_state
from llmops.stores.keys import KeyLimits, new_key


class Store:
    """A spend read the test answers by hand: `reads` counts the queries, `answer` lets the oldest finish."""

    def __init__(self) -> None:
        self.reads = 0
        self.pending: list[asyncio.Future[float | None]] = []

    async def read(self) -> float | None:
        self.reads += 1
        answer: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        return await answer

    async def answer(self, usd: float | BaseException | None) -> None:
        for _ in range(5):  # the read starts in a task: let it get there
            if self.pending:
                break
            await asyncio.sleep(0)
        done = self.pending.pop(0)
        if isinstance(usd, BaseException):
            done.set_exception(usd)
        else:
            done.set_result(usd)
        for _ in range(5):
            await asyncio.sleep(0)


async def test_a_first_read_is_one_query_that_every_request_waits_for() -> None:
    totals, store = SpendTotals("key", refresh_s=60), Store()
    waiting = [asyncio.ensure_future(totals.get("k", 0.0, store.read)) for _ in range(16)]
    await store.answer(2.5)
    assert await asyncio.gather(*waiting) == [2.5] * 16
    assert store.reads == 1


async def test_a_due_total_is_re_read_once_and_nobody_waits_for_it() -> None:
    totals, store = SpendTotals("key", refresh_s=0), Store()  # always due
    first = asyncio.ensure_future(totals.get("k", 0.0, store.read))
    await store.answer(1.0)
    assert await first == 1.0
    seen = [await totals.get("k", 0.0, store.read) for _ in range(16)]  # each returns before the re-read ends
    assert seen == [1.0] * 16
    for _ in range(5):  # the re-read runs in a task: let it start
        await asyncio.sleep(0)
    assert store.reads == 2  # the first read, and one re-read for all sixteen
    totals.add("k", 0.25)  # this process's spend while the re-read is in flight
    await store.answer(3.0)  # the store's total, read before that spend was written
    assert await totals.get("k", 0.0, store.read) == pytest.approx(3.25)


async def rereading(usd: float) -> tuple[SpendTotals, Store]:
    """Totals (always due) whose first read of key k gave `usd`, and a re-read of it now in flight."""
    totals, store = SpendTotals("key", refresh_s=0), Store()
    first = asyncio.ensure_future(totals.get("k", 0.0, store.read))
    await store.answer(usd)
    await first
    assert await totals.get("k", 0.0, store.read) == usd  # starts a re-read
    return totals, store


async def test_a_new_period_is_waited_for_and_a_failed_re_read_keeps_the_last_total(
        caplog: pytest.LogCaptureFixture) -> None:
    totals, store = await rereading(1.0)
    with caplog.at_level(logging.WARNING, logger="llmops.accounting"):
        await store.answer(OSError("database is locked"))
    assert "could not re-read the spend of key k (OSError: database is locked)" in caplog.text
    assert await totals.get("k", 0.0, store.read) == 1.0
    next_period = asyncio.ensure_future(totals.get("k", 86400.0, store.read))
    await store.answer(OSError("still locked"))  # the re-read the last call started
    await store.answer(0.5)
    assert await next_period == 0.5  # a new budget period has no last total: it waited for its own read


async def test_a_store_failing_open_keeps_the_last_total_and_never_reads_as_zero(
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis away with `on_error: open` answers no figure (None): the last total stands, with this process's
    spend added, instead of a $0 that gave every spent key its whole budget again once a second."""
    totals, store = await rereading(5.0)
    with caplog.at_level(logging.WARNING, logger="llmops.accounting"):
        await store.answer(None)
    assert "fails open" in caplog.text
    totals.add("k", 0.5)
    assert await totals.get("k", 0.0, store.read) == 5.5
    unknown = asyncio.ensure_future(totals.get("other", 0.0, store.read))
    await store.answer(None)  # the re-read of k
    await store.answer(None)  # other's first read: nothing known, failing open from 0
    assert await unknown == 0.0


async def test_no_first_total_means_the_error_goes_to_the_waiting_requests() -> None:
    totals, store = SpendTotals("key", refresh_s=60), Store()
    waiting = [asyncio.ensure_future(totals.get("k", 0.0, store.read)) for _ in range(3)]
    await store.answer(OSError("no store"))
    for request in waiting:
        with pytest.raises(OSError, match="no store"):
            await request


async def test_concurrent_requests_of_one_key_send_one_spend_query_per_refresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = build_state(StateSettings(backend="memory"))
    accountant = Accountant(state, SpendSettings(refresh_s=0), Metrics())  # every request finds it due
    key, _ = new_key("k", (), "interactive", KeyLimits(budget_usd=100.0, budget_period="month"))
    queries = 0
    key_spend = state.ledger.key_spend

    async def counted(key_id: str, since: float) -> float:
        nonlocal queries
        queries += 1
        return await key_spend(key_id, since)

    monkeypatch.setattr(state.ledger, "key_spend", counted)
    model = ModelConfig(name="m", engine="fake", pricing={"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 1.0})
    charges = await asyncio.gather(*(accountant.admit(key, model, 40, 0.01) for _ in range(16)))
    assert queries == 1  # the first total: one query, all sixteen waited for it
    charges += await asyncio.gather(*(accountant.admit(key, model, 40, 0.01) for _ in range(16)))
    assert queries <= 3  # re-reads run one at a time, whatever the number of requests finding them due
    for charge in charges:
        accountant.settle(charge, 10, 10)
    await state.close()


async def test_spend_during_overlapping_reads_of_two_periods_counts_in_both() -> None:
    totals, store = SpendTotals("key", refresh_s=0), Store()
    first = asyncio.ensure_future(totals.get("k", 0.0, store.read))
    await store.answer(1.0)
    await first
    assert await totals.get("k", 0.0, store.read) == 1.0  # a re-read of the old period starts
    next_period = asyncio.ensure_future(totals.get("k", 86400.0, store.read))  # and the new period's first
    for _ in range(5):
        await asyncio.sleep(0)
    totals.add("k", 0.5)  # spent while both reads are in flight
    await store.answer(1.0)  # the old period's re-read ends first
    await store.answer(0.0)
    assert await next_period == 0.5
