"""The response cache: exact match on the normalised request, for deterministic requests only
(temperature 0, or a seed given). A hit returns the stored body unchanged, replayed as a stream to a
streaming request; a request opts out with `Cache-Control: no-cache` or `no-store` (read at the edge into
`RequestContext.cache_opt_out`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal

from llmops.observability.metrics import Metrics
from llmops.settings import CacheSettings
from llmops.stores.cache import ResponseCache

Result = Literal["hit", "miss", "bypass"]


def cache_key(kind: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, **payload}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def opted_out(cache_control: str | None) -> bool:
    directives = (cache_control or "").lower()
    return "no-cache" in directives or "no-store" in directives


class ResponseCacher:
    def __init__(self, store: ResponseCache, settings: CacheSettings, metrics: Metrics) -> None:
        self.store, self.settings, self.metrics = store, settings, metrics

    def key(self, kind: str, payload: dict[str, Any] | Callable[[], dict[str, Any] | None] | None, *,
            opt_out: bool, key_id: str | None) -> str | None:
        """The cache key, or None when this request must not use the cache (`payload` None: not deterministic).
        `payload` may be a function, called only when the cache is on and the request did not opt out."""
        if not self.settings.enabled or payload is None or opt_out:
            return None
        if callable(payload):
            payload = payload()
            if payload is None:
                return None
        if self.settings.scope == "key":
            payload = {**payload, "api_key": key_id}
        return cache_key(kind, payload)

    def scoped(self, space: str, key_id: str | None) -> str:
        """A semantic-cache namespace under the cache's scope: with `scope: key` each API key has its own, as
        it has its own exact-cache keys (no key's answers are served to another)."""
        if self.settings.scope != "key":
            return space
        return hashlib.sha256(f"{space}\0{key_id}".encode()).hexdigest()[:32]

    async def get(self, key: str | None) -> dict[str, Any] | None:
        """The stored answer (None: none, or no key). The lookup is counted by the caller, once, with the
        semantic cache's outcome (pipeline/stages.cache_lookup)."""
        if key is None:
            return None
        raw = await self.store.get(key)
        return json.loads(raw) if raw is not None else None

    async def put(self, key: str | None, body: dict[str, Any]) -> None:
        if key is None:
            return
        raw = json.dumps(body, separators=(",", ":"))
        if len(raw) <= self.settings.max_entry_bytes:
            await self.store.put(key, raw, self.settings.ttl_s)
