"""The semantic cache's Redis index against a real redis-server: the same hits, misses, thresholds, expiry
and namespace rules as before it kept vectors as one string per namespace; large answers; many candidates
scored in one matrix product in a worker thread (the loop keeps turning), at most MAX_SCAN_ROWS of them;
and the app built with the redis backend."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmops.pipeline import semantic_cache
from llmops.pipeline.semantic_cache import RedisIndex, SemanticCache
from llmops.stores import redis_store
from tests.helpers import RedisServer, ready_client, write_config
from tests.loop_turns import loop_turns

PREFIX = "t:"


def units(n: int, size: int = 384, seed: int = 0) -> list[list[float]]:
    """`n` random unit vectors (nearly orthogonal at this size: each is its own nearest)."""
    import numpy as np

    rows = np.random.default_rng(seed).standard_normal((n, size))
    return [list(map(float, row)) for row in rows / np.linalg.norm(rows, axis=1, keepdims=True)]


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def chat(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A client as the app makes it (decode_responses: the vectors are read as bytes all the same)."""
    c = redis_store.connect(redis_server.url, 5.0)
    yield c
    await c.aclose()


def guarded(client: Any, errors: list[str] | None = None) -> redis_store.RedisGuard:
    """The guard the app puts around the index's calls: its timeout, failing open, errors counted."""
    return redis_store.RedisGuard(client, 0.25, True, (errors if errors is not None else []).append)


def cache_over(index: RedisIndex, vectors: dict[str, list[float]], threshold: float = 0.9,
               max_entry_bytes: int = 10_000_000) -> SemanticCache:
    async def embed(texts: Any, deadline: float, priority: Any) -> list[list[float]]:
        return [vectors[texts[0]]]

    return SemanticCache(index, embed, threshold=threshold, ttl_s=60, max_entry_bytes=max_entry_bytes)


async def test_hits_misses_thresholds_and_namespaces(client: Any) -> None:
    vectors = {"q": unit(1, 0, 0, 0), "close": unit(1, 0.3, 0, 0), "far": unit(1, 1.2, 0, 0),
               "short": unit(1, 0)}
    cache = cache_over(RedisIndex(guarded(client), PREFIX, 10), vectors)
    first = await cache.lookup("space", "q", deadline=0.0)
    assert (first.body, first.score) == (None, 0.0)  # nothing stored yet
    await cache.store(first, chat("Paris"))
    close = await cache.lookup("space", "close", deadline=0.0)
    assert close.body == chat("Paris")
    assert close.score == pytest.approx(1 / math.sqrt(1.09), abs=1e-6)  # 0.958: at least the threshold
    far = await cache.lookup("space", "far", deadline=0.0)
    assert far.body is None
    assert far.score == pytest.approx(1 / math.sqrt(2.44), abs=1e-6)  # 0.640: the score of a miss is kept
    assert (await cache.lookup("other space", "q", deadline=0.0)).body is None
    assert (await cache.lookup("space", "short", deadline=0.0)).body is None  # another size of vector
    exact = cache_over(RedisIndex(guarded(client), PREFIX, 10), vectors, threshold=0.96)
    assert (await exact.lookup("space", "close", deadline=0.0)).body is None  # 0.958 < 0.96


async def test_a_vector_stored_again_gets_the_new_answer_and_a_full_namespace_takes_nothing(client: Any) -> None:
    index = RedisIndex(guarded(client), PREFIX, 2)
    v0, v1, v2 = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    await index.add("a", v0, "first", 60)
    await index.add("a", v0, "second", 60)
    assert await index.nearest("a", v0) == (pytest.approx(1.0), "second")
    await index.add("a", v1, "b", 60)  # full: 2 entries
    await index.add("a", v2, "c", 60)
    await index.add("a", v0, "third", 60)  # full: not even a new answer
    assert await index.nearest("a", v0) == (pytest.approx(1.0), "second")
    assert await index.nearest("a", v1) == (pytest.approx(1.0), "b")
    found = await index.nearest("a", v2)
    assert found is not None
    assert found[0] == pytest.approx(0.0, abs=1e-6)  # c was never stored


async def test_the_namespace_expires_with_its_newest_entry(client: Any) -> None:
    index = RedisIndex(guarded(client), PREFIX, 10)
    v0, v1 = unit(1, 0), unit(0, 1)
    keys = [f"{PREFIX}semcache:a:2:v", f"{PREFIX}semcache:a:2:a"]
    await index.add("a", v0, "zero", 1000)
    assert all(0 < ttl <= 1_000_000 for ttl in [await client.pttl(key) for key in keys])
    await index.add("a", v1, "one", 3000)
    ttls = [await client.pttl(key) for key in keys]
    assert all(2_000_000 < ttl <= 3_000_000 for ttl in ttls)  # both keys, from the newest entry
    await index.add("b", v0, "short-lived", 0.05)
    deadline = asyncio.get_running_loop().time() + 10
    while await index.nearest("b", v0) is not None:
        assert asyncio.get_running_loop().time() < deadline, "the namespace never expired"
        await asyncio.sleep(0.02)
    await index.add("b", v0, "again", 60)
    assert await index.nearest("b", v0) == (pytest.approx(1.0), "again")


async def test_a_namespace_whose_vectors_expired_first_starts_over(client: Any) -> None:
    index = RedisIndex(guarded(client), PREFIX, 10)
    v0, v1 = unit(1, 0), unit(0, 1)
    await index.add("a", v0, "old", 60)
    await index.add("a", v1, "old one", 60)
    await client.delete(f"{PREFIX}semcache:a:2:v")  # as if it expired a moment before the answers
    await index.add("a", v1, "new", 60)
    assert await index.nearest("a", v1) == (pytest.approx(1.0), "new")
    assert await index.nearest("a", v0) == (pytest.approx(0.0, abs=1e-6), "new")  # old is gone


