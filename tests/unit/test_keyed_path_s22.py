"""The keyed request path's cheaper steps (session 22) decide as before: in-flight places expire and are
swept only when one may have expired, old token windows are dropped when a window begins, the
rate-limit headers are the bytes the dicts made, budget periods come from a per-day cache, the budget
gauge is scraped as set, and a known spend total is answered without a coroutine."""

from __future__ import annotations

import asyncio

from llmops.stores.counters import MemoryCounters, window_index


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_places_free_themselves_when_their_holders_expire_in_any_order() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)

    async def run() -> None:
        assert await counters.acquire("k", 2, "long", 100.0)
        assert await counters.acquire("k", 2, "short", 10.0)  # expires before the one taken first
        assert not await counters.acquire("k", 2, "third", 10.0)
        clock.now += 11.0  # "short" has expired, "long" has not
        assert await counters.acquire("k", 2, "third", 10.0)
        assert not await counters.acquire("k", 2, "fourth", 10.0)
        counters.release("k", "third")
        assert await counters.acquire("k", 2, "fourth", 10.0)
        clock.now += 200.0  # every one expired
        assert await counters.acquire("k", 2, "a", 10.0)
        assert await counters.acquire("k", 2, "b", 10.0)
        assert not await counters.acquire("k", 2, "c", 10.0)

    asyncio.run(run())


def test_hit_and_acquire_takes_no_place_when_the_rate_refuses() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)

    async def run() -> None:
        first, placed = await counters.hit_and_acquire("key:k", 1, "k", 5, "a", 60.0)
        assert first.allowed
        assert placed
        second, placed = await counters.hit_and_acquire("key:k", 1, "k", 5, "b", 60.0)
        assert not second.allowed
        assert not placed
        assert await counters.acquire("k", 2, "c", 60.0)  # "b" took none: one held, one free
        assert not await counters.acquire("k", 2, "d", 60.0)

    asyncio.run(run())


def test_token_windows_older_than_the_previous_one_are_dropped_when_a_window_begins() -> None:
    clock = Clock(60.0 * 1000)
    counters = MemoryCounters(clock)

    async def run() -> None:
        assert (await counters.hit_tokens("k", 100, 60)).allowed
        clock.now += 60.0
        assert not (await counters.hit_tokens("k", 100, 60)).allowed  # the previous window's 60 still weighs
        clock.now += 60.0
        assert (await counters.hit_tokens("k", 100, 60)).allowed
        counters.add_tokens("k", 5)
        windows = counters._windows["k"]
        assert set(windows) == {window_index(clock.now)[0]}  # the first window is gone
        assert windows[window_index(clock.now)[0]] == 65

    asyncio.run(run())


