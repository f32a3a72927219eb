"""The semantic cache (opt-in): a chat request whose normalised text is close enough to one answered before
gets that answer. Nearest neighbour by cosine similarity over the embeddings of normalised requests, above a
threshold, within a namespace (the model, the prompt version and every other field of the request that
shapes the answer), so "What's the capital of France?" can answer "what is the capital of france" but never
another model's or another prompt version's question. In the process by default; in Redis (shared by
replicas) with the redis state backend. A lookup failure is a miss: the cache never fails a request.

Its interface is small: `lookup(namespace, text, deadline=, priority=) -> Lookup` (the hit, if any, and the
vector to store under) and `store(lookup, body)`; the cache stage (pipeline/stages.py) calls nothing else.
The embedding waits at the embeddings model's admission like any request to it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llmops.engines.registry import require
from llmops.errors import ConfigError, DeadlineExceeded
from llmops.scheduling.admission import Priority

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from llmops.scheduling.pool import ModelPool
    from llmops.settings import Settings

log = logging.getLogger("llmops.semantic_cache")
Embed = Callable[[Sequence[str], float, Priority], Awaitable[list[list[float]]]]  # texts, deadline, priority


def normalise(messages: Sequence[tuple[str, str]]) -> str:
    """The request as the cache compares it: roles and texts, lower-case, whitespace and end punctuation
    folded."""
    parts = []
    for role, text in messages:
        folded = re.sub(r"\s+", " ", text.lower()).strip().rstrip("?!. ")
        parts.append(f"{role}: {folded}")
    return "\n".join(parts)


def namespace(payload: dict[str, Any]) -> str:
    """Everything but the messages that the answer depends on (model, prompt version, sampling, ...)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Vectors are unit length (the embeddings engine normalises), so the dot product is the cosine."""
    return sum(x * y for x, y in zip(a, b, strict=True))


class VectorIndex(Protocol):
    async def nearest(self, space: str, vector: list[float]) -> tuple[float, str] | None: ...
    async def add(self, space: str, vector: list[float], body: str, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


# Bounds of the in-process index across namespaces: a namespace changes with every option that shapes the
# answer (temperature included), so how many there are is the clients' choice. No setting holds these yet
# (settings.py bounds each namespace: cache.semantic.max_entries), hence module constants.
MAX_TOTAL_ENTRIES = 16_384  # entries in all namespaces together (never below cache.semantic.max_entries)
MAX_TOTAL_BYTES = 128 * 2**20  # stored answers' JSON plus their vectors (float32), all namespaces together
SWEEP_SLACK_S = 5.0  # with no requests, expired entries are freed at most this long after they expire
_FIRST_ROWS = 8  # a namespace's matrix starts with room for this many vectors, doubling as it fills


class _Space:
    """One namespace: its vectors the rows of one float32 matrix (a lookup is one matrix-vector product),
    each row's key, answer and expiry alongside. A removed row is filled by the last one; `rows` (key ->
    row) keeps the order entries were added in, oldest first."""

    def __init__(self, size: int) -> None:
        import numpy as np

        self.matrix: NDArray[np.float32] = np.empty((_FIRST_ROWS, size), np.float32)
        self.expires: NDArray[np.float64] = np.empty(_FIRST_ROWS, np.float64)
        self.keys: list[str] = []
        self.bodies: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def size(self) -> int:
        return int(self.matrix.shape[1])

    def oldest(self) -> str:
        return next(iter(self.rows))

    def nearest(self, vector: NDArray[np.float32], now: float) -> tuple[float, str] | None:
        """The best cosine among the entries not expired (vectors are unit length: the dot product)."""
        import numpy as np

        n = len(self.keys)
        if not n:
            return None
        scores = self.matrix[:n] @ vector
        scores[self.expires[:n] < now] = -np.inf  # expired, not swept yet (a shorter ttl than the oldest's)
        best = int(np.argmax(scores))
        return None if scores[best] == -np.inf else (float(scores[best]), self.bodies[best])

    def add(self, key: str, vector: NDArray[np.float32], body: str, expires: float) -> None:
        n = len(self.keys)
        if n == len(self.matrix):
            self._resize(2 * n)
        self.matrix[n], self.expires[n] = vector, expires
        self.keys.append(key)
        self.bodies.append(body)
        self.rows[key] = n

    def remove(self, key: str) -> None:
        row, last = self.rows.pop(key), len(self.keys) - 1
        if row != last:
            self.matrix[row], self.expires[row] = self.matrix[last], self.expires[last]
            self.keys[row], self.bodies[row] = self.keys[last], self.bodies[last]
            self.rows[self.keys[row]] = row
        self.keys.pop()
        self.bodies.pop()
        if len(self.matrix) > _FIRST_ROWS and last <= len(self.matrix) // 4:
            self._resize(len(self.matrix) // 2)

    def _resize(self, rows: int) -> None:
        import numpy as np

        n = len(self.keys)
        matrix, expires = np.empty((rows, self.size), np.float32), np.empty(rows, np.float64)
        matrix[:n], expires[:n] = self.matrix[:n], self.expires[:n]
        self.matrix, self.expires = matrix, expires


class MemoryIndex:
    """The in-process index: per namespace a matrix of vectors (`_Space`, at most `max_entries` each),
    bounded across namespaces by entries and bytes, the oldest entry evicted first. Entries leave in the
    order they were added (`_order`), which is the order they expire in (the cache gives every entry one
    ttl): any lookup or store, in any namespace, frees the expired ones, and with no requests a timer does,
    at most `SWEEP_SLACK_S` late. numpy comes with the embeddings extra (sentence-transformers)."""

    def __init__(self, max_entries: int, *, max_total_entries: int = MAX_TOTAL_ENTRIES,
                 max_total_bytes: int = MAX_TOTAL_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        require("numpy", "embeddings")
        self.max_entries = max_entries
        self.max_total_entries = max(max_entries, max_total_entries)
        self.max_total_bytes = max_total_bytes
        self.bytes = 0  # held now: answers' JSON and vectors
        self._clock = clock
        self._spaces: dict[str, _Space] = {}
        self._order: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()  # -> expires, bytes
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._order)

    async def nearest(self, space: str, vector: list[float]) -> tuple[float, str] | None:
        import numpy as np

        now = self._clock()
        self._sweep(now)
        entries = self._spaces.get(space)
        if entries is None or entries.size != len(vector):
            return None
        return entries.nearest(np.asarray(vector, np.float32), now)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._spaces.clear()
        self._order.clear()
        self.bytes = 0

    async def add(self, space: str, vector: list[float], body: str, ttl_s: float) -> None:
        import numpy as np

        now = self._clock()
        self._sweep(now)
        row = np.asarray(vector, np.float32)
        size = len(body) + row.nbytes  # the body is ASCII JSON (json.dumps escapes the rest)
        key = hashlib.sha256(row.tobytes()).hexdigest()
        if size > self.max_total_bytes:
            return
        if (space, key) in self._order:
            self._remove(space, key)
        entries = self._spaces.get(space)
        if entries is None:
            entries = self._spaces[space] = _Space(len(row))
        elif entries.size != len(row):
            return  # another model's vectors (cannot happen within one process's configuration)
        entries.add(key, row, body, now + ttl_s)
        self._order[(space, key)] = (now + ttl_s, size)
        self.bytes += size
        while len(entries) > self.max_entries:
            self._remove(space, entries.oldest())
        self._bound()
        self._arm()

    def _remove(self, space: str, key: str) -> None:
        self.bytes -= self._order.pop((space, key))[1]
        entries = self._spaces[space]
        entries.remove(key)
        if not entries:
            del self._spaces[space]

    def _bound(self) -> None:
        """The oldest entries (any namespace) out until the totals are within bounds."""
        while len(self._order) > self.max_total_entries or self.bytes > self.max_total_bytes:
            self._remove(*next(iter(self._order)))

    def _sweep(self, now: float) -> None:
        """The expired entries out, oldest first (one check when none is due)."""
        while self._order:
            (space, key), (expires, _) = next(iter(self._order.items()))
            if expires >= now:
                return
            self._remove(space, key)

    def _arm(self) -> None:
        """One timer at a time, for the oldest entry's expiry (plus slack): frees them with no requests."""
        if self._timer is not None or not self._order:
            return
        expires = next(iter(self._order.values()))[0]
        delay = max(0.0, expires - self._clock()) + SWEEP_SLACK_S
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._sweep(self._clock())
        self._arm()


