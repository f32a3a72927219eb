"""Wrong admin keys, throttled per client address.

A failure is a wrong admin key presented on /admin (a request with no key at all guesses nothing and is not
counted). `max_failures` of them from one address within `window_s` of its first lock that address out of
the admin API for `window_s`: its /admin requests get 429 (`errors.AuthLockedOut`, Retry-After) before the
key they carry is looked at, so a right guess made during a lockout is not confirmed. A success does not
clear the count (else the right key, once known to some, would buy others unlimited guesses). API keys are
not counted (middleware/auth.py says why).

The address is the rate limiter's (`rate_limit.client_ip`: the TCP peer, or, from `trusted_proxies`, the
client they name). Only that address is locked out; every other one authenticates as before. Behind a
proxy not listed in `trusted_proxies` every client has the proxy's address, and one client's failures
would lock all of them out of the admin API, the right key included: so with no trusted proxies an
internal address (private, loopback, link-local: an ingress, a sidecar) is never locked out, only logged
(once per window); a public one is. With trusted proxies, every address is the client's own, and locked.

Memory is bounded whatever the number of addresses: at most `capacity` addresses counted and `capacity`
locked out, the oldest forgotten first (an attacker spread over more addresses than that gets
`max_failures` tries per address it cycles through, as it would anyway; an address is cut to
`ADDRESS_CHARS`, for a proxy that passes any text on). Both tables are in time order (a window restarted
goes to the end), so expired entries are dropped from their heads, O(1) per call, as calls come.

It costs the API's requests nothing: only /admin requests consult it. The counts are per process: N replicas allow
N times the failures."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.types import Scope

from llmops.middleware.rate_limit import client_ip

log = logging.getLogger("llmops.auth")
CAPACITY = 10_000  # addresses counted, and addresses locked out: ~150 bytes each, ~3 MB at most in all
ADDRESS_CHARS = 64  # an IPv6 address with a zone fits


@dataclass(slots=True)
class _Count:
    since: float  # the clock when this address's window began (its first failure in it)
    failures: int = 0


class FailureThrottle:
    def __init__(self, max_failures: int, window_s: float, trusted_proxies: Sequence[str] = (),
                 capacity: int = CAPACITY, clock: Callable[[], float] = time.monotonic,
                 lock_internal: bool | None = None) -> None:
        self.max_failures, self.window_s, self.capacity, self.clock = max_failures, window_s, capacity, clock
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
        # an internal address is locked out only when it is known to be the client's own: trusted proxies say
        # who the client is behind them; without them it may be a proxy every client shares (an ingress)
        self.lock_internal = bool(self.trusted) if lock_internal is None else lock_internal
        self._unlocked_logged = -math.inf  # when the "not locked out: may be a proxy" warning was last logged
        self.counts: dict[str, _Count] = {}  # address → its failures in its window; oldest window first
        self.locked: dict[str, float] = {}  # address → locked out until (clock); soonest first. Never rebound
        self._full_logged = -math.inf  # when the table's "full" warning was last logged

    def address(self, scope: Scope) -> str:
        return client_ip(scope, self.trusted)[:ADDRESS_CHARS]

    def retry_after(self, scope: Scope) -> int | None:
        """Whole seconds until this request's address may present a key again; None when it is not locked
        out. Callers test `locked` first (empty: nobody is locked out)."""
        now = self.clock()
        self._expire(now)
        until = self.locked.get(self.address(scope)) if self.locked else None
        return None if until is None else max(1, math.ceil(until - now))

    def failed(self, scope: Scope) -> None:
        """Count a key refused to this request's address; the failure that reaches `max_failures` within the
        window locks the address out (and logs it, once per lockout)."""
        if self.max_failures <= 0:
            return
        now = self.clock()
        self._expire(now)
        address = self.address(scope)
        if address in self.locked:  # it passed the check before the lockout began: already refused
            return
        if not self.lock_internal and _internal(address):
            if now - self._unlocked_logged >= self.window_s:
                self._unlocked_logged = now
                log.warning("a wrong admin key from %s, an internal address that may be a proxy every client "
                            "comes through: wrong keys from it are not locked out (list the proxy in "
                            "rate_limits.trusted_proxies, and its clients are counted one by one)", address)
            return
        count = self.counts.get(address)
        if count is None or now - count.since >= self.window_s:
            if count is not None:
                del self.counts[address]  # its new window goes to the end: the table stays in time order
            self._make_room(self.counts, now)
            count = self.counts[address] = _Count(now)
        count.failures += 1
        if count.failures >= self.max_failures:
            del self.counts[address]
            self._make_room(self.locked, now)
            self.locked[address] = now + self.window_s
            log.warning("%d wrong admin keys from %s within %g s: its admin requests are refused, their keys "
                        "unchecked, for %g s", count.failures, address, self.window_s, self.window_s)

    def _expire(self, now: float) -> None:
        """Drop the expired heads of both tables (each is in time order, so the expired entries lead)."""
        locked, counts = self.locked, self.counts
        while locked:
            address = next(iter(locked))
            if locked[address] > now:
                break
            del locked[address]
        while counts:
            address = next(iter(counts))
            if now - counts[address].since < self.window_s:
                break
            del counts[address]

    def _make_room(self, table: dict[str, _Count] | dict[str, float], now: float) -> None:
        """Forget the oldest entry of a full table (logged once per window: many addresses are failing)."""
        if len(table) < self.capacity:
            return
        del table[next(iter(table))]
        if now - self._full_logged >= self.window_s:
            self._full_logged = now
            log.warning("wrong admin keys come from more than %d client addresses: the oldest are "
                        "forgotten", self.capacity)


def _internal(address: str) -> bool:
    """Whether `address` is private, loopback or link-local (or not an IP at all: a Unix socket's peer), as a
    proxy in front of the server would be."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return ip.is_private or ip.is_loopback or ip.is_link_local
