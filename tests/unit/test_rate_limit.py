from __future__ import annotations

import ipaddress

from llmops.middleware.rate_limit import client_ip
from llmops.stores.ratelimit import MemoryRateLimiter


def test_gcra_allows_the_minute_then_one_per_interval() -> None:
    limiter = MemoryRateLimiter()
    now = 1000.0
    decisions = [limiter.hit("a", 3, now) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert 19.0 < decisions[3].retry_after_s <= 20.0  # one request every 20 s at 3/min
    assert limiter.hit("a", 3, now + 20.0).allowed
    assert limiter.hit("b", 3, now).allowed  # subjects are independent


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
