"""The Redis backend: keys, counters and spend shared by every replica, each change one atomic step
(a Lua script, a MULTI or a single command; spend and what a request gives back when it ends are sent in
batches, see RedisLedger and RedisWrites). Every call has a short timeout; when Redis cannot be reached
the configured policy decides: fail-open (limits and spend accounting are skipped, keys seen before keep
working from the last copy, logged and counted) or fail-closed (503 store_unavailable). Never a 500,
never a hang. Unknown secrets are never admitted either way."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from llmops.errors import StoreUnavailable
from llmops.stores.counters import Decision, gcra, sliding, tokens_decided, window_index
from llmops.stores.group_commit import GroupCommit
from llmops.stores.keys import ApiKey, missing, revoked
from llmops.stores.ledger import LINGER_S, Reservation, SpendEntry, SpendRow, TokenHit, day_of, days_between

log = logging.getLogger("llmops.stores")
T = TypeVar("T")
_NONE: Any = object()  # no fail-open fallback: the call always fails closed
KEY_FRESH_S = 1.0
LOST_LOG_S = 10.0  # spend Redis would not take is said at most this often, with everything lost since

# The scripts are built from these steps, so that the one for both limits does exactly what the two do.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_GCRA_STEP = """
local tat = tonumber(redis.call('GET', KEYS[1]))
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
if tat == nil or tat < now then tat = now end
local allowed = now >= tat - window + interval
if allowed then
  redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now) * 1000) + 1000)
end
"""


def _acquire_step(key: int, arg: int) -> str:
    """Take an in-flight place in KEYS[key] (ARGV[arg], [arg+1], [arg+2]: places, hold seconds, holder)."""
    return f"""
redis.call('ZREMRANGEBYSCORE', KEYS[{key}], '-inf', now)
local placed = redis.call('ZCARD', KEYS[{key}]) < tonumber(ARGV[{arg}])
if placed then
  redis.call('ZADD', KEYS[{key}], now + tonumber(ARGV[{arg + 1}]), ARGV[{arg + 2}])
  redis.call('EXPIRE', KEYS[{key}], math.ceil(tonumber(ARGV[{arg + 1}])) + 1)
end
"""


_GCRA = _NOW + _GCRA_STEP + "return {tostring(now), tostring(tat)}\n"
_ACQUIRE = _NOW + _acquire_step(1, 1) + "return placed and 1 or 0\n"
_GCRA_THEN_ACQUIRE = (_NOW + _GCRA_STEP + "if not allowed then return {tostring(now), tostring(tat), 0} end\n"
                      + _acquire_step(2, 3) + "return {tostring(now), tostring(tat), placed and 1 or 0}\n")


def _tokens_step(key: int, arg: int) -> str:
    """Count ARGV[arg+1] tokens in the minute window KEYS[key] unless, with the previous window KEYS[key+1]
    weighed by what is left of it (ARGV[arg+2]: the share elapsed), they pass ARGV[arg] tokens/min. Sets
    the caller's `cur`, `prev` and `fits`."""
    return f"""
cur = tonumber(redis.call('GET', KEYS[{key}]) or '0')
prev = tonumber(redis.call('GET', KEYS[{key + 1}]) or '0')
fits = cur + prev * (1 - tonumber(ARGV[{arg + 2}])) + tonumber(ARGV[{arg + 1}]) <= tonumber(ARGV[{arg}])
if fits then
  redis.call('INCRBYFLOAT', KEYS[{key}], ARGV[{arg + 1}])
  redis.call('EXPIRE', KEYS[{key}], 180)
end
"""


_TOKENS = "local cur, prev, fits\n" + _tokens_step(1, 1) + "return {tostring(cur), tostring(prev)}\n"

