"""The in-process semantic cache index is bounded across namespaces (entries and bytes, oldest out first),
frees expired entries without a lookup in their namespace, and finds the nearest entry with one matrix
product per lookup (rows moved around as entries leave must keep their answers), in a worker thread when
the namespace is large; a large answer comes back as it was stored."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from typing import Any

import pytest

from llmops.pipeline import semantic_cache
from llmops.pipeline.semantic_cache import MemoryIndex, SemanticCache
from tests.loop_turns import loop_turns


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def axis(i: int, size: int = 8) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(size)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_new_namespace_per_request_does_not_grow_without_bound() -> None:
    """150 requests, each with its own temperature (namespace) and a 1 MiB answer: the oldest leave."""
    index = MemoryIndex(1024)
    answer = "x" * 2**20
    for i in range(150):
        await index.add(f"temperature-{i}", axis(0), answer, 3600)
    assert await index.nearest("temperature-0", axis(0)) is None  # evicted, though alone in its namespace
    newest = await index.nearest("temperature-149", axis(0))
    assert newest is not None
    assert newest[1] is answer
    assert len(index) * (2**20 + 32) == index.bytes <= semantic_cache.MAX_TOTAL_BYTES
    await index.close()


async def test_entries_are_bounded_across_namespaces_oldest_first() -> None:
    index = MemoryIndex(3, max_total_entries=5)
    for i in range(4):
        await index.add("a", axis(i), f"a{i}", 60)  # a0 leaves: 3 per namespace
    for i in range(3):
        await index.add(f"space-{i}", axis(i), f"s{i}", 60)
    assert len(index) == 5
    assert await index.nearest("a", axis(0)) != (1.0, "a0")
    found = await index.nearest("a", axis(1))
    assert found is not None
    assert found[0] == 0.0  # a1 was the oldest entry of all: gone
    assert await index.nearest("a", axis(2)) == (1.0, "a2")
    assert await index.nearest("a", axis(3)) == (1.0, "a3")
    assert [await index.nearest(f"space-{i}", axis(i)) for i in range(3)] == [(1.0, "s0"), (1.0, "s1"), (1.0, "s2")]
    await index.close()


async def test_a_body_larger_than_the_whole_bound_is_not_stored() -> None:
    index = MemoryIndex(10, max_total_bytes=4096)
    await index.add("a", axis(0), "small", 60)
    await index.add("b", axis(1), "x" * 5000, 60)
    assert len(index) == 1
    assert await index.nearest("a", axis(0)) == (1.0, "small")
    await index.close()


async def test_expired_entries_leave_without_a_lookup_in_their_namespace() -> None:
    clock = Clock()
    index = MemoryIndex(10, clock=clock)
    for i in range(5):
        await index.add(f"old-{i}", axis(i), "x" * 1000, 10)
    clock.now += 11
    await index.nearest("elsewhere", axis(0))  # a lookup in another namespace frees them
    assert len(index) == 0
    assert index.bytes == 0
    await index.add("a", axis(0), "kept", 10)
    clock.now += 5
    await index.add("b", axis(1), "kept too", 10)
    clock.now += 6
    await index.add("c", axis(2), "new", 10)  # so does a store
    assert len(index) == 2
    assert await index.nearest("a", axis(0)) is None
    assert await index.nearest("b", axis(1)) == (1.0, "kept too")
    await index.close()


async def test_with_no_requests_a_timer_frees_expired_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic_cache, "SWEEP_SLACK_S", 0.0)
    index = MemoryIndex(10)
    await index.add("a", axis(0), "answer", 0.01)
    await index.add("b", axis(1), "answer", 0.01)
    deadline = asyncio.get_running_loop().time() + 10
    while len(index):  # no lookup nor store comes: only the timer, due at 0.01 s, can free them
        assert asyncio.get_running_loop().time() < deadline, "the expired entries were never freed"
        await asyncio.sleep(0.01)
    assert index.bytes == 0
    await index.close()


async def test_an_entry_with_a_shorter_ttl_than_older_ones_is_not_served_once_expired() -> None:
    clock = Clock()
    index = MemoryIndex(10, clock=clock)
    await index.add("a", axis(0), "long", 100)
    await index.add("a", axis(1), "short", 1)
    clock.now += 2
    assert await index.nearest("a", axis(1)) == (0.0, "long")
    await index.close()


async def test_nearest_is_the_best_cosine_as_rows_move() -> None:
    index = MemoryIndex(4)
    for i in range(7):  # 0, 1, 2 leave; rows are moved as they do
        await index.add("a", axis(i), f"b{i}", 60)
    for i in range(3, 7):
        assert await index.nearest("a", axis(i)) == (1.0, f"b{i}")
    best = await index.nearest("a", unit(0, 0, 0, 0, 1, 3, 0, 0))
    assert best is not None
    assert best[1] == "b5"
    assert best[0] == pytest.approx(3 / math.sqrt(10), abs=1e-6)
    await index.add("a", axis(5), "b5 again", 60)  # the same vector: replaced, not added
    assert len(index) == 4
    assert await index.nearest("a", axis(5)) == (1.0, "b5 again")
    assert await index.nearest("a", axis(0, size=4)) is None  # another size of vector: a miss, not an error
    await index.close()


async def test_a_namespace_gives_back_its_matrix_as_it_empties() -> None:
    index = MemoryIndex(200, max_total_entries=210)
    for i in range(200):
        await index.add("a", axis(i, size=200), f"a{i}", 60)
    assert len(index._spaces["a"].matrix) == 256
    for i in range(200):
        await index.add("b", axis(i, size=200), f"b{i}", 60)  # 190 of a's leave, oldest first
    kept = index._spaces["a"]
    assert len(kept) == 10
    assert len(kept.matrix) <= 40
    for i in range(190, 200):
        assert await index.nearest("a", axis(i, size=200)) == (1.0, f"a{i}")
    await index.close()


async def test_semantic_cache_store_and_lookup_over_the_index() -> None:
    async def embed(texts: object, deadline: float, priority: object) -> list[list[float]]:
        return [axis(0)]

    cache = SemanticCache(MemoryIndex(10), embed, threshold=0.9, ttl_s=60, max_entry_bytes=10_000)
    first = await cache.lookup("space", "question", deadline=0.0)
    assert first.body is None
    await cache.store(first, {"answer": 42})
    again = await cache.lookup("space", "question", deadline=0.0)
    assert again.body == {"answer": 42}
    assert again.score == pytest.approx(1.0)
    await cache.close()


def units(n: int, size: int = 384, seed: int = 0) -> list[list[float]]:
    """`n` random unit vectors (nearly orthogonal at this size: each is its own nearest)."""
    import numpy as np

    rows = np.random.default_rng(seed).standard_normal((n, size))
    return [list(map(float, row)) for row in rows / np.linalg.norm(rows, axis=1, keepdims=True)]


def chat(content: str) -> dict[str, object]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}


async def test_many_candidates_are_scored_in_a_thread_and_each_finds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = units(1500)  # 576,000 floats: above OFF_LOOP_SCORES
    index = MemoryIndex(4096)
    for i, v in enumerate(vectors):
        await index.add("a", v, f"b{i}", 60)
    await index.add("small", axis(0), "alone", 60)
    async with loop_turns() as turns:
        monkeypatch.setattr(semantic_cache, "_best", turns.wrap(semantic_cache._best))
        for i in (0, 777, 1499):
            found = await index.nearest("a", vectors[i])
            assert found is not None
            assert found[1] == f"b{i}"
            assert found[0] == pytest.approx(1.0, abs=1e-5)
        assert await index.nearest("small", axis(0)) == (1.0, "alone")
    assert turns.calls == ["thread"] * 3 + ["loop"]  # a few vectors stay on the loop
    assert turns.waited == [True] * 3  # the loop turned while each lookup's scoring waited in its thread
    await index.close()


async def test_a_store_that_moves_rows_while_a_thread_scores_them_is_scored_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scoring again, the thread's best row (b0's, row 0) would hold b3 by the time its answer is
    read: b3's answer served for b0's question at a score of 1."""
    monkeypatch.setattr(semantic_cache, "OFF_LOOP_SCORES", 0)
    index = MemoryIndex(4)
    for i in range(4):
        await index.add("a", axis(i), f"b{i}", 60)
    scored, go = threading.Event(), threading.Event()
    real, loop_thread = semantic_cache._best, threading.get_ident()

    def paused(*args: Any) -> tuple[int, float]:
        assert threading.get_ident() != loop_thread
        best = real(*args)
        if not scored.is_set():  # the first scoring: hold its result until the rows have moved
            scored.set()
            go.wait(30)
        return best

    monkeypatch.setattr(semantic_cache, "_best", paused)
    lookup = asyncio.create_task(index.nearest("a", axis(0)))
    deadline = asyncio.get_running_loop().time() + 30
    while not scored.is_set():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)
    await index.add("a", axis(0), "b0 again", 60)  # b0 leaves (b3 moves to its row) and comes back last
    go.set()
    assert await lookup == (1.0, "b0 again")
    await index.close()


