"""Embeddings as a kind of pipeline work, and the semantic cache as part of the cache stage, on the
in-process app with the fake engines (the fake embeddings engine hashes words: equal word sets, equal
vectors)."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ready_client, write_config
from tests.unit.test_api import assert_error

EMBED = "/v1/embeddings"
ADMIN = {"Authorization": "Bearer admin-secret-for-the-tests"}
MODELS: list[dict[str, Any]] = [
    {"name": "fake", "engine": "fake"},
    {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16},
     "pricing": {"prompt_usd_per_1k": 10.0}},
]


@contextmanager
def _client(cfg: Path) -> Iterator[TestClient]:
    with ready_client(cfg, 30) as c:
        yield c


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    cfg = write_config(tmp_path / "emb.yaml", MODELS, state={"backend": "memory"}, spend={"refresh_s": 0},
                       auth={"admin_key": "admin-secret-for-the-tests", "key_refresh_s": 0})
    with _client(cfg) as c:
        yield c


def _key(client: TestClient, **limits: Any) -> dict[str, str]:
    made = client.post("/admin/keys", json={"name": "k", **limits}, headers=ADMIN).json()
    return {"Authorization": f"Bearer {made['secret']}"}


def test_embeddings_go_through_admission_metrics_and_accounting(client: TestClient) -> None:
    auth = _key(client, budget_usd=10.0, budget_period="day")
    resp = client.post(EMBED, json={"model": "emb", "input": ["a cat sat", "a cat sat", "stocks fell"]}, headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    vectors = [d["embedding"] for d in body["data"]]
    assert len(vectors[0]) == 16
    assert vectors[0] == vectors[1] != vectors[2]
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert resp.headers["X-Queue-Position"] == "0"  # admitted by the model's admission
    metrics = client.get("/metrics").text
    assert 'llmops_embedding_inputs_total{model="emb"} 3.0' in metrics
    assert 'inference_requests_total{model="emb",status="success"} 1.0' in metrics
    deadline = time.monotonic() + 30
    while (spent := client.get("/v1/usage", headers=auth).json()["budget"]["spent_usd"]) == 0:
        assert time.monotonic() < deadline  # settling runs just after the response
        time.sleep(0.01)
    assert spent == pytest.approx(8 * 10.0 / 1000)


def test_base64_token_ids_and_refusals(client: TestClient) -> None:
    floats = client.post(EMBED, json={"model": "emb", "input": "a cat"}).json()["data"][0]["embedding"]
    packed = client.post(EMBED, json={"model": "emb", "input": "a cat", "encoding_format": "base64"})
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert struct.unpack(f"<{len(floats)}f", raw) == pytest.approx(floats)
    ids = client.post(EMBED, json={"model": "emb", "input": [[1, 2, 3]]})
    assert ids.status_code == 200
    assert ids.json()["usage"]["prompt_tokens"] == 3
    assert_error(client.post(EMBED, json={"model": "fake", "input": "x"}), 404, param="model")
    assert_error(client.post("/v1/chat/completions", json={"model": "emb", "messages": [
        {"role": "user", "content": "x"}]}), 404, param="model")
    assert_error(client.post(EMBED, json={"model": "emb", "input": "x", "dimensions": 8}), 400, param="dimensions")
    assert_error(client.post(EMBED, json={"model": "emb", "input": ""}), 400)


def test_a_key_may_not_use_the_embeddings_model(client: TestClient) -> None:
    auth = _key(client, models=["fake"])
    assert_error(client.post(EMBED, json={"model": "emb", "input": "x"}, headers=auth), 403, param="model")


def test_semantic_cache_is_part_of_the_cache_stage(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "sem.yaml", MODELS, state={"backend": "memory"},
                       cache={"semantic": {"enabled": True, "model": "emb", "threshold": 0.99}})
    with _client(cfg) as client:
        def ask(text: str, **headers: str) -> Any:
            resp = client.post("/v1/chat/completions", headers=headers, json={
                "model": "fake", "temperature": 0.7, "messages": [{"role": "user", "content": text}]})
            assert resp.status_code == 200, resp.text
            return resp

        first = ask("What is the capital of France?")
        assert first.headers["X-Cache"] == "miss"  # not deterministic: no exact key, but the semantic lookup
        again = ask("what  IS the capital of france")
        assert again.headers["X-Cache"] == "hit"
        assert again.json()["choices"] == first.json()["choices"]
        assert ask("What is the capital of Spain?").headers["X-Cache"] == "miss"
        assert ask("What is the capital of France?", **{"Cache-Control": "no-cache"}).headers["X-Cache"] == "bypass"
        metrics = client.get("/metrics").text
        assert 'llmops_cache_requests_total{model="fake",result="semantic_hit"} 1.0' in metrics
        # each request counted once: the semantic misses as misses, not also as exact-cache bypasses
        assert 'llmops_cache_requests_total{model="fake",result="miss"} 2.0' in metrics
        assert 'llmops_cache_requests_total{model="fake",result="bypass"} 1.0' in metrics
        assert client.get("/ready").json()["models"]["emb"]["calls"] == 3  # one lookup per request


@pytest.mark.parametrize("scope", ["key", "global"])
def test_semantic_cache_scoped_per_key_serves_no_key_anothers_answer(tmp_path: Path, scope: str) -> None:
    cfg = write_config(tmp_path / "sem.yaml", MODELS, state={"backend": "memory"},
                       auth={"admin_key": ADMIN["Authorization"].removeprefix("Bearer ")},
                       cache={"scope": scope, "semantic": {"enabled": True, "model": "emb", "threshold": 0.99}})
    with _client(cfg) as client:
        alice, bob = _key(client), _key(client)

        def ask(auth: dict[str, str]) -> Any:
            resp = client.post("/v1/chat/completions", headers=auth, json={"model": "fake", "temperature": 0.7,
                               "messages": [{"role": "user", "content": "My account number is 4242"}]})
            assert resp.status_code == 200, resp.text
            return resp

        assert ask(alice).headers["X-Cache"] == "miss"
        assert ask(alice).headers["X-Cache"] == "hit"  # her own answer
        assert ask(bob).headers["X-Cache"] == ("miss" if scope == "key" else "hit")


def test_an_input_guardrail_refusal_names_the_field_the_input_came_from(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "limit.yaml", MODELS, state={"backend": "memory"},
                       guardrails={"max_input_chars": 10})
    with _client(cfg) as client:
        assert_error(client.post(EMBED, json={"model": "emb", "input": "x" * 11}), 400, param="input")
        assert_error(client.post("/v1/completions", json={"model": "fake", "prompt": "x" * 11}), 400, param="prompt")
        assert_error(client.post("/v1/chat/completions", json={
            "model": "fake", "messages": [{"role": "user", "content": "x" * 11}]}), 400, param="messages")


# --- token ids are read by the input guardrails and counted by the input limits ----------------------------

def _guarded(tmp_path: Path, action: str, **limits: Any) -> Any:
    rules = [{"name": "words", "detector": "blocklist", "stages": ["input"], "terms": ["1234"], "action": action}]
    models = [MODELS[0], {**MODELS[1], "options": {"size": 16, "vocab_size": 5000}}]
    cfg = write_config(tmp_path / f"guard-{action}.yaml", models, state={"backend": "memory"},
                       guardrails={"rules": rules, **limits})
    return _client(cfg)


def _vector(client: TestClient, given: Any) -> list[float]:
    resp = client.post(EMBED, json={"model": "emb", "input": given})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"][0]["embedding"])


def test_a_blocked_term_sent_as_token_ids_is_refused(tmp_path: Path) -> None:
    """The fake engine's token ids are its words ("1234"): a rule's term sent as ids is still the term."""
    with _guarded(tmp_path, "block") as client:
        for given in ([1234, 5], [[5, 6], [7, 1234]], [[1234]]):
            assert_error(client.post(EMBED, json={"model": "emb", "input": given}), 400, param="input",
                         code="content_filter")
        assert_error(client.post(EMBED, json={"model": "emb", "input": [[5000]]}), 400, param="input")  # vocab
        assert len(_vector(client, [[5, 6], [7]])) == 16


def test_redacted_token_ids_are_embedded_as_the_redacted_text(tmp_path: Path) -> None:
    with _guarded(tmp_path, "redact") as client:
        engine = client.app.state.services.pool.embedding_engine("emb")[1]  # type: ignore[attr-defined]
        seen: list[Any] = []
        embed = engine.embed

        async def spy(inputs: Any, dimensions: Any = None) -> Any:
            seen.append(list(inputs))
            return await embed(inputs, dimensions)

        engine.embed = spy
        redacted = _vector(client, [[1234, 5]])
        assert redacted == _vector(client, "1234 5")  # the same text once redacted
        assert seen[0] == [seen[1][0]]
        assert seen[0][0] == "[REDACTED:blocklist] 5"
        _vector(client, [[7, 8], [1234, 5]])
        assert seen[2] == [[7, 8], seen[0][0]]  # ids no rule changed stay ids
    with _client(write_config(tmp_path / "plain.yaml", MODELS, state={"backend": "memory"})) as plain:
        assert _vector(plain, [[1234, 5]]) != redacted


def test_token_ids_count_against_the_input_token_limit(tmp_path: Path) -> None:
    for action in ("flag", None):  # with an input rule (ids decoded) and without (the limits alone)
        guard: dict[str, Any] = {"max_input_tokens": 10}
        if action:
            guard["rules"] = [{"name": "words", "detector": "blocklist", "terms": ["x"], "action": action}]
        cfg = write_config(tmp_path / f"limit-{action}.yaml", MODELS, state={"backend": "memory"}, guardrails=guard)
        with _client(cfg) as client:
            err = assert_error(client.post(EMBED, json={"model": "emb", "input": [[1] * 11]}), 400, param="input")
            assert "about 11 tokens" in err["message"]
            assert_error(client.post(EMBED, json={"model": "emb", "input": [[1] * 6, [2] * 5]}), 400,
                         param="input")
            assert_error(client.post(EMBED, json={"model": "emb", "input": "x " * 21}), 400, param="input")
            assert len(_vector(client, [[1] * 10])) == 16
