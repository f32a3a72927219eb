"""Token ids count against a key's tokens/min. An attack run found embeddings inputs sent as token arrays
counted nothing up front (the estimate read only the texts' characters): with a limit of 100 tokens/min,
twenty arrays of 5,000 ids were answered 200 three times in a row, 300,001 prompt tokens in a minute, and
once the minute was full of text a request of ids still passed. Ids are now counted one for one with the
texts' estimate (stages.budget, Work.input_ids)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from llmops.app import create_app
from llmops.settings import load_settings

ADMIN = "admin-secret-for-token-id-limits"
MODELS = [{"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16,
                                                                                       "vocab_size": 1000}}]


@pytest.fixture
def client() -> Iterator[tuple[TestClient, dict[str, str]]]:
    s = load_settings(None, models=MODELS, state={"backend": "memory"})
    s.auth.admin_key = SecretStr(ADMIN)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        made = c.post("/admin/keys", json={"name": "t", "tpm": 100}, headers={"X-Admin-Key": ADMIN})
        assert made.status_code == 201, made.text
        yield c, {"Authorization": f"Bearer {made.json()['secret']}"}


def test_token_ids_over_the_limit_are_refused(client: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = client
    response = c.post("/v1/embeddings", json={"model": "emb", "input": [[1] * 200]}, headers=auth)
    assert response.status_code == 429, response.text
    assert "token limit of 100 tokens/min" in response.json()["error"]["message"]


def test_token_ids_count_against_the_minute(client: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = client
    first = c.post("/v1/embeddings", json={"model": "emb", "input": [[1] * 60]}, headers=auth)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    second = c.post("/v1/embeddings", json={"model": "emb", "input": [[2] * 60]}, headers=auth)
    assert second.status_code == 429, second.text  # 60 + 60 ids in one minute
