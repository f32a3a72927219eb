"""The fast refusal path (middleware/admission_gate.py) on real servers with the fake engine: a request
admission would certainly refuse is answered at the edge, before FastAPI parses its body, and before the
body is read at all when it cannot change the answer; it is counted once; what the cache could answer is
still answered."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import live_server, write_config

WORDS = " ".join(f"w{i}" for i in range(400))
SLOW = {"name": "slow", "engine": "fake", "options": {"reply": WORDS, "token_delay_s": 0.02, "capacity": 1},
        "limits": {"max_queued": 0, "default_deadline_s": 60}}
OTHER = {"name": "other", "engine": "fake", "options": {"reply": "hi"}}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One chat model, no cache: the body of a chat request cannot change what admission says."""
    cfg = write_config(tmp_path_factory.mktemp("gate") / "single.yaml", [SLOW], cache={"enabled": False})
    with live_server(cfg) as url:
        yield url


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two chat models and the cache on: the edge reads the body (cheaply) to know the model."""
    cfg = write_config(tmp_path_factory.mktemp("gate") / "several.yaml", [SLOW, OTHER], cache={"enabled": True})
    with live_server(cfg) as url:
        yield url


def chat(model: str = "slow", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "go"}], **extra}


async def wait_state(c: httpx.AsyncClient, running: int) -> None:
    for _ in range(500):
        if (await c.get("/ready")).json()["models"]["slow"]["running"] == running:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"slow never had {running} running")


def rejections(base: str, reason: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    found = re.search(rf'^llmops_rejections_total{{model="slow",reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def headers_only(base: str, path: str, declared: int) -> bytes:
    """Send a POST's headers (Content-Length `declared`) and none of its body; what the server answers."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {declared}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


async def test_a_full_queue_is_refused_before_the_body_arrives(single: str) -> None:
    async with httpx.AsyncClient(base_url=single, timeout=60) as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat()))
        await wait_state(c, 1)
        before = rejections(single, "overload")
        answer = await asyncio.to_thread(headers_only, single, "/v1/chat/completions", 500)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b'"code":"overloaded"' in answer
        assert b"retry-after:" in answer.lower()
        assert rejections(single, "overload") == before + 1  # counted once, at the edge
        assert (await held).status_code == 200


async def test_refusals_come_before_the_body_is_parsed(several: str) -> None:
    async with httpx.AsyncClient(base_url=several, timeout=60) as c:
        r = await c.post("/v1/chat/completions", json={"model": "nope", "messages": 5})
        assert r.status_code == 404  # FastAPI would have answered 400 for `messages`
        assert r.json()["error"]["code"] == "model_not_found"
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat()))
        await wait_state(c, 1)
        before = rejections(several, "overload")
        r = await c.post("/v1/chat/completions", json={"model": "slow", "messages": 5})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "overloaded"
        assert rejections(several, "overload") == before + 1
        assert (await c.post("/v1/chat/completions", json=chat("other"))).status_code == 200  # not full
        assert (await c.post("/v1/chat/completions", json={"messages": 5})).status_code == 400  # no model: parsed
        assert (await held).status_code == 200


async def test_what_the_cache_can_answer_is_answered_on_a_full_queue(several: str) -> None:
    async with httpx.AsyncClient(base_url=several, timeout=60) as c:
        cached = chat(temperature=0, max_tokens=3)
        assert (await c.post("/v1/chat/completions", json=cached)).headers["x-cache"] == "miss"
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat()))
        await wait_state(c, 1)
        hit = await c.post("/v1/chat/completions", json=cached)
        assert hit.status_code == 200
        assert hit.headers["x-cache"] == "hit"
        refused = await c.post("/v1/chat/completions", json=cached, headers={"Cache-Control": "no-cache"})
        assert refused.status_code == 503
        assert (await held).status_code == 200


def test_a_chunked_body_over_the_limit_read_by_the_edge_is_413(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "limit.yaml", [SLOW, OTHER], limits={"max_body_bytes": 1024})
    with live_server(cfg) as base:
        big = (b'{"model": "slow", "messages": [], "pad": "' + b"x" * 4096 + b'"}')
        r = httpx.post(f"{base}/v1/chat/completions", content=iter([big[:512], big[512:]]),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_edge_refusals_keep_their_route_label(several: str) -> None:
    with httpx.Client(base_url=several, timeout=60) as c:
        assert c.post("/v1/completions", json={"model": "nope", "prompt": 5}).status_code == 404  # at the edge
        metrics = c.get("/metrics").text
    assert re.search(r'^llmops_http_requests_total{method="POST",route="/v1/completions",status="404"} ', metrics,
                     re.M)
