"""State behind one interface per kind: API keys (keys.py), limit counters (counters.py), spend
(ledger.py) and cached responses (cache.py); `build_state` picks the backend (memory, SQLite for the
embedded default, Redis for replicas)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from llmops.errors import ConfigError
from llmops.settings import StateSettings
from llmops.stores.cache import MemoryCache, ResponseCache
from llmops.stores.counters import Counters, MemoryCounters
from llmops.stores.keys import CachedKeys, KeyStore, SqliteKeyStore
from llmops.stores.ledger import Ledger, SharedBudgets, SqliteLedger
from llmops.stores.sqlite import SqliteDb


@dataclass
class State:
    keys: KeyStore
    counters: Counters
    ledger: Ledger
    cache: ResponseCache
    backend: str
    _close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _ping: Callable[[], Awaitable[bool]] | None = None
    budgets: SharedBudgets | None = None  # reservations every replica sees (Redis); None: in the process

    async def reachable(self) -> bool:
        """Whether the shared store answers now (always true for the in-process backends)."""
        return await self._ping() if self._ping is not None else True

    async def close(self) -> None:
        for close in self._close:
            await close()


def build_state(settings: StateSettings, on_error: Callable[[str], None] | None = None,
                cache_entries: int = 1024, key_cache_s: float = 0.0) -> State:
    """The stores for `settings`; `on_error(op)` is told of each Redis failure, and of each batch of spend
    SQLite could not write (a metric). With `key_cache_s`, keys found by hash are remembered that long
    (keys.CachedKeys: the server's; the CLI reads the store)."""
    state = _build_state(settings, on_error, cache_entries)
    if key_cache_s > 0:
        cached = state.keys = CachedKeys(state.keys, key_cache_s)
        state._close.insert(0, cached.close)  # its lookups ahead end before the store they read closes
    return state


def _build_state(settings: StateSettings, on_error: Callable[[str], None] | None, cache_entries: int) -> State:
    if settings.backend == "redis":
        try:
            from llmops.stores import redis_store as rs
        except ImportError as exc:
            raise ConfigError("state.backend redis needs the redis client: pip install 'llmops[redis]'") from exc

        client = rs.connect(settings.redis_url, settings.redis_timeout_s)
        guard = rs.RedisGuard(client, settings.redis_timeout_s, settings.on_error == "open",
                              on_error or (lambda _: None))
        p = settings.redis_prefix
        # spend and the writes still queued are sent before the client closes (the ledger's last batch
        # first: a reservation is given back after its request's spend is written)
        redis_ledger, writes = rs.RedisLedger(guard, p), rs.RedisWrites(guard)
        return State(rs.RedisKeyStore(guard, p), rs.RedisCounters(guard, p, writes), redis_ledger,
                     rs.RedisCache(guard, p), "redis", [redis_ledger.close, writes.close, client.aclose], guard.ping,
                     rs.RedisBudgets(guard, p, writes))
    db = SqliteDb(":memory:" if settings.backend == "memory" else settings.sqlite_path)
    ledger = SqliteLedger(db, on_error)

    async def close() -> None:
        await ledger.close()  # spend still queued is written before the connection closes
        db.close()

    return State(SqliteKeyStore(db), MemoryCounters(), ledger, MemoryCache(cache_entries), settings.backend, [close])
