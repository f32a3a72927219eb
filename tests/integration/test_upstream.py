"""The upstream engine in front of a second llmops server on loopback: pass-through of chat, streams and
completions, retries, error mapping, and the circuit breaker opening and recovering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.settings import load_settings
from tests.helpers import eventually, free_port, live_server, write_config

UPSTREAM_MODELS = [
    {"name": "fake", "engine": "fake"},
    {"name": "one-slot", "engine": "fake", "options": {"capacity": 1, "token_delay_s": 0.1, "reply": "a b c"},
     "limits": {"max_queued": 0}},
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = write_config(tmp_path_factory.mktemp("up") / "up.yaml", UPSTREAM_MODELS)
    with live_server(cfg) as base:
        yield base


def gateway(tmp_path: Path, models: list[dict[str, Any]]) -> TestClient:
    cfg = write_config(tmp_path / "gw.yaml", models)
    return TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False)


def wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/ready").status_code == 200:
            return
        time.sleep(0.01)


def chat(c: TestClient, model: str, **extra: Any) -> httpx.Response:
    return c.post("/v1/chat/completions",
                  json={"model": model, "messages": [{"role": "user", "content": "hi there"}], **extra})


def test_pass_through(upstream: str, tmp_path: Path) -> None:
    with gateway(tmp_path, [{"name": "remote", "engine": "upstream",
                             "options": {"base_url": f"{upstream}/v1", "model": "fake"}}]) as c:
        wait_ready(c)
        body = chat(c, "remote").json()
        assert body["choices"][0]["message"]["content"] == "Echo: hi there"
        assert body["usage"]["completion_tokens"] == 3
        stream = chat(c, "remote", stream=True).text
        assert "Echo:" in stream
        assert stream.rstrip().endswith("[DONE]")
        done = c.post("/v1/completions", json={"model": "remote", "prompt": "x y"}).json()
        assert done["choices"][0]["text"] == "echo: x y"


def test_client_errors_are_not_retried_and_keep_their_param(upstream: str, tmp_path: Path) -> None:
    with gateway(tmp_path, [{"name": "remote", "engine": "upstream",
                             "options": {"base_url": f"{upstream}/v1", "model": "no-such-model"}}]) as c:
        wait_ready(c)
        r = chat(c, "remote")
        assert r.status_code == 400
        assert "no-such-model" in r.json()["error"]["message"]
        assert c.get("/ready").json()["models"]["remote"]["circuit"] == "closed"


def test_retries_a_busy_upstream(upstream: str, tmp_path: Path) -> None:
    with gateway(tmp_path, [{"name": "remote", "engine": "upstream",
                             "options": {"base_url": f"{upstream}/v1", "model": "one-slot", "max_retries": 6,
                                         "backoff_s": 0.2}}]) as c:
        wait_ready(c)
        hold = threading.Thread(target=lambda: httpx.post(
            f"{upstream}/v1/chat/completions", timeout=30,
            json={"model": "one-slot", "messages": [{"role": "user", "content": "x"}]}))
        hold.start()
        # the upstream's only slot is taken: it answers 503 until it frees
        assert eventually(lambda: httpx.get(f"{upstream}/ready").json()["models"]["one-slot"]["running"] == 1)
        r = chat(c, "remote")
        hold.join()
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "a b c"


def test_circuit_opens_on_a_dead_upstream_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    options = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "fake", "max_retries": 0,
               "breaker_failures": 2, "breaker_reset_s": 1.0, "connect_timeout_s": 1.0}
    with gateway(tmp_path, [{"name": "remote", "engine": "upstream", "options": options}]) as c:
        wait_ready(c)
        for _ in range(2):
            r = chat(c, "remote")
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "upstream_unavailable"
        assert c.get("/ready").json()["models"]["remote"]["circuit"] == "open"
        fast = chat(c, "remote")
        assert fast.status_code == 503
        assert "circuit open" in fast.json()["error"]["message"]
        assert "retry-after" in fast.headers
        cfg = write_config(tmp_path / "revived.yaml", [{"name": "fake", "engine": "fake"}])
        with live_server(cfg, port=port):
            assert eventually(lambda: c.get("/ready").json()["models"]["remote"]["circuit"] == "half_open")
            assert chat(c, "remote").status_code == 200  # the half-open trial succeeds
            assert c.get("/ready").json()["models"]["remote"]["circuit"] == "closed"
