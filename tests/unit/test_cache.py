from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from llmops.observability.metrics import Metrics
from llmops.pipeline.cache import ResponseCacher
from llmops.settings import CacheSettings
from llmops.stores.cache import MemoryCache
from llmops.stores.keys import new_key

PAYLOAD = {"model": "m", "messages": [["user", "hi"]], "sampling": {"temperature": 0}}


def request(headers: dict[str, str] | None = None, key: Any = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "state": {"api_key": key}})


def test_lru_evicts_the_least_recent_and_expires() -> None:
    async def run() -> None:
        cache = MemoryCache(max_entries=2)
        await cache.put("a", "1", 60)
        await cache.put("b", "2", 60)
        assert await cache.get("a") == "1"  # a is now the most recent
        await cache.put("c", "3", 60)
        assert await cache.get("b") is None
        assert await cache.get("a") == "1"
        await cache.put("d", "4", -1)  # already expired
        assert await cache.get("d") is None

    asyncio.run(run())


def test_keys_bypass_and_scope() -> None:
    cacher = ResponseCacher(MemoryCache(8), CacheSettings(enabled=True), Metrics())
    assert cacher.key(request(), "chat", PAYLOAD, True) == cacher.key(request(), "chat", PAYLOAD, True)
    assert cacher.key(request(), "chat", PAYLOAD, False) is None  # not deterministic
    assert cacher.key(request({"Cache-Control": "no-cache"}), "chat", PAYLOAD, True) is None
    assert cacher.key(request(), "chat", PAYLOAD, True) != cacher.key(request(), "completions", PAYLOAD, True)
    one, two = new_key("a", (), "interactive")[0], new_key("b", (), "interactive")[0]
    shared = cacher.key(request(key=one), "chat", PAYLOAD, True)
    assert shared == cacher.key(request(key=two), "chat", PAYLOAD, True)  # global scope: one entry
    scoped = ResponseCacher(MemoryCache(8), CacheSettings(enabled=True, scope="key"), Metrics())
    assert scoped.key(request(key=one), "chat", PAYLOAD, True) != scoped.key(request(key=two), "chat", PAYLOAD, True)


def test_the_cache_is_off_by_default() -> None:
    """A repeated deterministic request runs the model unless the operator turned the cache on."""
    cacher = ResponseCacher(MemoryCache(8), CacheSettings(), Metrics())
    assert cacher.key(request(), "chat", PAYLOAD, True) is None