_RESERVE = _NOW + """
local budget, usd, holder, ttl, key_id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
-- with ARGV[6..8] (tokens/min limit, tokens, share of the minute elapsed): KEYS[2], KEYS[3] are its windows
local tokens = #ARGV > 5
local spent = 0
for i = (tokens and 4 or 2), #KEYS do spent = spent + tonumber(redis.call('HGET', KEYS[i], key_id) or '0') end
local reserved = 0
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local amount, expires = string.match(held[i + 1], '(%S+) (%S+)')
  if tonumber(expires) <= now then redis.call('HDEL', KEYS[1], held[i])
  else reserved = reserved + tonumber(amount) end
end
if spent + reserved >= budget then return {0, tostring(spent), tostring(reserved)} end
local cur, prev, fits = 0, 0, true
if tokens then""" + _tokens_step(2, 6) + """
  if not fits then return {0, tostring(spent), tostring(reserved), tostring(cur), tostring(prev)} end
end
redis.call('HSET', KEYS[1], holder, string.format('%.17g %.6f', usd, now + ttl))
if redis.call('TTL', KEYS[1]) < math.ceil(ttl) + 1 then redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1) end
return {1, tostring(spent), tostring(reserved), tostring(cur), tostring(prev)}
"""


def _unmeasured(per_minute: int) -> Decision:
    """What a limit decides while Redis is unreachable and the policy fails open: allowed, nothing known."""
    return Decision(True, per_minute, per_minute, 0.0, 0.0, measured=False)


class RedisGuard:
    """Runs one Redis call under the timeout and the failure policy."""

    def __init__(self, client: aioredis.Redis, timeout_s: float, fail_open: bool,
                 on_error: Callable[[str], None]) -> None:
        self.client, self.timeout_s, self.fail_open, self._on_error = client, timeout_s, fail_open, on_error
        self._logged_at = 0.0

    async def call(self, op: str, fn: Callable[[], Awaitable[T]], fallback: T = _NONE, *,
                   always_open: bool = False) -> T:
        """`fn()` under the timeout. On failure: `fallback` when the policy is open (or `always_open`, for
        calls whose failure is harmless, like a cache lookup), else 503 store_unavailable."""
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # not wait_for: on 3.11 that is a task per call
                return await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self._on_error(op)
            open_ = (self.fail_open or always_open) and fallback is not _NONE
            if time.monotonic() - self._logged_at > 10:  # one line per 10 s, not one per request
                self._logged_at = time.monotonic()
                log.warning("redis unreachable during %s (%s): failing %s", op, type(exc).__name__,
                            "open" if open_ else "closed")
            if open_:
                return fallback
            raise StoreUnavailable("the shared state store (Redis) is unreachable; retry shortly") from exc

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """No socket timeout for reads and writes: every call runs under RedisGuard's one timeout, and redis-py
    drops a connection whose command was cancelled. (With a socket timeout, redis-py wraps each command's
    send in `asyncio.wait_for`, a task per command on Python 3.11, and each read in a timeout of its own.)"""
    return aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout_s,
                                   retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=True)


Write = Callable[[Any], object]  # adds its commands to a pipeline


class RedisWrites:
    """The writes no request waits on the answer of (a request's token count corrected after it, its
    in-flight place and budget reservation given back), queued and sent together: one pipeline per batch,
    the next batch as soon as the last one is answered. Nothing waits to fill a batch, so a lone write goes
    at once; under load, what queues during one round trip goes in the next. Each was its own round trip,
    and redis-py spends 75-150 us of CPU on one; in a pipeline a command costs a fraction of that.
    Commands run in the order they were queued. A batch Redis does not take is counted (op `writes`) and
    logged, and not retried: a place or a reservation not given back expires on its own (its TTL)."""

    def __init__(self, guard: RedisGuard) -> None:
        self.g = guard
        self._commit: GroupCommit[Write] = GroupCommit(self._send, 0.0)

    def queue(self, write: Write) -> None:
        """Queue `write` for the next batch; nobody waits for it (a batch reports its own failures)."""
        self._commit.add(write)

    async def written(self) -> None:
        """Wait until every write queued before now has been answered (or has failed)."""
        await self._commit.written()

    async def close(self) -> None:
        await self._commit.close()

    async def _send(self, batch: list[Write]) -> None:
        async def run() -> list[Any]:
            async with self.g.client.pipeline(transaction=False) as pipe:
                for write in batch:
                    write(pipe)
                return list(await pipe.execute(raise_on_error=False))
        try:
            results = await self.g.call("writes", run, None)
        except StoreUnavailable:  # Redis away: the guard counted it and says so (once per 10 s)
            return
        failed = [r for r in results or () if isinstance(r, Exception)]
        if failed:
            log.error("Redis refused %d of a batch of %d writes (token counts, in-flight places and budget "
                      "reservations given back): %s", len(failed), len(batch), failed[0])