class RedisIndex:
    """One Redis hash per namespace (entry id -> vector and body, JSON), expiring with the newest entry;
    the scan happens here. Any Redis error is a miss (lookups) or a skipped store."""

    def __init__(self, client: Any, prefix: str, max_entries: int) -> None:
        self.client, self.prefix, self.max_entries = client, prefix, max_entries

    def _key(self, space: str) -> str:
        return f"{self.prefix}semcache:{space}"

    async def close(self) -> None:
        await self.client.aclose()

    async def nearest(self, space: str, vector: list[float]) -> tuple[float, str] | None:
        try:
            raw = await self.client.hgetall(self._key(space))
        except Exception as exc:
            log.warning("semantic cache lookup failed (a miss): %s", exc)
            return None
        best: tuple[float, str] | None = None
        for value in raw.values():
            item = json.loads(value)
            score = cosine(vector, item["v"])
            if best is None or score > best[0]:
                best = (score, item["b"])
        return best

    async def add(self, space: str, vector: list[float], body: str, ttl_s: float) -> None:
        key = self._key(space)
        entry = hashlib.sha256(json.dumps(vector).encode()).hexdigest()[:24]
        try:
            if await self.client.hlen(key) >= self.max_entries:
                return
            await self.client.hset(key, entry, json.dumps({"v": vector, "b": body}))
            await self.client.pexpire(key, int(ttl_s * 1000))
        except Exception as exc:
            log.warning("semantic cache store failed (skipped): %s", exc)