async def test_a_miss_below_the_threshold_does_not_fetch_the_answer(client: Any) -> None:
    index = RedisIndex(guarded(client), PREFIX, 10)
    await index.add("a", unit(1, 0), "x" * 100_000, 60)
    found = await index.nearest("a", unit(1, 1), floor=0.9)
    assert found == (pytest.approx(math.sqrt(0.5)), None)


@pytest.mark.parametrize("text", ["plain words. " * 90_000, "東京は日本の首都です。😀" * 80_000])
async def test_a_large_answer_is_served_as_it_was_stored(client: Any, text: str) -> None:
    body = chat(text)
    size = len(json.dumps(body, separators=(",", ":")))
    for limit, kept in ((size, True), (size - 1, False)):
        cache = cache_over(RedisIndex(guarded(client), f"{PREFIX}{limit}:", 10), {"q": unit(1, 0)},
                           max_entry_bytes=limit)
        await cache.store(await cache.lookup("space", "q", deadline=0.0), body)
        assert (await cache.lookup("space", "q", deadline=0.0)).body == (body if kept else None)


async def test_many_candidates_each_find_their_own_and_at_most_max_scan_rows_are_kept(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic_cache, "MAX_SCAN_ROWS", 1500)  # 576,000 floats: scored in a thread
    vectors = units(1600)
    index = RedisIndex(guarded(client), PREFIX, 5000)
    for i, v in enumerate(vectors):
        await index.add("a", v, f"b{i}", 60)
    assert await client.strlen(f"{PREFIX}semcache:a:384:v") == 1500 * 384 * 4
    for i in (0, 777, 1499):
        assert await index.nearest("a", vectors[i]) == (pytest.approx(1.0, abs=1e-5), f"b{i}")
    beyond = await index.nearest("a", vectors[1500])
    assert beyond is not None
    assert beyond[0] < 0.5  # not kept: the best is another vector


async def test_a_lookup_with_many_candidates_lets_the_loop_run(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scoring, wrapped, waits in its thread until the loop has turned: it cannot on the loop."""
    vectors = units(1400)  # 537,600 floats: above OFF_LOOP_SCORES
    index = RedisIndex(guarded(client), PREFIX, 5000)
    for i, v in enumerate(vectors):
        await index.add("a", v, f"b{i}", 60)
    await index.add("few", vectors[0], "alone", 60)
    async with loop_turns() as turns:
        monkeypatch.setattr(semantic_cache, "_best", turns.wrap(semantic_cache._best))
        assert await index.nearest("a", vectors[5]) == (pytest.approx(1.0, abs=1e-5), "b5")
        assert await index.nearest("few", vectors[0]) == (pytest.approx(1.0, abs=1e-5), "alone")
    assert turns.calls == ["thread", "loop"]
    assert turns.waited == [True]


async def test_a_redis_error_is_a_miss_and_a_skipped_store(client: Any, redis_server: RedisServer) -> None:
    errors: list[str] = []
    cache = cache_over(RedisIndex(guarded(client, errors), PREFIX, 10), {"q": unit(1, 0)})
    first = await cache.lookup("space", "q", deadline=0.0)
    await cache.store(first, chat("Paris"))
    assert not errors
    redis_server.stop()
    missed = await cache.lookup("space", "q", deadline=0.0)
    assert (missed.body, missed.score) == (None, 0.0)
    await cache.store(missed, chat("Paris"))  # skipped, no error
    assert errors == ["semantic_lookup", "semantic_store"]  # counted, as the state store's errors are


async def test_a_hung_redis_is_a_miss_within_the_timeout() -> None:
    """A Redis that accepts the connection and never answers: the lookup and the store give up at the
    guard's timeout instead of holding the request (the client has no socket timeout of its own)."""
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(-1)  # reads everything, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis_store.connect(f"redis://127.0.0.1:{port}/0", 0.25)
    errors: list[str] = []
    try:
        cache = cache_over(RedisIndex(guarded(client, errors), PREFIX, 10), {"q": unit(1, 0)})
        async with asyncio.timeout(10):  # the guard's 0.5 s each; this only keeps a failure from hanging
            missed = await cache.lookup("space", "q", deadline=0.0)
            await cache.store(missed, chat("Paris"))
        assert missed.body is None
        assert errors == ["semantic_lookup", "semantic_store"]
    finally:
        await client.aclose()
        server.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()


def test_the_app_with_the_redis_backend_answers_a_paraphrase_from_redis(tmp_path: Path,
                                                                       redis_server: RedisServer) -> None:
    models: list[dict[str, Any]] = [
        {"name": "fake", "engine": "fake"},
        {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16}}]
    cfg = write_config(tmp_path / "sem.yaml", models, state={"backend": "redis", "redis_url": redis_server.url},
                       cache={"semantic": {"enabled": True, "model": "emb", "threshold": 0.99}})
    with ready_client(cfg, 30) as http:
        def ask(text: str) -> Any:
            resp = http.post("/v1/chat/completions", json={
                "model": "fake", "temperature": 0.7, "messages": [{"role": "user", "content": text}]})
            assert resp.status_code == 200, resp.text
            return resp

        first = ask("What is the capital of France?")
        assert first.headers["X-Cache"] == "miss"
        again = ask("what  IS the capital of france")
        assert again.headers["X-Cache"] == "hit"
        assert again.json()["choices"] == first.json()["choices"]
        assert ask("What is the capital of Spain?").headers["X-Cache"] == "miss"