class RedisKeyStore:
    def __init__(self, guard: RedisGuard, prefix: str) -> None:
        self.g, self.p = guard, prefix
        self._known: dict[str, tuple[ApiKey, float]] = {}  # last copy of each key seen, and when
        self._count = 1  # until Redis says otherwise, assume keys exist (never open up by accident)

    async def add(self, key: ApiKey) -> None:
        async def run() -> None:
            async with self.g.client.pipeline(transaction=True) as pipe:
                pipe.set(f"{self.p}key:{key.id}", key.to_json())
                pipe.set(f"{self.p}keyhash:{key.hash}", key.to_json())
                pipe.sadd(f"{self.p}keys", key.id)
                await pipe.execute()
        await self.g.call("keys.add", run)

    async def by_hash(self, digest: str, fresh: bool = False) -> ApiKey | None:
        """A key read in the last second is used as is, unless `fresh` (a revocation reaches every replica
        within a second); when Redis is unreachable and the policy is fail-open, the last copy of a key seen
        before."""
        known, read_at = self._known.get(digest, (None, 0.0))
        if known is not None and not fresh and time.monotonic() - read_at < KEY_FRESH_S:
            return known
        raw = await self.g.call("keys.lookup", lambda: self.g.client.get(f"{self.p}keyhash:{digest}"),
                                _NONE if known is None else known.to_json())
        key = ApiKey.from_json(raw) if raw else None
        if key is not None:
            self._known[digest] = (key, time.monotonic())
        return key

    async def get(self, key_id: str) -> ApiKey:
        raw = await self.g.call("keys.get", lambda: self.g.client.get(f"{self.p}key:{key_id}"))
        if not raw:
            raise missing(key_id)
        return ApiKey.from_json(raw)

    async def all(self) -> list[ApiKey]:
        async def run() -> list[str | None]:
            ids = sorted(str(i) for i in await self.g.client.smembers(f"{self.p}keys"))
            return [str(v) if v else None for v in await self.g.client.mget([f"{self.p}key:{i}" for i in ids])] \
                if ids else []
        keys = [ApiKey.from_json(raw) for raw in await self.g.call("keys.all", run) if raw]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> ApiKey:
        key = revoked(await self.get(key_id))

        async def run() -> None:
            async with self.g.client.pipeline(transaction=True) as pipe:
                pipe.set(f"{self.p}key:{key.id}", key.to_json())
                pipe.set(f"{self.p}keyhash:{key.hash}", key.to_json())
                await pipe.execute()
        await self.g.call("keys.revoke", run)
        self._known.pop(key.hash, None)
        return key

    async def key_count(self) -> int:
        self._count = int(await self.g.call("keys.count", lambda: self.g.client.scard(f"{self.p}keys"),
                                            self._count))
        return self._count


