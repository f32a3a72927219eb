from __future__ import annotations

import asyncio
from typing import Any

from llmops.observability.metrics import Metrics
from llmops.pipeline.cache import ResponseCacher, opted_out
from llmops.settings import CacheSettings
from llmops.stores.cache import MemoryCache

PAYLOAD = {"model": "m", "messages": [["user", "hi"]], "sampling": {"temperature": 0}}


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

    def key(c: ResponseCacher, kind: str, payload: Any, *, opt_out: bool = False, key_id: str | None = None) -> Any:
        return c.key(kind, payload, opt_out=opt_out, key_id=key_id)

    assert key(cacher, "chat", PAYLOAD) == key(cacher, "chat", PAYLOAD)
    assert key(cacher, "chat", None) is None  # not deterministic
    assert opted_out("no-cache")
    assert opted_out("max-age=0, No-Store")
    assert not opted_out(None)
    assert key(cacher, "chat", PAYLOAD, opt_out=True) is None
    assert key(cacher, "chat", PAYLOAD) != key(cacher, "completions", PAYLOAD)
    shared = key(cacher, "chat", PAYLOAD, key_id="one")
    assert shared == key(cacher, "chat", PAYLOAD, key_id="two")  # global scope: one entry
    scoped = ResponseCacher(MemoryCache(8), CacheSettings(enabled=True, scope="key"), Metrics())
    assert key(scoped, "chat", PAYLOAD, key_id="one") != key(scoped, "chat", PAYLOAD, key_id="two")


def test_the_cache_is_off_by_default() -> None:
    """A repeated deterministic request runs the model unless the operator turned the cache on."""
    cacher = ResponseCacher(MemoryCache(8), CacheSettings(), Metrics())
    assert cacher.key("chat", PAYLOAD, opt_out=False, key_id=None) is None
