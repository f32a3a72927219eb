"""The precision guard over the Redis index, against a real redis-server: each entry's signature is kept
beside its answer, a refused best neighbour gives way to the next that agrees (its answer fetched then), an
entry stored without a signature (before the guard) or with another version's is refused, and a hit on the
best costs no more round trips than before."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmops.pipeline import cache_guard, semantic_cache
from llmops.pipeline.cache_guard import signature
from llmops.pipeline.semantic_cache import RedisIndex, SemanticCache, normalise
from llmops.stores import redis_store
from tests.helpers import RedisServer

PREFIX = "g:"


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def user(text: str) -> str:
    return normalise([("user", text)])


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    c = redis_store.connect(redis_server.url, 5.0)
    yield c
    await c.aclose()


class Counted:
    """The client's HMGET and HGET calls, counted (the index's round trips for answers and tags)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if name in ("hmget", "hget"):
            def counted(*args: Any) -> Any:
                self.calls.append(name)
                return attr(*args)
            return counted
        return attr


def guarded_cache(client: Any, vectors: dict[str, list[float]]) -> tuple[SemanticCache, Counted]:
    counted = Counted(client)
    index = RedisIndex(redis_store.RedisGuard(client, 1.0, True, lambda _: None), PREFIX, 10)
    index.client = counted

    async def embed(texts: Any, deadline: float, priority: Any) -> list[list[float]]:
        return [vectors[texts[0]]]

    cache = SemanticCache(index, embed, threshold=0.9, ttl_s=60, max_entry_bytes=10_000,
                          guard=semantic_cache.GUARD_RULE)
    return cache, counted


async def test_a_refused_best_gives_way_to_the_next_that_agrees(client: Any) -> None:
    vectors = {user("What is 2+3").lower(): unit(1, 0.1), user("what's 2 + 2").lower(): unit(1, 0.3),
               user("What is 2+2").lower(): unit(1, 0)}
    cache, counted = guarded_cache(client, vectors)
    for text in ("What is 2+3", "what's 2 + 2"):
        await cache.store(await cache.lookup("s", user(text), deadline=0.0), {"answer": text})
    tag = await client.hget(f"{PREFIX}semcache:s:2:a", "t0")
    assert tag == signature(user("What is 2+3")).dumps()
    counted.calls.clear()
    found = await cache.lookup("s", user("What is 2+2"), deadline=0.0)
    assert (found.body, found.refused) == ({"answer": "what's 2 + 2"}, ["number"])
    assert counted.calls == ["hmget", "hget"]  # the tags and the best's answer, then the chosen one's answer
    counted.calls.clear()
    same = await cache.lookup("s", user("What is 2+3?"), deadline=0.0)
    assert (same.body, same.refused) == ({"answer": "What is 2+3"}, [])
    assert counted.calls == ["hmget"]  # the best agrees: one round trip, as an unguarded hit


async def test_an_entry_in_the_layout_before_the_guard_is_refused_then_signed(client: Any) -> None:
    """Written as the index wrote entries before they had tags: the vector, its row, the answer, no 't0'."""
    import numpy as np

    text = user("What is 2+3")
    vector = unit(1, 0)
    cache, _ = guarded_cache(client, {text.lower(): vector})
    row = np.asarray(vector, "<f4").tobytes()
    key = f"{PREFIX}semcache:s:2"
    await client.append(f"{key}:v", row)
    await client.hset(f"{key}:a", mapping={f"v:{hashlib.sha256(row).hexdigest()[:24]}": "0",
                                           "0": '{"answer": "4"}'})
    assert await client.hget(f"{key}:a", "t0") is None
    found = await cache.lookup("s", text, deadline=0.0)
    assert (found.body, found.refused) == (None, ["unsigned"])
    await cache.store(found, {"answer": "5"})  # the same vector: the new answer, with its signature
    assert await client.hget(f"{key}:a", "t0") == signature(text).dumps()
    assert (await cache.lookup("s", text, deadline=0.0)).body == {"answer": "5"}


async def test_an_entry_signed_by_another_guard_version_is_refused(client: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    text = user("Is it safe to eat raw chicken")
    cache, _ = guarded_cache(client, {text.lower(): unit(1, 0)})
    with monkeypatch.context() as older:
        older.setattr(cache_guard, "VERSION", cache_guard.VERSION - 1)  # stored by an earlier release
        await cache.store(await cache.lookup("s", text, deadline=0.0), {"answer": "no"})
    found = await cache.lookup("s", text, deadline=0.0)
    assert (found.body, found.refused) == (None, ["unsigned"])
    await cache.store(found, {"answer": "no"})
    assert (await cache.lookup("s", text, deadline=0.0)).body == {"answer": "no"}


async def test_an_entry_stored_without_a_signature_is_refused(client: Any) -> None:
    text = user("What is the capital of France")
    cache, _ = guarded_cache(client, {text.lower(): unit(1, 0)})
    await cache.index.add("s", unit(1, 0), '{"answer": "Paris"}', 60)  # as the index stored them before
    found = await cache.lookup("s", text, deadline=0.0)
    assert (found.body, found.refused) == (None, ["unsigned"])
    await cache.store(found, {"answer": "Paris"})  # the same vector stored again: its signature with it
    assert (await cache.lookup("s", text, deadline=0.0)).body == {"answer": "Paris"}
