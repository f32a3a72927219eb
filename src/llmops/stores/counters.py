"""Counters for limits: requests/min (GCRA), tokens/min (a sliding window that can be corrected after the
fact) and requests in flight. The decisions are pure functions of the stored numbers, so the in-memory
counters here and the Redis ones (stores/redis.py, the same math in Lua-guarded atomic steps) agree.

GCRA (the generic cell rate algorithm) keeps one timestamp per subject: bursts up to the minute's
allowance, then one request every 60/limit seconds, and an exact Retry-After. Tokens use two fixed
one-minute windows weighted by how far into the current one we are (the sliding-window approximation
Cloudflare and Redis' own docs describe): prompt tokens are added when the request is admitted and the
completion tokens when it settles, so one counter takes both.

Each decision carries what a client is told of its limit (OpenAI's x-ratelimit-* headers: the limit, what is
left, when it is full again), computed from the same stored numbers, so telling costs no round trip. The
requests/min decision is the rate limiter's own (middleware/rate_limit.py); the tokens/min one is made in the
pipeline's accounting, deep below the HTTP edge, so the store tells it to whoever is listening for the request
being served (`listen_for_tokens`, a context variable the rate limiter sets for the request it admitted)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import NamedTuple, Protocol

WINDOW_S = 60.0


class Decision(NamedTuple):
    """One limit's decision (a request makes two or three: a named tuple is made in one call, where a
    frozen dataclass sets each field through `object.__setattr__`)."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    reset_s: float  # when the allowance is full again
    measured: bool = True  # False: the store could not be asked (failing open): nothing to tell a client


TokensHeard = Callable[[Decision], None]
_tokens_listener: ContextVar[TokensHeard | None] = ContextVar("llmops_tokens_listener", default=None)


def listen_for_tokens(listener: TokensHeard | None) -> None:
    """From now on, in this context (the request's task and the tasks it starts), tokens/min decisions are
    told to `listener`; None: to nobody. The rate limiter sets it for a request it admits and clears it when
    the request ends."""
    _tokens_listener.set(listener)


def tokens_decided(decision: Decision) -> None:
    """Tell the request being served what its tokens/min check decided (the stores call it with each
    measured decision, from the round trip that made it)."""
    listener = _tokens_listener.get()
    if listener is not None:
        listener(decision)


class Counters(Protocol):
    async def hit_requests(self, subject: str, per_minute: int) -> Decision:
        """Count one request against `per_minute`, unless that would exceed it."""
        ...

    async def hit_tokens(self, subject: str, per_minute: int, count: int) -> Decision:
        """Add `count` tokens, unless that would exceed `per_minute` over the sliding minute."""
        ...

    def add_tokens(self, subject: str, count: int, window: int | None = None) -> None:
        """Settle tokens after the fact (completion tokens; a correction of the prompt estimate, maybe < 0)
        into the one-minute `window` (`window_index`'s; None: the current one).
        Nobody waits for it: in the process it is done at once; a shared store sends it with its next batch
        of writes (a task per request for it cost more than the write)."""
        ...

    async def acquire(self, subject: str, limit: int, holder: str, ttl_s: float) -> bool:
        """Take one of `limit` in-flight places for `holder`; a holder that never releases expires after ttl_s."""
        ...

    def release(self, subject: str, holder: str) -> None:
        """Give the place back; nobody waits for it (as `add_tokens`), so a cancelled request gives it back too."""
        ...

    async def hit_and_acquire(self, subject: str, per_minute: int, place: str, limit: int, holder: str,
                              ttl_s: float) -> tuple[Decision, bool]:
        """`hit_requests(subject)`, then, only when it allows, `acquire(place)`, as one step: (the
        requests/min decision, whether the place was taken)."""
        ...


def gcra(now: float, tat: float | None, per_minute: int) -> tuple[Decision, float | None]:
    """The decision for one request, and the new theoretical arrival time to store (None: store nothing)."""
    interval = WINDOW_S / per_minute
    tat = now if tat is None or tat < now else tat  # (no builtin max/min here: each parses keywords)
    allow_at = tat - WINDOW_S + interval
    if now < allow_at:
        return Decision(False, per_minute, 0, allow_at - now, tat - now), None
    new_tat = tat + interval
    # a tolerance: at unix time's size a float holds ~0.2 us, and 58.8 / 1.2 is 48.99999999999999 on its own
    remaining = int((WINDOW_S - (new_tat - now)) / interval + 1e-3)
    return Decision(True, per_minute, remaining if remaining > 0 else 0, 0.0, new_tat - now), new_tat


def window_index(now: float) -> tuple[int, float]:
    """(index of the current one-minute window, fraction of it elapsed). One `divmod`: `//` and `%` on
    floats each compute the same remainder (an fmod, long at unix time's size)."""
    index, into = divmod(now, WINDOW_S)
    return int(index), into / WINDOW_S


def full_again(current: float, previous: float, elapsed: float) -> float:
    """Seconds until nothing counted so far weighs on the sliding minute: the current window's tokens fade
    through the next window; the previous window's are gone when this one ends."""
    if current > 0:
        return WINDOW_S * (2.0 - elapsed)
    return WINDOW_S * (1.0 - elapsed) if previous > 0 else 0.0


