"""SIGTERM under load: /ready turns 503, new requests get 503, every admitted request (running or queued)
gets its complete response, and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port, own_state, wait_ready, write_config

REPLY = " ".join(f"w{i}" for i in range(20))


def serve(tmp_path: Path, model: dict[str, Any], drain_s: float = 30) -> tuple[subprocess.Popen[bytes], str]:
    """A server of `model` on loopback, ready, its output in tmp_path/server.log; the caller stops it."""
    cfg = write_config(tmp_path / "drain.yaml", [model], shutdown={"drain_timeout_s": drain_s})
    port = free_port()
    with (tmp_path / "server.log").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(cfg), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **own_state(cfg)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{base}/ready", 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, base


async def test_sigterm_drains_without_losing_requests(tmp_path: Path) -> None:
    proc, base = serve(tmp_path, {"name": "slow", "engine": "fake",
                                  "options": {"reply": REPLY, "token_delay_s": 0.05, "capacity": 2}})
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            async def stream() -> str:
                r = await c.post("/v1/chat/completions", json={
                    "model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True})
                return r.text

            async def complete() -> httpx.Response:
                return await c.post("/v1/completions", json={"model": "slow", "prompt": "x"})

            load = [asyncio.create_task(stream()) for _ in range(3)] + [asyncio.create_task(complete())]
            while (await c.get("/ready")).json()["models"]["slow"]["queued"] < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            for _ in range(500):  # the signal is handled in a moment: poll until /ready says so
                ready = await c.get("/ready")
                if ready.status_code != 200:
                    break
                await asyncio.sleep(0.01)
            assert ready.status_code == 503
            assert ready.json()["status"] == "draining"
            refused = await c.post("/v1/completions", json={"model": "slow", "prompt": "late"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            results = await asyncio.gather(*load)
        for text in results[:3]:
            assert text.rstrip().endswith("data: [DONE]")
            assert "w19" in text
        plain = results[3]
        assert plain.status_code == 200
        assert plain.json()["choices"][0]["text"].endswith("w19")
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_an_image_job_admitted_before_the_drain_can_still_be_followed(tmp_path: Path) -> None:
    """Draining refuses new work, not reads: a job's client polls it to its end (it was 503, the answer lost)."""
    proc, base = serve(tmp_path, {"name": "img", "kind": "image", "engine": "fake-image",
                                  "options": {"step_delay_s": 0.05}})
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            job = (await c.post("/v1/images/jobs", json={"model": "img", "prompt": "x", "size": "256x256",
                                                         "num_inference_steps": 20})).json()["id"]
            proc.send_signal(signal.SIGTERM)
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["status"] not in ("succeeded", "failed", "cancelled"):
                r = await c.get(f"/v1/images/jobs/{job}")
                assert r.status_code == 200, r.text  # read while draining
                seen.append(r.json())
                if len(seen) == 1:
                    refused = await c.post("/v1/images/jobs", json={"model": "img", "prompt": "late"})
                    assert refused.status_code == 503  # new work is refused once draining
                await asyncio.sleep(0.02)
            assert seen[-1]["status"] == "succeeded"
            assert seen[-1]["data"]  # the answer, read after the job finished: then the process may go
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_request_cut_off_when_the_drain_runs_out_gets_a_503_in_the_envelope(tmp_path: Path) -> None:
    """Past `drain_timeout_s` the server stops and cancels what is left: the client gets 503 shutting_down
    as JSON (uvicorn's own answer was a plain-text 500, with a logged traceback)."""
    proc, base = serve(tmp_path, {"name": "slow", "engine": "fake", "options": {"reply": REPLY, "token_delay_s": 1.0}},
                       drain_s=1)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            slow = asyncio.create_task(c.post("/v1/completions", json={"model": "slow", "prompt": "x"}))
            while (await c.get("/ready")).json()["models"]["slow"]["running"] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            r = await slow
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "shutting_down"
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert "Exception in ASGI application" not in (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
