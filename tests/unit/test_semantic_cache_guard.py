"""The precision guard inside the semantic cache: a neighbour above the threshold whose request disagrees
(pipeline/cache_guard.py) is not served, the next few are tried, an entry without a signature is refused;
and through the cache stage of the in-process app, "What is 2+2?" is not answered with "What is 2+3?"'s
answer while a paraphrase of it still is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from llmops.pipeline import cache_guard, semantic_cache
from llmops.pipeline.cache_guard import signature
from llmops.pipeline.semantic_cache import MemoryIndex, SemanticCache, normalise
from tests.helpers import ready_client, write_config


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def user(text: str) -> str:
    return normalise([("user", text)])


def cache_over(vectors: dict[str, list[float]], seen: list[str] | None = None,
               threshold: float = 0.9) -> SemanticCache:
    """A guarded cache whose embeddings are `vectors`, keyed by the text the cache embeds."""
    async def embed(texts: Any, deadline: float, priority: Any) -> list[list[float]]:
        if seen is not None:
            seen.extend(texts)
        return [vectors[texts[0]]]

    return SemanticCache(MemoryIndex(16), embed, threshold=threshold, ttl_s=60, max_entry_bytes=10_000,
                         guard=semantic_cache.GUARD_RULE)


async def test_the_nearest_neighbour_that_disagrees_is_refused_and_the_next_one_answers() -> None:
    vectors = {user("What is 2+3").lower(): unit(1, 0.1), user("what's 2 + 2").lower(): unit(1, 0.3),
               user("What is 2+2").lower(): unit(1, 0)}
    cache = cache_over(vectors)
    for text in ("What is 2+3", "what's 2 + 2"):
        await cache.store(await cache.lookup("s", user(text), deadline=0.0), {"answer": text})
    found = await cache.lookup("s", user("What is 2+2"), deadline=0.0)
    assert found.body == {"answer": "what's 2 + 2"}  # not "What is 2+3"'s, though it embeds closer
    assert found.score == pytest.approx(unit(1, 0.3)[0])
    assert found.refused == ["number"]
    await cache.close()


async def test_a_lookup_with_only_disagreeing_neighbours_is_a_miss_scored_as_the_best() -> None:
    vectors = {user("Is it safe to eat raw chicken").lower(): unit(1, 0.05),
               user("Is it not safe to eat raw chicken").lower(): unit(1, 0)}
    cache = cache_over(vectors)
    await cache.store(await cache.lookup("s", user("Is it safe to eat raw chicken"), deadline=0.0), {"a": "yes"})
    found = await cache.lookup("s", user("Is it not safe to eat raw chicken"), deadline=0.0)
    assert found.body is None
    assert found.score == pytest.approx(unit(1, 0.05)[0])  # above the threshold, refused
    assert found.refused == ["negation"]
    await cache.store(found, {"a": "no"})  # its own answer, found from now on
    again = await cache.lookup("s", user("Is it not safe to eat raw chicken"), deadline=0.0)
    assert again.body == {"a": "no"}
    await cache.close()


async def test_an_entry_without_a_signature_is_refused() -> None:
    """An entry stored before entries kept their request's signature (or by an unguarded cache)."""
    text = user("What is the capital of France")
    cache = cache_over({text.lower(): unit(1, 0)})
    await cache.index.add("s", unit(1, 0), '{"answer": "Paris"}', 60)
    found = await cache.lookup("s", text, deadline=0.0)
    assert (found.body, found.refused) == (None, ["unsigned"])
    await cache.close()


async def test_an_entry_signed_by_another_guard_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry whose signature an earlier release of the guard wrote (its meaning may have changed since)."""
    text = user("Is it safe to eat raw chicken")
    cache = cache_over({text.lower(): unit(1, 0)})
    with monkeypatch.context() as older:
        older.setattr(cache_guard, "VERSION", cache_guard.VERSION - 1)
        await cache.store(await cache.lookup("s", text, deadline=0.0), {"answer": "no"})
    found = await cache.lookup("s", text, deadline=0.0)
    assert (found.body, found.refused) == (None, ["unsigned"])
    await cache.store(found, {"answer": "no"})  # stored again under this version's signature
    assert (await cache.lookup("s", text, deadline=0.0)).body == {"answer": "no"}
    await cache.close()


async def test_at_most_guard_candidates_above_the_threshold_are_checked() -> None:
    questions = [f"What is {n}+{n}" for n in range(1, 8)]
    vectors = {user(q).lower(): unit(1, 0.01 * i) for i, q in enumerate(questions)}
    vectors[user("What is 9+9").lower()] = unit(1, 0)
    vectors[user("what is 7 + 7 ?").lower()] = unit(0, 1)  # agrees with 7+7, far below the threshold
    cache = cache_over(vectors)
    for q in questions:
        await cache.store(await cache.lookup("s", user(q), deadline=0.0), {"q": q})
    found = await cache.lookup("s", user("What is 9+9"), deadline=0.0)
    assert found.body is None
    assert found.refused == ["number"] * semantic_cache.GUARD_CANDIDATES
    far = await cache.lookup("s", user("what is 7 + 7 ?"), deadline=0.0)
    assert (far.body, far.refused) == (None, [])  # nothing at or above the threshold: nothing asked
    await cache.close()


async def test_the_request_is_embedded_lower_cased_and_its_signature_stored_with_the_answer() -> None:
    text = user("What is the capital of Austria?")
    seen: list[str] = []
    cache = cache_over({text.lower(): unit(1, 0)}, seen)
    first = await cache.lookup("s", text, deadline=0.0)
    assert seen == ["user: what is the capital of austria"]  # as the cache embedded it before it kept case
    await cache.store(first, {"answer": "Vienna"})
    tags: list[str | None] = []
    await cache.index.nearest("s", unit(1, 0), accept=lambda tag: tags.append(tag) or True)
    assert tags == [signature(text).dumps()]
    await cache.close()


def test_the_cache_stage_does_not_answer_2_plus_2_with_2_plus_3(tmp_path: Path) -> None:
    """The fake embeddings hash words: "what is 2+3" embeds at 0.85 of "what is 2+2" (above the 0.8
    threshold), "So, what is 2+2?" at 0.94. The fake engine echoes the question, so each answer says which
    question it was made for."""
    cfg = write_config(tmp_path / "sem.yaml", [
        {"name": "fake", "engine": "fake"},
        {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 4096}},
    ], state={"backend": "memory"}, cache={"semantic": {"enabled": True, "model": "emb", "threshold": 0.8}})
    with ready_client(cfg, 30) as client:
        def ask(text: str) -> tuple[str, str]:
            resp = client.post("/v1/chat/completions", json={
                "model": "fake", "temperature": 0.7, "messages": [{"role": "user", "content": text}]})
            assert resp.status_code == 200, resp.text
            return resp.headers["X-Cache"], resp.json()["choices"][0]["message"]["content"]

        assert ask("What is 2+3?") == ("miss", "Echo: What is 2+3?")
        assert ask("What is 2+2?") == ("miss", "Echo: What is 2+2?")  # 0.85 to 2+3's entry: refused
        assert ask("So, what is 2+2?") == ("hit", "Echo: What is 2+2?")  # a paraphrase: 2+2's answer
        assert ask("Is it safe to eat raw chicken?") == ("miss", "Echo: Is it safe to eat raw chicken?")
        assert ask("Is it not safe to eat raw chicken?") == ("miss", "Echo: Is it not safe to eat raw chicken?")
        metrics = client.get("/metrics").text
        assert 'llmops_cache_requests_total{model="fake",result="semantic_hit"} 1.0' in metrics