def sliding(current: float, previous: float, elapsed: float, per_minute: int, count: int) -> Decision:
    """May `count` more tokens go in, given the current and previous window totals?"""
    used = current + previous * (1.0 - elapsed)
    left = int(per_minute - used)
    remaining = per_minute if left > per_minute else left if left > 0 else 0
    if used + count <= per_minute:
        reset = full_again(current + count, previous, elapsed)
        return Decision(True, per_minute, remaining - count if remaining > count else 0, 0.0, reset)
    reset = full_again(current, previous, elapsed)
    if count > per_minute:  # can never fit: say so rather than make the client retry forever
        return Decision(False, per_minute, remaining, WINDOW_S, reset)
    room = per_minute - count
    if current <= room:  # wait for the previous window's share to fade
        need = 1.0 - (room - current) / previous
        return Decision(False, per_minute, remaining, max(0.0, (need - elapsed) * WINDOW_S), reset)
    # wait for the next window, then for the current window's share (then previous) to fade
    fade = 1.0 - room / current
    return Decision(False, per_minute, remaining, WINDOW_S * (1.0 - elapsed) + fade * WINDOW_S, reset)


class _Places:
    """One subject's in-flight places: holder -> expiry, and a time at or before the earliest expiry (so
    that while it is in the future, no place has expired and none need be swept)."""

    __slots__ = ("earliest", "held")

    def __init__(self) -> None:
        self.held: dict[str, float] = {}
        self.earliest = math.inf

    def sweep(self, now: float) -> None:
        """Drop the expired places (only when one may have expired)."""
        if now < self.earliest:
            return
        self.held = {h: exp for h, exp in self.held.items() if exp > now}
        self.earliest = min(self.held.values(), default=math.inf)


class MemoryCounters:
    """One process's counters: the embedded default (and SQLite) backend. Replicas share Redis ones.
    Subjects whose state has run out (a client IP seen once) are pruned, so memory stays bounded by the
    subjects active in the last minute or two. The async methods do their work in plain calls (no await
    inside): a request's limits cost one coroutine, not one per counter."""

    PRUNE_EVERY = 1024  # calls between sweeps

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._now = clock
        self._tat: dict[str, float] = {}
        self._windows: dict[str, dict[int, float]] = {}
        self._holders: dict[str, _Places] = {}
        self._calls = 0

    def _maybe_prune(self, now: float) -> None:
        self._calls += 1
        if self._calls % self.PRUNE_EVERY:
            return
        self._tat = {s: tat for s, tat in self._tat.items() if tat > now}
        current = window_index(now)[0]
        self._windows = {s: w for s, w in self._windows.items() if any(i >= current - 1 for i in w)}
        self._holders = {s: p for s, p in self._holders.items() if any(exp > now for exp in p.held.values())}

    async def hit_requests(self, subject: str, per_minute: int) -> Decision:
        return self._hit(subject, per_minute)

    def _hit(self, subject: str, per_minute: int) -> Decision:
        now = self._now()
        self._maybe_prune(now)
        decision, tat = gcra(now, self._tat.get(subject), per_minute)
        if tat is not None:
            self._tat[subject] = tat
        return decision

    def _window(self, subject: str) -> tuple[dict[int, float], int, float]:
        """The subject's windows, the current one's index and how far into it we are. Windows older than
        the previous one weigh nothing; they are dropped when a window begins (a sweep of every request
        cost more than the counting)."""
        index, elapsed = window_index(self._now())
        windows = self._windows.get(subject)
        if windows is None:
            windows = self._windows[subject] = {}
        elif index not in windows:
            for old in [w for w in windows if w < index - 1]:
                del windows[old]
        return windows, index, elapsed

    async def hit_tokens(self, subject: str, per_minute: int, count: int) -> Decision:
        windows, index, elapsed = self._window(subject)
        decision = sliding(windows.get(index, 0.0), windows.get(index - 1, 0.0), elapsed, per_minute, count)
        if decision.allowed:
            windows[index] = windows.get(index, 0.0) + count
        tokens_decided(decision)
        return decision

    def add_tokens(self, subject: str, count: int, window: int | None = None) -> None:
        windows, index, _ = self._window(subject)
        index = index if window is None else window
        windows[index] = windows.get(index, 0.0) + count

    async def acquire(self, subject: str, limit: int, holder: str, ttl_s: float) -> bool:
        return self._acquire(subject, limit, holder, ttl_s)

    def _acquire(self, subject: str, limit: int, holder: str, ttl_s: float) -> bool:
        now = self._now()
        places = self._holders.get(subject)
        if places is None:
            places = self._holders[subject] = _Places()
        else:
            places.sweep(now)
        if len(places.held) >= limit:
            return False
        expires = now + ttl_s
        places.held[holder] = expires
        if expires < places.earliest:
            places.earliest = expires
        return True

    def release(self, subject: str, holder: str) -> None:
        places = self._holders.get(subject)
        if places is not None:
            places.held.pop(holder, None)

    async def hit_and_acquire(self, subject: str, per_minute: int, place: str, limit: int, holder: str,
                              ttl_s: float) -> tuple[Decision, bool]:
        decision = self._hit(subject, per_minute)
        return decision, decision.allowed and self._acquire(place, limit, holder, ttl_s)
