from __future__ import annotations

import ipaddress

from llmops.middleware.rate_limit import client_ip
from llmops.stores.counters import gcra, sliding


def test_gcra_allows_the_minute_then_one_per_interval() -> None:
    now, tat = 1000.0, None
    decisions = []
    for _ in range(4):
        decision, new_tat = gcra(now, tat, 3)
        tat = new_tat if new_tat is not None else tat
        decisions.append(decision)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert 19.0 < decisions[3].retry_after_s <= 20.0  # one request every 20 s at 3/min
    assert gcra(now + 20.0, tat, 3)[0].allowed


def test_sliding_window_counts_tokens_and_says_when_they_fit() -> None:
    assert sliding(0, 0, 0.5, 100, 60).allowed
    refused = sliding(60, 0, 0.5, 100, 60)
    assert not refused.allowed
    assert 30.0 <= refused.retry_after_s <= 60.0  # the next window, then part of this one's share fades
    assert sliding(0, 60, 0.5, 100, 60).allowed  # half the previous window's 60 still counts: 30 + 60 <= 100
    fade = sliding(0, 100, 0.1, 100, 60)
    assert not fade.allowed
    assert abs(fade.retry_after_s - 0.5 * 60) < 1e-6  # 60 fits once the previous window is 60 % gone
    too_big = sliding(0, 0, 0.0, 100, 500)
    assert not too_big.allowed


def scope(peer: str, xff: str | None) -> dict[str, object]:
    headers = [(b"x-forwarded-for", xff.encode())] if xff else []
    return {"client": (peer, 5000), "headers": headers}


def test_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip(scope("203.0.113.9", "1.2.3.4"), trusted) == "203.0.113.9"  # untrusted peer: header ignored
    assert client_ip(scope("10.0.0.5", "1.2.3.4"), trusted) == "1.2.3.4"
    # a client prepending fake hops cannot choose its address: the rightmost untrusted hop is used
    assert client_ip(scope("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.7"), trusted) == "1.2.3.4"
    assert client_ip(scope("10.0.0.5", None), trusted) == "10.0.0.5"
    assert client_ip(scope("127.0.0.1", "1.2.3.4"), []) == "127.0.0.1"


def test_a_forwarded_address_is_one_bucket_whatever_its_port_or_spelling() -> None:
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    for hop in ("5.5.5.5", "5.5.5.5:1", "5.5.5.5:2", " 5.5.5.5:443 ", "::ffff:5.5.5.5", "[::ffff:5.5.5.5]:80"):
        assert client_ip(scope("10.0.0.5", hop), trusted) == "5.5.5.5", hop
    for hop in ("2001:db8::1", "2001:DB8:0:0::1", "[2001:db8::1]:443", "2001:0db8::0001", "fe80::1%eth0"):
        expected = "fe80::1" if hop.startswith("fe80") else "2001:db8::1"
        assert client_ip(scope("10.0.0.5", hop), trusted) == expected, hop
    assert client_ip(scope("10.0.0.5", "[10.0.0.7]:5, 1.2.3.4:9, 10.0.0.8:1"), trusted) == "1.2.3.4"  # ports on proxies
    assert client_ip(scope("10.0.0.5", "not-an-address"), trusted) == "not-an-address"


def test_memory_counters_forget_subjects_whose_state_ran_out() -> None:
    import asyncio

    from llmops.stores.counters import MemoryCounters

    async def run() -> int:
        clock = [1000.0]
        counters = MemoryCounters(clock=lambda: clock[0])
        for i in range(MemoryCounters.PRUNE_EVERY - 1):
            await counters.hit_requests(f"ip:{i}", 60)
        clock[0] += 120.0  # two minutes later every allowance is full again
        await counters.hit_requests("ip:new", 60)  # the sweep runs on this call
        return len(counters._tat)  # the subjects it still holds state for

    assert asyncio.run(run()) == 1


