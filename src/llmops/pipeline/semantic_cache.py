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

from llmops.errors import ConfigError, DeadlineExceeded
from llmops.scheduling.admission import Priority

if TYPE_CHECKING:
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


@dataclass
class Entry:
    vector: list[float]
    body: str
    expires: float


class VectorIndex(Protocol):
    async def nearest(self, space: str, vector: list[float]) -> tuple[float, str] | None: ...
    async def add(self, space: str, vector: list[float], body: str, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


class MemoryIndex:
    """Linear scan per namespace, newest entries kept (an LRU over `max_entries` per namespace)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._spaces: dict[str, OrderedDict[str, Entry]] = {}

    async def nearest(self, space: str, vector: list[float]) -> tuple[float, str] | None:
        entries = self._spaces.get(space)
        if not entries:
            return None
        now = time.monotonic()
        for key in [k for k, e in entries.items() if e.expires < now]:
            del entries[key]
        scored = [(cosine(vector, e.vector), e.body) for e in entries.values()]
        return max(scored, default=None, key=lambda s: s[0])

    async def close(self) -> None:
        self._spaces.clear()

    async def add(self, space: str, vector: list[float], body: str, ttl_s: float) -> None:
        entries = self._spaces.setdefault(space, OrderedDict())
        key = hashlib.sha256(json.dumps(vector).encode()).hexdigest()
        entries[key] = Entry(vector, body, time.monotonic() + ttl_s)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)


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
