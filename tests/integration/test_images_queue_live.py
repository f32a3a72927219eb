"""Image work on a real server with the fake image engine: queued jobs are in the model's admission queue
metrics, and a model that failed to load is not retried by the official openai client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import eventually, live_server, write_config

SLOW = {"name": "fake-sd", "kind": "image", "engine": "fake-image", "options": {"step_delay_s": 0.05},
        "limits": {"max_running": 1, "image": {"max_batch_size": 1}}}


def gauge(base: str, name: str, model: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} is not exposed")


def test_five_queued_image_jobs_show_in_the_queue_metrics(tmp_path: Path) -> None:
    with live_server(write_config(tmp_path / "q.yaml", [SLOW])) as base:
        jobs = [httpx.post(f"{base}/v1/images/jobs", json={"prompt": f"p{i}", "size": "256x256",
                                                           "num_inference_steps": 50}).json() for i in range(6)]
        assert [j["status"] for j in jobs[1:]] == ["queued"] * 5
        assert gauge(base, "inference_queue_size", "fake-sd") == 5
        assert gauge(base, "llmops_num_requests_waiting", "fake-sd") == 5
        assert gauge(base, "llmops_num_requests_running", "fake-sd") == 1
        for job in jobs:
            httpx.delete(f"{base}/v1/images/jobs/{job['id']}")
        assert eventually(lambda: gauge(base, "inference_queue_size", "fake-sd") == 0)


def test_a_failed_model_is_not_retried_by_the_openai_client(tmp_path: Path) -> None:
    broken = {**SLOW, "options": {"fail_load": "weights are corrupt"}}
    with live_server(write_config(tmp_path / "f.yaml", [broken]), wait_for="/health") as base:
        assert eventually(lambda: httpx.get(f"{base}/ready").json()["models"]["fake-sd"]["state"] == "failed")
        with (openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=3) as client,
              pytest.raises(openai.InternalServerError, match="weights are corrupt") as raised):
            client.images.generate(model="fake-sd", prompt="a fox", size="256x256")
        assert raised.value.status_code == 503
        assert eventually(lambda: refused(base) == 1)  # one request: the client did not retry
        assert httpx.post(f"{base}/v1/images/generations", json={"prompt": "x"}).status_code == 503
        assert eventually(lambda: refused(base) == 2)  # (the count is live: it would have seen retries)


def refused(base: str) -> float:
    """HTTP 503 answers counted on POST /v1/images/generations."""
    want = ('method="POST"', 'route="/v1/images/generations"', 'status="503"')
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("llmops_http_requests_total{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