class RedisCounters:
    def __init__(self, guard: RedisGuard, prefix: str, writes: RedisWrites) -> None:
        self.g, self.p, self.writes = guard, prefix, writes
        self._gcra = guard.client.register_script(_GCRA)
        self._tokens = guard.client.register_script(_TOKENS)
        self._acquire = guard.client.register_script(_ACQUIRE)
        self._gcra_then_acquire = guard.client.register_script(_GCRA_THEN_ACQUIRE)

    async def hit_requests(self, subject: str, per_minute: int) -> Decision:
        allow = _unmeasured(per_minute)
        raw = await self.g.call("limits.requests", lambda: self._gcra(
            keys=[f"{self.p}rpm:{subject}"], args=[60.0 / per_minute, 60.0]), None)
        return allow if raw is None else gcra(float(raw[0]), float(raw[1]), per_minute)[0]

    async def hit_and_acquire(self, subject: str, per_minute: int, place: str, limit: int, holder: str,
                              ttl_s: float) -> tuple[Decision, bool]:
        """Both scripts' work in one script: one round trip where there were two."""
        allow = _unmeasured(per_minute)
        raw = await self.g.call("limits.requests", lambda: self._gcra_then_acquire(
            keys=[f"{self.p}rpm:{subject}", f"{self.p}inflight:{place}"],
            args=[60.0 / per_minute, 60.0, limit, ttl_s, holder]), None)
        if raw is None:  # failing open, as each of the two does
            return allow, True
        return gcra(float(raw[0]), float(raw[1]), per_minute)[0], bool(int(raw[2]))

    async def hit_tokens(self, subject: str, per_minute: int, count: int) -> Decision:
        index, elapsed = window_index(time.time())
        keys = [f"{self.p}tpm:{subject}:{index}", f"{self.p}tpm:{subject}:{index - 1}"]
        raw = await self.g.call("limits.tokens", lambda: self._tokens(keys=keys, args=[per_minute, count, elapsed]),
                                None)
        if raw is None:
            return _unmeasured(per_minute)
        decision = sliding(float(raw[0]), float(raw[1]), elapsed, per_minute, count)
        tokens_decided(decision)
        return decision

    def add_tokens(self, subject: str, count: int, window: int | None = None) -> None:
        key = f"{self.p}tpm:{subject}:{window_index(time.time())[0] if window is None else window}"

        def write(pipe: Any) -> None:
            pipe.incrbyfloat(key, count)
            pipe.expire(key, 180)
        self.writes.queue(write)

    async def acquire(self, subject: str, limit: int, holder: str, ttl_s: float) -> bool:
        got = await self.g.call("limits.concurrency", lambda: self._acquire(
            keys=[f"{self.p}inflight:{subject}"], args=[limit, ttl_s, holder]), 1)
        return bool(int(got))

    def release(self, subject: str, holder: str) -> None:
        self.writes.queue(lambda pipe: pipe.zrem(f"{self.p}inflight:{subject}", holder))