@dataclass
class Lookup:
    space: str
    vector: list[float]
    body: dict[str, Any] | None = None
    score: float = 0.0


class SemanticCache:
    def __init__(self, index: VectorIndex, embed: Embed, threshold: float, ttl_s: float,
                 max_entry_bytes: int) -> None:
        self.index, self.embed, self.threshold = index, embed, threshold
        self.ttl_s, self.max_entry_bytes = ttl_s, max_entry_bytes

    async def lookup(self, space: str, text: str, *, deadline: float, priority: Priority = "interactive") -> Lookup:
        """`deadline` (time.monotonic()) bounds the embedding, its wait at admission included."""
        vector = (await self.embed([text], deadline, priority))[0]
        found = await self.index.nearest(space, vector)
        if found is not None and found[0] >= self.threshold:
            return Lookup(space, vector, json.loads(found[1]), found[0])
        return Lookup(space, vector, None, found[0] if found else 0.0)

    async def close(self) -> None:
        await self.index.close()

    async def store(self, lookup: Lookup, body: dict[str, Any]) -> None:
        raw = json.dumps(body, separators=(",", ":"))
        if len(raw) <= self.max_entry_bytes:
            await self.index.add(lookup.space, lookup.vector, raw, self.ttl_s)


def build_semantic_cache(settings: Settings, pool: ModelPool) -> SemanticCache | None:
    """The configured semantic cache (None when it is off): its index in Redis with the redis backend."""
    cfg = settings.cache.semantic
    if not cfg.enabled:
        return None
    model = settings.model(cfg.model)
    if model is None or model.kind != "embeddings":
        raise ConfigError(f"cache.semantic.model {cfg.model!r} is not an embeddings model of this server")

    async def embed(texts: Sequence[str], deadline: float, priority: Priority) -> list[list[float]]:
        served, engine = pool.embedding_engine(cfg.model)
        async with served.admission.slot(deadline, priority):
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return (await engine.embed(list(texts))).vectors
            except TimeoutError:
                raise DeadlineExceeded("the semantic cache's embedding ran past the request's deadline") from None

    index: VectorIndex
    if settings.state.backend == "redis":
        from llmops.stores import redis_store

        client = redis_store.connect(settings.state.redis_url, settings.state.redis_timeout_s)
        index = RedisIndex(client, settings.state.redis_prefix, cfg.max_entries)
    else:
        index = MemoryIndex(cfg.max_entries)
    return SemanticCache(index, embed, cfg.threshold, settings.cache.ttl_s, settings.cache.max_entry_bytes)