def test_a_request_refused_by_the_rate_limit_holds_no_in_flight_place() -> None:
    """A key with both limits: requests refused for requests/min must not take (and so leak, until its TTL)
    one of the key's in-flight places, or a few refusals would lock the key out for ten minutes."""
    import asyncio

    from llmops.http_edge import set_api_key
    from llmops.middleware.rate_limit import Admission, RateLimiter
    from llmops.observability.metrics import Metrics
    from llmops.stores.counters import MemoryCounters
    from llmops.stores.keys import KeyLimits, new_key

    key, _ = new_key("both", (), "interactive", KeyLimits(rpm=1, max_concurrent=2))

    async def run() -> tuple[list[bool], bool]:
        counters = MemoryCounters()
        limiter = RateLimiter(counters, None, [], Metrics())
        outcomes = []
        for _ in range(4):
            request: dict[str, object] = {"type": "http", "path": "/v1/chat/completions", "headers": [],
                                          "client": ("127.0.0.1", 1)}
            set_api_key(request, key)
            admitted = await limiter.admit(request)
            outcomes.append(isinstance(admitted, Admission))
            # nothing is released: the admitted request is still in flight, the refused ones never were
        return outcomes, await counters.acquire(key.id, 2, "next", 60)

    outcomes, place_left = asyncio.run(run())
    assert outcomes == [True, False, False, False]
    assert place_left  # one place taken by the admitted request, the second still free


def test_a_key_with_both_limits_is_refused_when_its_places_are_taken_and_admitted_once_one_is_back() -> None:
    import asyncio

    from llmops.http_edge import set_api_key
    from llmops.middleware.rate_limit import Admission, RateLimiter
    from llmops.middleware.rate_limit import Refusal as Refused
    from llmops.observability.metrics import Metrics
    from llmops.stores.counters import MemoryCounters
    from llmops.stores.keys import KeyLimits, new_key

    key, _ = new_key("both", (), "interactive", KeyLimits(rpm=100, max_concurrent=1))

    def request() -> dict[str, object]:
        scope: dict[str, object] = {"type": "http", "path": "/v1/chat/completions", "headers": [],
                                    "client": ("127.0.0.1", 1)}
        set_api_key(scope, key)
        return scope

    async def run() -> None:
        limiter = RateLimiter(MemoryCounters(), None, [], Metrics())
        first = await limiter.admit(request())
        assert isinstance(first, Admission)
        assert first.holder is not None
        refused = await limiter.admit(request())
        assert isinstance(refused, Refused)
        assert "1 requests in flight" in refused.error.message
        limiter.release(first)
        assert isinstance(await limiter.admit(request()), Admission)

    asyncio.run(run())


def test_a_stored_key_with_a_rate_of_zero_or_less_is_refused_not_a_500() -> None:
    """Keys stored before `keys create` checked its bounds can have rpm 0 (every request a ZeroDivisionError,
    a 500) or -5 (no limit at all): below 1 is read as no request allowed."""
    import asyncio

    from llmops.errors import RateLimited
    from llmops.http_edge import Refusal, set_api_key
    from llmops.middleware.rate_limit import RateLimiter
    from llmops.observability.metrics import Metrics
    from llmops.stores.counters import MemoryCounters
    from llmops.stores.keys import KeyLimits, new_key

    async def admit(limits: KeyLimits) -> object:
        key, _ = new_key("old", (), "interactive", limits)
        request: dict[str, object] = {"type": "http", "path": "/v1/chat/completions", "headers": [],
                                      "client": ("127.0.0.1", 1)}
        set_api_key(request, key)
        return await RateLimiter(MemoryCounters(), None, [], Metrics()).admit(request)

    for limits in (KeyLimits(rpm=0), KeyLimits(rpm=-5), KeyLimits(rpm=0, max_concurrent=2)):
        refused = asyncio.run(admit(limits))
        assert isinstance(refused, Refusal), limits
        assert isinstance(refused.error, RateLimited)