async def test_rows_evicted_while_a_thread_scores_them_do_not_fail_the_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread's best row may be gone when it returns (evicted by another namespace's stores): the answer
    is read on the loop, after the check, where it was read in the thread and raised IndexError (a 500)."""
    monkeypatch.setattr(semantic_cache, "OFF_LOOP_SCORES", 0)
    index = MemoryIndex(4, max_total_entries=4)
    for i in range(4):
        await index.add("a", axis(i), f"b{i}", 60)
    scored, go = threading.Event(), threading.Event()
    real = semantic_cache._best

    def paused(*args: Any) -> tuple[int, float]:
        best = real(*args)
        if not scored.is_set():
            scored.set()
            go.wait(30)
        return best

    monkeypatch.setattr(semantic_cache, "_best", paused)
    lookup = asyncio.create_task(index.nearest("a", axis(3)))  # its best is row 3, the last
    deadline = asyncio.get_running_loop().time() + 30
    while not scored.is_set():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)
    for i in range(3):  # the bound evicts "a"'s three oldest: row 3 moves to row 0, the list is one long
        await index.add("b", axis(i), f"other{i}", 60)
    go.set()
    assert await lookup == (1.0, "b3")
    await index.close()


@pytest.mark.parametrize("text", ["Paris.", "plain words. " * 90_000, "東京は日本の首都です。😀" * 80_000])
async def test_an_answer_is_served_as_it_was_stored_within_the_size_limit(text: str) -> None:
    """Small or large (1 MB, CJK and emoji): the limit is the compact JSON's length, to the character."""
    body = chat(text)
    size = len(json.dumps(body, separators=(",", ":")))

    async def embed(texts: object, deadline: float, priority: object) -> list[list[float]]:
        return [axis(0)]

    for limit, kept in ((size, True), (size - 1, False)):
        cache = SemanticCache(MemoryIndex(10), embed, threshold=0.9, ttl_s=60, max_entry_bytes=limit)
        await cache.store(await cache.lookup("space", "q", deadline=0.0), body)
        again = await cache.lookup("space", "q", deadline=0.0)
        assert again.body == (body if kept else None)
        await cache.close()
