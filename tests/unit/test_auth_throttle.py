"""Wrong admin keys throttled per client address (middleware/auth_throttle.py, middleware/auth.py): the
window, the bounded tables, other addresses untouched, a locked-out address refused the admin API before its
key is looked at and still served the API, API keys never counted, the 429's envelope and Retry-After, the
metric and the one warning, and `auth.require_keys`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pydantic import SecretStr

from llmops.errors import AuthLockedOut, LLMOpsError, PermissionDenied, Unauthorized, error_response_parts
from llmops.http_edge import Refusal, api_key
from llmops.middleware.auth import Authenticator
from llmops.middleware.auth_throttle import FailureThrottle
from llmops.observability.metrics import Metrics
from llmops.settings import load_settings
from llmops.stores.keys import ApiKey, new_key, revoked

ADMIN = "3f9c2a7e81d04b6f9e5a0c1d2b3e4f5a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Keys:
    """A key store holding some keys; it counts the lookups by hash (a key looked at)."""

    def __init__(self, *keys: ApiKey) -> None:
        self.keys = {k.hash: k for k in keys}
        self.lookups = 0

    async def add(self, key: ApiKey) -> None:
        self.keys[key.hash] = key

    async def by_hash(self, digest: str, fresh: bool = False) -> ApiKey | None:
        self.lookups += 1
        return self.keys.get(digest)

    async def get(self, key_id: str) -> ApiKey:
        return next(k for k in self.keys.values() if k.id == key_id)

    async def all(self) -> list[ApiKey]:
        return list(self.keys.values())

    async def revoke(self, key_id: str) -> ApiKey:
        key = revoked(await self.get(key_id))
        self.keys[key.hash] = key
        return key

    async def key_count(self) -> int:
        return len(self.keys)


def scope(address: str = "203.0.113.5", path: str = "/v1/chat/completions", key: str | None = None,
          **headers: str) -> dict[str, Any]:
    raw = [(n.replace("_", "-").lower().encode(), v.encode()) for n, v in headers.items()]
    if key is not None:
        raw.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "path": path, "headers": raw, "query_string": b"", "state": {},
            "client": (address, 40000)}


def throttle(clock: Clock, max_failures: int = 3, window_s: float = 10.0, **kw: Any) -> FailureThrottle:
    """A throttle that locks out any address (the tests' are documentation ranges, which are private)."""
    return FailureThrottle(max_failures, window_s, clock=clock, **{"lock_internal": True, **kw})


# --- the throttle ------------------------------------------------------------------------------------------

def test_max_failures_within_the_window_lock_the_address_out_for_the_window() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(2):
        t.failed(scope())
        clock.now += 1
    assert t.retry_after(scope()) is None
    assert not t.locked
    t.failed(scope())  # the third within 10 s
    assert t.retry_after(scope()) == 10
    clock.now += 3.5
    assert t.retry_after(scope()) == 7  # whole seconds, rounded up
    clock.now += 6.4
    assert t.retry_after(scope()) == 1
    clock.now += 0.1
    assert t.retry_after(scope()) is None  # the window has passed
    assert not t.locked  # and nothing of it is kept
    assert not t.counts


def test_failures_spread_wider_than_the_window_do_not_lock() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(10):  # one every 6 s: never 3 within 10 s of a window's first
        t.failed(scope())
        clock.now += 6
    assert t.retry_after(scope()) is None
    for _ in range(3):  # then 3 at once
        t.failed(scope())
    assert t.retry_after(scope()) == 10


def test_other_addresses_are_untouched_and_counted_apart() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(3):
        t.failed(scope("203.0.113.5"))
    t.failed(scope("203.0.113.6"))
    t.failed(scope("203.0.113.6"))
    assert t.retry_after(scope("203.0.113.5")) == 10
    assert t.retry_after(scope("203.0.113.6")) is None  # two of its own: not locked by the other's
    assert t.retry_after(scope("2001:db8::1")) is None


def test_the_tables_are_bounded_and_forget_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    t = throttle(clock, max_failures=2, capacity=4)
    with caplog.at_level(logging.WARNING, logger="llmops.auth"):
        for i in range(1000):  # one failure each from a thousand addresses
            t.failed(scope(f"10.0.{i // 256}.{i % 256}"))
            clock.now += 0.001
    assert list(t.counts) == [f"10.0.3.{i}" for i in range(228, 232)]  # the four latest
    for i in range(10):  # ten addresses locked out
        t.failed(scope(f"10.1.0.{i}"))
        t.failed(scope(f"10.1.0.{i}"))
    assert len(t.locked) == 4
    assert len(t.counts) <= 4
    assert list(t.locked) == [f"10.1.0.{i}" for i in range(6, 10)]
    full = [r for r in caplog.records if "more than 4 client addresses" in r.getMessage()]
    assert len(full) == 1  # once per window, not once per eviction


def test_an_overlong_address_from_a_proxy_is_cut() -> None:
    clock = Clock()
    t = throttle(clock, trusted_proxies=["127.0.0.1/32"])
    for _ in range(3):
        t.failed(scope("127.0.0.1", x_forwarded_for="x" * 10_000))
    assert [len(a) for a in t.locked] == [64]


def test_a_restarted_window_keeps_the_table_in_time_order() -> None:
    clock = Clock()
    t = throttle(clock, max_failures=5)
    t.failed(scope("203.0.113.1"))
    clock.now += 5
    t.failed(scope("203.0.113.2"))
    clock.now += 6  # .1's window has passed, .2's has not
    t.failed(scope("203.0.113.1"))  # .1 begins a new window: it moves behind .2
    assert list(t.counts) == ["203.0.113.2", "203.0.113.1"]
    clock.now += 5  # .2's window has passed: it leaves from the head
    t.failed(scope("203.0.113.3"))
    assert list(t.counts) == ["203.0.113.1", "203.0.113.3"]


def test_forwarded_for_is_the_rate_limiters_client_address() -> None:
    clock = Clock()
    t = throttle(clock, trusted_proxies=["127.0.0.1/32"])
    for _ in range(3):
        t.failed(scope("127.0.0.1", x_forwarded_for="198.51.100.7"))
    assert list(t.locked) == ["198.51.100.7"]
    assert t.retry_after(scope("127.0.0.1", x_forwarded_for="198.51.100.8")) is None  # another client behind it
    assert t.retry_after(scope("127.0.0.1")) is None  # the proxy itself
    # from an untrusted peer the header is not believed: the peer is the address
    assert t.retry_after(scope("203.0.113.9", x_forwarded_for="198.51.100.7")) is None


def test_no_limit_counts_nothing() -> None:
    clock = Clock()
    t = throttle(clock, max_failures=0)
    for _ in range(100):
        t.failed(scope())
    assert not t.counts
    assert not t.locked


def test_one_warning_per_lockout_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    t = throttle(clock)
    guess = "sk-llmops-guessed-secret-value"
    with caplog.at_level(logging.WARNING, logger="llmops.auth"):
        for _ in range(10):  # failures that race past the lockout's check are not counted again
            t.failed(scope(key=guess))
        clock.now += 10
        for _ in range(3):  # the next window: a second lockout, a second warning
            t.failed(scope(key=guess))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "3 wrong admin keys from 203.0.113.5" in warnings[0]
    assert not any(guess in w for w in warnings)


# --- the authenticator: API keys are not throttled -----------------------------------------------------

def keyed(clock: Clock, metrics: Metrics | None = None, **kw: Any) -> tuple[Authenticator, Keys, str]:
    key, secret = new_key("team", (), "interactive")
    store = Keys(key)
    auth = Authenticator(store, False, metrics or Metrics(), refresh_s=60, throttle=throttle(clock),
                         admin_key=SecretStr(ADMIN), **kw)
    return auth, store, secret


def check(auth: Authenticator, s: dict[str, Any]) -> Refusal | None:
    return asyncio.run(auth.check(s))


def refused(auth: Authenticator, s: dict[str, Any]) -> LLMOpsError:
    """The error `auth` refuses the request with (it must refuse it)."""
    refusal = check(auth, s)
    assert refusal is not None
    return refusal.error


def test_api_keys_are_never_counted_nor_locked_out() -> None:
    """256 random bits: no rate of guessing finds one, and a lockout would let one client lock out every
    client sharing its address (behind a proxy, all of them)."""
    clock = Clock()
    auth, store, secret = keyed(clock)
    for i in range(10):
        assert isinstance(refused(auth, scope(key=f"sk-llmops-wrong-{i}")), Unauthorized)
    asyncio.run(store.revoke(next(iter(store.keys.values())).id))
    for _ in range(10):
        assert isinstance(refused(auth, scope(key=secret)), Unauthorized)  # revoked: 401, still no lockout
    assert not auth.throttle.counts
    assert not auth.throttle.locked


def test_an_address_locked_out_of_the_admin_api_keeps_the_api() -> None:
    clock = Clock()
    metrics = Metrics()
    auth, _, secret = keyed(clock, metrics)
    for i in range(3):
        assert isinstance(refused(auth, scope(path="/admin/keys", x_admin_key=f"wrong-admin-key-{i:02}")),
                          PermissionDenied)
    error = refused(auth, scope(path="/admin/keys", x_admin_key=ADMIN))  # the right key: not confirmed
    assert isinstance(error, AuthLockedOut)
    status, body, headers = error_response_parts(error)
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "too_many_auth_failures"
    assert headers == {"Retry-After": "10", "x-should-retry": "false"}
    assert metrics.registry.get_sample_value("llmops_rejections_total",
                                             {"model": "-", "reason": "auth_lockout"}) == 1
    ok = scope(key=secret)
    assert check(auth, ok) is None  # the same address's API requests are served
    assert api_key(ok) is not None
    clock.now += 10
    assert check(auth, scope(path="/admin/keys", x_admin_key=ADMIN)) is None  # the window has passed


def test_a_right_admin_key_does_not_clear_the_count() -> None:
    """Else the right key, known to one client, would buy unlimited guesses to another at the same address."""
    clock = Clock()
    auth, _, _ = keyed(clock)
    admin = "/admin/keys"
    for _ in range(2):
        check(auth, scope(path=admin, x_admin_key="w" * 32))
    assert check(auth, scope(path=admin, x_admin_key=ADMIN)) is None
    check(auth, scope(path=admin, x_admin_key="w" * 32))
    assert isinstance(refused(auth, scope(path=admin, x_admin_key=ADMIN)), AuthLockedOut)


def test_the_api_never_computes_an_address_even_during_a_lockout() -> None:
    class Counting(FailureThrottle):
        addresses = 0

        def address(self, scope: Any) -> str:
            Counting.addresses += 1
            return super().address(scope)

    key, secret = new_key("team", (), "interactive")
    auth = Authenticator(Keys(key), False, Metrics(), refresh_s=60, throttle=Counting(1, 10.0, lock_internal=True),
                         admin_key=SecretStr(ADMIN))
    assert check(auth, scope("198.51.100.9", path="/admin/keys", x_admin_key="w" * 32)) is not None
    assert auth.throttle.locked  # someone is locked out
    counted = Counting.addresses
    for _ in range(5):
        assert check(auth, scope(key=secret)) is None
        assert check(auth, scope(key="sk-llmops-wrong")) is not None
    assert Counting.addresses == counted


def test_an_open_server_counts_nothing() -> None:
    clock = Clock()
    auth = Authenticator(Keys(), False, Metrics(), refresh_s=60, throttle=throttle(clock))
    for _ in range(10):
        assert check(auth, scope(key="sk-llmops-anything")) is None
    assert not auth.throttle.counts


# --- the authenticator: the admin key ----------------------------------------------------------------------

def test_wrong_admin_keys_are_counted_and_then_even_the_right_one_is_refused() -> None:
    clock = Clock()
    auth, _, secret = keyed(clock)
    admin = "/admin/keys"
    assert check(auth, scope(path=admin, x_admin_key=ADMIN)) is None  # the router checks it again
    assert check(auth, scope(path=admin)) is None  # none presented: the router's 403, not a guess
    assert check(auth, scope(path=admin, key=secret)) is not None  # an API key is not the admin key
    for guess in ("x" * 32, "y" * 32):
        assert isinstance(refused(auth, scope(path=admin, x_admin_key=guess)), PermissionDenied)
    for s in (scope(path=admin, x_admin_key=ADMIN), scope(path="/admin/usage", key=ADMIN)):
        assert isinstance(refused(auth, s), AuthLockedOut)
    assert check(auth, scope(key=secret)) is None  # not the address's API requests
    assert check(auth, scope("203.0.113.6", path=admin, x_admin_key=ADMIN)) is None  # another address
    assert check(auth, scope(path="/health")) is None  # probes stay open


def test_a_disabled_admin_api_counts_nothing() -> None:
    clock = Clock()
    auth = Authenticator(Keys(), False, Metrics(), refresh_s=60, throttle=throttle(clock))
    for _ in range(10):
        assert check(auth, scope(path="/admin/keys", x_admin_key="x" * 32)) is None  # the router's 403
    assert not auth.throttle.counts


# --- auth.require_keys -------------------------------------------------------------------------------------

def test_require_keys_makes_a_loopback_server_keyed_from_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load_settings().keys_required()  # loopback: keyed once a key exists, as before
    assert load_settings(host="10.1.2.3").keys_required()  # exposed
    monkeypatch.setenv("LLMOPS_AUTH__REQUIRE_KEYS", "true")
    settings = load_settings()
    assert settings.auth.require_keys
    assert settings.keys_required()
    store = Keys()  # an emptied store: no key at all
    auth = Authenticator.from_settings(store, settings, Metrics())
    assert isinstance(refused(auth, scope("127.0.0.1")), Unauthorized)
    assert check(auth, scope("127.0.0.1", path="/health")) is None


def test_from_settings_takes_the_throttle_and_trusted_proxies() -> None:
    settings = load_settings(auth={"max_failures": 2, "failure_window_s": 5, "admin_key": ADMIN},
                             rate_limits={"trusted_proxies": ["127.0.0.0/8"]})
    auth = Authenticator.from_settings(Keys(), settings, Metrics())
    for _ in range(2):
        check(auth, scope("127.0.0.1", path="/admin/keys", x_admin_key="z" * 32, x_forwarded_for="198.51.100.3"))
    assert list(auth.throttle.locked) == ["198.51.100.3"]
    assert auth.throttle.window_s == 5


def test_without_trusted_proxies_an_internal_address_is_logged_not_locked_out(
        caplog: pytest.LogCaptureFixture) -> None:
    """It may be an ingress every client comes through: locking it out would lock every admin out, the right
    key included, for as long as anyone keeps guessing. A public address is the client's own, and locked."""
    clock = Clock()
    t = FailureThrottle(3, 10.0, clock=clock)
    assert not t.lock_internal
    with caplog.at_level(logging.WARNING, logger="llmops.auth"):
        for address in ("10.1.2.3", "127.0.0.1", "fe80::1", "unknown"):
            for _ in range(10):
                t.failed(scope(address))
            assert t.retry_after(scope(address)) is None
        for _ in range(3):
            t.failed(scope("8.8.8.8"))
    assert t.retry_after(scope("8.8.8.8")) == 10
    assert not t.counts
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # one about internal addresses this window, one lockout
    assert "rate_limits.trusted_proxies" in warnings[0]
    assert FailureThrottle(3, 10.0, ["10.0.0.0/8"]).lock_internal  # behind listed proxies: the client's own