def test_the_limit_headers_as_bytes_and_as_text() -> None:
    from llmops.middleware import rate_limit as rl
    from llmops.stores.counters import Decision

    full = Decision(True, 5, 0, 0.0, 61.25)
    assert rl._raw_requests(full) == [
        (b"x-ratelimit-limit-requests", b"5"), (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", b"1m1.25s"), (b"x-ratelimit-limit", b"5"), (b"x-ratelimit-remaining", b"0"),
        (b"x-ratelimit-reset", b"62")]
    assert rl._headers(full)["x-ratelimit-reset-requests"] == "1m1.25s"
    assert rl.limit_headers(Decision(True, 100, 99, 0.0, 0.6), "tokens") == {
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "99", "x-ratelimit-reset-tokens": "600ms"}
    unmeasured = Decision(True, 1, 1, 0.0, 1.0, measured=False)
    assert rl._raw_requests(unmeasured) == rl._raw_limit(unmeasured, "tokens") == []
    assert rl._headers(unmeasured) == rl.limit_headers(unmeasured, "tokens") == {}
    assert {b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens"} == \
        rl.TOKEN_HEADERS


def test_token_headers_replace_an_earlier_decisions() -> None:
    from llmops.middleware.rate_limit import TokenHeaders
    from llmops.stores.counters import Decision

    into = [(b"x-request-id", b"r")]
    told = TokenHeaders(into)
    told(Decision(True, 100, 40, 0.0, 60.0))
    told(Decision(True, 100, 30, 0.0, 60.0))
    assert [h for h in into if h[0] == b"x-ratelimit-remaining-tokens"] == [(b"x-ratelimit-remaining-tokens", b"30")]
    assert len(into) == 4
    told(Decision(True, 100, 30, 0.0, 60.0, measured=False))  # not measured: nothing to tell, the old ones go
    assert into == [(b"x-request-id", b"r")]


def test_budget_periods_from_the_day_cache_are_the_calendars() -> None:
    from datetime import UTC, datetime, timedelta

    from llmops.pipeline.budget import period_bounds

    def reference(period: str, now: float) -> tuple[float, float]:
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = {"day": day, "week": day - timedelta(days=day.weekday()), "month": day.replace(day=1)}[period]
        end = {"day": start + timedelta(days=1), "week": start + timedelta(days=7),
               "month": (start + timedelta(days=32)).replace(day=1)}[period]
        return start.timestamp(), end.timestamp()

    first = datetime(2026, 12, 28, tzinfo=UTC).timestamp()
    for hours in range(0, 24 * 70, 7):  # across a month's and a year's end, at several times of day
        for offset in (0.0, 0.5, 3599.999):
            now = first + hours * 3600 + offset
            for period in ("day", "week", "month"):
                assert period_bounds(period, now) == reference(period, now)  # type: ignore[arg-type]
    assert period_bounds("total", first) == (0.0, None)
    assert period_bounds("day", first - 0.001) == reference("day", first - 0.001)  # the last instant before


def test_the_budget_gauge_set_is_scraped_as_before() -> None:
    from llmops.observability.metrics import Metrics

    metrics = Metrics()
    metrics.budget_used.labels("key_a").set(0.25)
    metrics.budget_used.labels("key_a").set(0.5)
    metrics.budget_used.labels("key_b").set(1)
    assert metrics.registry.get_sample_value("llmops_budget_used_ratio", {"key": "key_a"}) == 0.5
    assert metrics.registry.get_sample_value("llmops_budget_used_ratio", {"key": "key_b"}) == 1.0


def test_a_known_spend_total_is_answered_without_waiting() -> None:
    from llmops.pipeline.spend_totals import SpendTotals

    reads: list[float] = []

    async def read() -> float:
        reads.append(1.0)
        return 2.0

    async def run() -> None:
        totals = SpendTotals("key", refresh_s=3600.0)
        assert totals.known("k", 0.0, read) is None  # none read yet: `get` waits for the read
        assert await totals.get("k", 0.0, read) == 2.0
        totals.add("k", 0.5)
        assert totals.known("k", 0.0, read) == 2.5
        assert totals.known("k", 86400.0, read) is None  # another period: read again
        assert reads == [1.0]

    asyncio.run(run())


def _duration_before(seconds: float) -> str:
    """rate_limit.duration as it was written before session 22 (the reference for the shorter one)."""
    import math

    ms = max(0, math.ceil(seconds * 1000 - 1e-3))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}" + (f".{rest % 1000:03d}".rstrip("0") if rest % 1000 else "") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def test_reset_durations_are_written_as_before() -> None:
    import random

    from llmops.middleware.rate_limit import duration

    rng = random.Random(22)
    samples = [-5.0, 0.0, 1e-7, 0.0009, 0.001, 0.017, 0.9999, 1.0, 1.5, 59.999, 60.0, 61.25, 119.9999, 3599.9991,
               3600.0, 3661.5, 86400.0, 90061.007]
    samples += [rng.uniform(0, 130) for _ in range(2000)] + [rng.uniform(0, 200_000) for _ in range(2000)]
    for seconds in samples:
        assert duration(seconds) == _duration_before(seconds), seconds


def test_window_index_is_floor_division_and_remainder() -> None:
    import random

    rng = random.Random(60)
    for now in [0.0, 59.999999, 60.0, 1_764_979_200.0, *(rng.uniform(1.7e9, 1.8e9) for _ in range(5000))]:
        assert window_index(now) == (int(now // 60.0), (now % 60.0) / 60.0)


def _gcra_before(now: float, tat: float | None, per_minute: int) -> tuple[object, float | None]:
    """counters.gcra as it was written before session 22 (with builtin max)."""
    from llmops.stores.counters import WINDOW_S, Decision

    interval = WINDOW_S / per_minute
    tat = max(tat if tat is not None else now, now)
    allow_at = tat - WINDOW_S + interval
    if now < allow_at:
        return Decision(False, per_minute, 0, allow_at - now, tat - now), None
    new_tat = tat + interval
    remaining = int((WINDOW_S - (new_tat - now)) / interval + 1e-3)
    return Decision(True, per_minute, max(0, remaining), 0.0, new_tat - now), new_tat


def _sliding_remaining_before(current: float, previous: float, elapsed: float, per_minute: int, count: int) -> int:
    """What counters.sliding said remained before session 22 (with builtin min and max)."""
    used = current + previous * (1.0 - elapsed)
    remaining = min(per_minute, max(0, int(per_minute - used)))
    return max(0, remaining - count) if used + count <= per_minute else remaining


def test_gcra_and_sliding_decide_as_with_builtin_max() -> None:
    import random

    from llmops.stores.counters import gcra, sliding

    rng = random.Random(14)
    for _ in range(20000):
        now = rng.uniform(1.7e9, 1.7e9 + 600)
        tat = rng.choice([None, now + rng.uniform(-120, 120), now])
        per_minute = rng.choice([1, 3, 60, 1000, 100_000_000])
        assert gcra(now, tat, per_minute) == _gcra_before(now, tat, per_minute)
        current, previous = rng.choice([0.0, rng.uniform(0, 2000)]), rng.choice([0.0, rng.uniform(0, 2000)])
        elapsed, count = rng.random(), rng.choice([0, 1, 10, 500, 5000])
        tokens = rng.choice([1, 100, 1000, 10_000])
        decision = sliding(current, previous, elapsed, tokens, count)
        assert decision.remaining == _sliding_remaining_before(current, previous, elapsed, tokens, count)
        assert decision.remaining >= 0