class RedisLedger:
    """Per day: a hash of (key, model, field) totals and a hash of key totals; per minute: the total spend,
    kept two hours for the circuit breaker.

    Written by group commit (stores/group_commit.py), as SQLite is: the entries that settle within a batch
    are summed per hash field and sent as one MULTI, instead of one MULTI of nine commands per request.
    `record` returns once its entry is written, so a budget reservation released after it (pipeline/
    accounting.py) is never missing from both the reservations and the spend that another replica reads.
    Reads wait for the entries recorded before them. A batch that cannot be written is lost, said once."""

    def __init__(self, guard: RedisGuard, prefix: str) -> None:
        self.g, self.p = guard, prefix
        self._commit: GroupCommit[SpendEntry] = GroupCommit(self._write, LINGER_S)
        self._lost: list[SpendEntry] = []  # not written, not yet said
        self._lost_logged_at = -LOST_LOG_S

    async def record(self, entry: SpendEntry) -> None:
        await asyncio.shield(self.queue(entry))

    def queue(self, entry: SpendEntry) -> asyncio.Future[None]:
        return self._commit.add(entry.stamped())

    async def _write(self, batch: list[SpendEntry]) -> None:
        counts, amounts, minutes = spend_increments(self.p, batch)

        async def run() -> bool:
            async with self.g.client.pipeline(transaction=True) as pipe:
                for (name, cell), n in counts.items():
                    pipe.hincrby(name, cell, n)
                for (name, cell), usd in amounts.items():
                    pipe.hincrbyfloat(name, cell, usd)
                for name, usd in minutes.items():
                    pipe.incrbyfloat(name, usd)
                    pipe.expire(name, 7200)
                await pipe.execute()
            return True
        try:
            written = await self.g.call("spend.record", run, False)
        except StoreUnavailable:
            written = False
        if not written:  # the guard counted the failure and says Redis is away; this says what was lost
            self._lost.extend(batch)
            if time.monotonic() - self._lost_logged_at >= LOST_LOG_S:  # one line per 10 s while it lasts
                lost, self._lost, self._lost_logged_at = self._lost, [], time.monotonic()
                log.error("could not write %d spend entries ($%.6f in all, keys %s) to Redis; they are lost",
                          len(lost), sum(e.cost_usd for e in lost), sorted({e.key_id for e in lost}))

    async def close(self) -> None:
        """Write every queued entry (the state closes the client after this)."""
        await self._commit.close()

    async def key_spend(self, key_id: str, since: float) -> float | None:
        await self._commit.written()
        hashes = spend_hashes(self.p, since)

        async def run() -> float:
            async with self.g.client.pipeline(transaction=False) as pipe:
                for name in hashes:
                    pipe.hget(name, key_id)
                return sum(float(v) for v in await pipe.execute() if v)
        return await self.g.call("spend.key", run, None)  # failing open: no figure, not $0

    async def hour_spend(self) -> float | None:
        await self._commit.written()
        now = int(time.time() // 60)
        keys = [f"{self.p}spendmin:{m}" for m in range(now - 59, now + 1)]

        async def run() -> float:
            return sum(float(v) for v in await self.g.client.mget(keys) if v)
        return await self.g.call("spend.hour", run, None)

    async def report(self, first_day: str, last_day: str, key_id: str | None = None) -> list[SpendRow]:
        await self._commit.written()
        days = days_between(first_day, last_day)

        async def run() -> list[dict[str, str]]:
            async with self.g.client.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(f"{self.p}spend:{day}")
                return list(await pipe.execute())
        rows = []
        for day, cells in zip(days, await self.g.call("spend.report", run), strict=True):
            rows += _rows(day, cells, key_id)
        return rows


def spend_increments(prefix: str, batch: list[SpendEntry]) -> tuple[dict[tuple[str, str], int],
                                                                     dict[tuple[str, str], float], dict[str, float]]:
    """A batch of entries as the sums to add: integer fields (HINCRBY), dollar fields (HINCRBYFLOAT), each by
    (hash, field), and the spend per minute (INCRBYFLOAT), each key once however many entries it sums."""
    counts: dict[tuple[str, str], int] = {}
    amounts: dict[tuple[str, str], float] = {}
    minutes: dict[str, float] = {}
    for e in batch:
        day = day_of(e.at)
        spend, cell = f"{prefix}spend:{day}", f"{e.key_id}|{e.model}|"
        for field, n in (("requests", 1), ("prompt_tokens", e.prompt_tokens),
                         ("completion_tokens", e.completion_tokens), ("images", e.images)):
            counts[(spend, cell + field)] = counts.get((spend, cell + field), 0) + n
        for name, field in ((spend, cell + "cost_usd"), (f"{prefix}keyspend:{day}", e.key_id),
                            (f"{prefix}keyspend:total", e.key_id)):
            amounts[(name, field)] = amounts.get((name, field), 0.0) + e.cost_usd
        minute = f"{prefix}spendmin:{int(e.at // 60)}"
        minutes[minute] = minutes.get(minute, 0.0) + e.cost_usd
    return counts, amounts, minutes


def spend_hashes(prefix: str, since: float) -> tuple[str, ...]:
    """The hashes holding each key's spend from `since` (a UTC day boundary; 0: the key's whole life)."""
    if since <= 0:
        return (f"{prefix}keyspend:total",)
    return _day_hashes(prefix, day_of(since), day_of(time.time()))


@lru_cache(maxsize=64)
def _day_hashes(prefix: str, first_day: str, last_day: str) -> tuple[str, ...]:
    """One per day of the period so far: computed once a day per period, not per request (a month's is
    up to 31 names, each a date formatted)."""
    return tuple(f"{prefix}keyspend:{day}" for day in days_between(first_day, last_day))


class RedisBudgets:
    """Budget reservations in Redis: per key a hash of holder -> "usd expiry"; the check (the period's spend
    from the ledger's hashes plus every live reservation) and the new reservation are one Lua script."""

    def __init__(self, guard: RedisGuard, prefix: str, writes: RedisWrites) -> None:
        self.g, self.p, self.writes = guard, prefix, writes
        self._reserve = guard.client.register_script(_RESERVE)

    async def reserve(self, key_id: str, since: float, budget_usd: float, usd: float, holder: str,
                      ttl_s: float, tokens: TokenHit | None = None) -> Reservation | None:
        keys: list[str] = [f"{self.p}reserved:{key_id}"]
        args: list[str | int | float] = [budget_usd, usd, holder, ttl_s, key_id]
        elapsed = 0.0
        if tokens is not None:  # the key's tokens/min in the same script: one round trip, not two
            index, elapsed = window_index(time.time())
            keys += [f"{self.p}tpm:{key_id}:{index}", f"{self.p}tpm:{key_id}:{index - 1}"]
            args += [tokens.per_minute, tokens.count, elapsed]
        keys += spend_hashes(self.p, since)
        raw = await self.g.call("spend.reserve", lambda: self._reserve(keys=keys, args=args), None)
        if raw is None:
            return None
        decision = None
        if tokens is not None and len(raw) > 3:  # the budget allowed: tokens/min was checked
            decision = sliding(float(raw[3]), float(raw[4]), elapsed, tokens.per_minute, tokens.count)
            tokens_decided(decision)
        return Reservation(bool(int(raw[0])), float(raw[1]), float(raw[2]), decision)

    def release(self, key_id: str, holder: str) -> None:
        """Given back with the other writes (RedisWrites); a reservation that could not be released expires
        on its own."""
        self.writes.queue(lambda pipe: pipe.hdel(f"{self.p}reserved:{key_id}", holder))


def _rows(day: str, cells: dict[str, str], key_id: str | None) -> list[SpendRow]:
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for cell, value in cells.items():
        key, model, name = cell.rsplit("|", 2)
        if key_id is None or key == key_id:
            totals.setdefault((key, model), {})[name] = float(value)
    return [SpendRow(day, key, model, int(t.get("requests", 0)), int(t.get("prompt_tokens", 0)),
                     int(t.get("completion_tokens", 0)), int(t.get("images", 0)), t.get("cost_usd", 0.0))
            for (key, model), t in sorted(totals.items())]


class RedisCache:
    """Fail-closed applies to limits and keys; a cache miss is always safe, so the cache always fails open."""

    def __init__(self, guard: RedisGuard, prefix: str) -> None:
        self.g, self.p = guard, prefix

    async def get(self, key: str) -> str | None:
        value = await self.g.call("cache.get", lambda: self.g.client.get(f"{self.p}cache:{key}"), None,
                                  always_open=True)
        return str(value) if value is not None else None

    async def put(self, key: str, value: str, ttl_s: float) -> None:
        await self.g.call("cache.put", lambda: self.g.client.set(f"{self.p}cache:{key}", value, px=int(ttl_s * 1000)),
                          None, always_open=True)
