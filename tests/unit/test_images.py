"""The image API on the fake image engine, in-process: OpenAI and guide contracts, limits, jobs, batching,
the model's one admission (queue metrics, full queue), budgets before the cache, the file store, failed
models. tiny-sd itself is tested in tests/model/test_tiny_sd.py."""

from __future__ import annotations

import base64
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.settings import load_settings
from tests.helpers import write_config

ADMIN = "admin-secret-for-image-tests"
FAKE_SD = {"name": "fake-sd", "kind": "image", "engine": "fake-image", "options": {"step_delay_s": 0.01},
           "pricing": {"image_usd": 0.01}}
FAST = {"size": "256x256", "num_inference_steps": 2}
FAST_STATE = {"state": {"backend": "memory"}, "spend": {"refresh_s": 0}, "auth": {"key_refresh_s": 0}}


def poll_until(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError("condition not met")


def start(tmp: Path, models: list[dict[str, Any]], **extra: Any) -> TestClient:
    cfg = write_config(tmp / "img.yaml", models, **{**FAST_STATE, **extra})
    return TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False)


def loaded(c: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = poll_until(lambda: (r := c.get("/ready").json()) and
                                      all(m["state"] != "loading" for m in r["models"].values()) and r)
    return body


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("img")
    with start(tmp, [FAKE_SD], images={"store_dir": str(tmp / "store")}) as c:
        assert loaded(c)["models"]["fake-sd"]["state"] == "ready"
        yield c


def size(b64: str) -> tuple[int, int]:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def generate(c: TestClient, **body: Any) -> Any:
    return c.post("/v1/images/generations", json={"prompt": "a red fox", **FAST, **body})


def test_png_at_requested_size(client: TestClient) -> None:
    r = generate(client, size="320x256")
    assert r.status_code == 200, r.text
    assert size(r.json()["data"][0]["b64_json"]) == (320, 256)


def test_same_seed_same_bytes_and_n_differs(client: TestClient) -> None:
    a = generate(client, seed=42).json()["data"][0]["b64_json"]
    b = generate(client, seed=42).json()["data"][0]["b64_json"]
    assert a == b
    two = generate(client, seed=42, n=2).json()["data"]
    assert len(two) == 2
    assert two[0]["b64_json"] != two[1]["b64_json"]


@pytest.mark.parametrize(("body", "param"), [
    ({"size": "250x256"}, "size"), ({"size": "big"}, "size"), ({"num_inference_steps": 51}, "num_inference_steps"),
    ({"guidance_scale": 21}, "guidance_scale"), ({"prompt": ""}, "prompt"), ({"n": 5}, "n"),
    ({"model": "gemma"}, "model"),
])
def test_limits_name_the_param(client: TestClient, body: dict[str, Any], param: str) -> None:
    r = generate(client, **body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param


def test_guide_generate_contract(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "an astronaut", "width": 256, "height": 256,
                                       "num_inference_steps": 2})
    body = r.json()
    assert set(body) == {"image_base64", "generation_time", "parameters"}
    assert size(body["image_base64"]) == (256, 256)
    assert body["parameters"]["negative_prompt"] == "blurry, low quality, distorted"
    assert body["parameters"]["model"] == "fake-sd"


def test_url_response_format_and_the_store_never_follows_links(client: TestClient, tmp_path: Path) -> None:
    url = generate(client, response_format="url").json()["data"][0]["url"]
    r = client.get(url)
    assert r.headers["content-type"] == "image/png"
    assert size(base64.b64encode(r.content).decode()) == (256, 256)
    assert client.get("/v1/images/files/..%2Fsecret.png").status_code == 404
    store = Path(client.app.state.services.settings.images.store_dir)  # type: ignore[attr-defined]
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image")
    link = store / f"imgfile-{'0' * 32}.png"
    os.symlink(secret, link)
    r = client.get(f"/v1/images/files/{link.name}")
    assert r.status_code == 404
    assert "not an image" not in r.text


def test_job_lifecycle_with_progress(client: TestClient) -> None:
    r = client.post("/v1/images/jobs", json={"prompt": "x", **FAST})
    assert r.status_code == 202
    job = poll_until(lambda: (j := client.get(f"/v1/images/jobs/{r.json()['id']}").json())["status"] == "succeeded"
                     and j)
    assert job["progress"] == {"step": 2, "total": 2}
    assert size(job["data"][0]["b64_json"]) == (256, 256)


def job(c: TestClient, job_id: str, until: set[str]) -> dict[str, Any]:
    return dict(poll_until(lambda: (j := c.get(f"/v1/images/jobs/{job_id}").json())["status"] in until and j))


def test_cancel_running_job_stops_early(client: TestClient) -> None:
    job_id = client.post("/v1/images/jobs", json={"prompt": "x", "size": "256x256",
                                                  "num_inference_steps": 50}).json()["id"]
    poll_until(lambda: (client.get(f"/v1/images/jobs/{job_id}").json()["progress"] or {}).get("step", 0) > 0)
    assert client.delete(f"/v1/images/jobs/{job_id}").status_code == 200
    done = job(client, job_id, {"cancelled", "succeeded"})
    assert done["status"] == "cancelled"
    assert done["progress"]["step"] < 50
    assert done["error"]["code"] == "cancelled"
    assert generate(client).status_code == 200


def test_same_shape_requests_coalesce_into_one_call(client: TestClient) -> None:
    def calls() -> int:
        return int(client.get("/ready").json()["models"]["fake-sd"]["pipeline_calls"])

    blocker = client.post("/v1/images/jobs", json={"prompt": "x", "size": "512x512", "num_inference_steps": 20})
    poll_until(lambda: client.get(f"/v1/images/jobs/{blocker.json()['id']}").json()["status"] == "running")
    before = calls()
    ids = [client.post("/v1/images/jobs", json={"prompt": f"p{i}", "seed": i, "n": 1 + i % 2, **FAST}).json()["id"]
           for i in range(3)]
    jobs = [job(client, i, {"succeeded"}) for i in ids]
    assert [len(j["data"]) for j in jobs] == [1, 2, 1]
    assert calls() - before == 1  # the three same-shape jobs in one call, after the blocker's


def test_sync_image_deadline(client: TestClient) -> None:
    r = client.post("/v1/images/generations", json={"prompt": "x", "size": "256x256", "num_inference_steps": 50},
                    headers={"X-Request-Timeout": "0.2"})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert generate(client).status_code == 200


def metric(c: TestClient, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and line.split("{")[1].split("}")[0] == want:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_image_jobs_wait_in_the_models_admission(tmp_path: Path) -> None:
    """One job runs, five wait: inference_queue_size and llmops_num_requests_waiting show them, /ready too, and
    positions count from 0; the model's limits.max_queued refuses the next one with 503, counted as a rejection."""
    slow = {**FAKE_SD, "options": {"step_delay_s": 0.05},
            "limits": {"max_running": 1, "max_queued": 5, "image": {"max_batch_size": 1}}}
    with start(tmp_path, [slow]) as c:
        loaded(c)
        first = c.post("/v1/images/jobs", json={"prompt": "a", "size": "256x256", "num_inference_steps": 50}).json()
        queued = [c.post("/v1/images/jobs", json={"prompt": f"q{i}", **FAST}).json() for i in range(5)]
        assert [q["position"] for q in queued] == [0, 1, 2, 3, 4]
        assert metric(c, "inference_queue_size", model="fake-sd") == 5
        assert metric(c, "llmops_num_requests_waiting", model="fake-sd") == 5
        assert c.get("/ready").json()["models"]["fake-sd"]["queued"] == 5
        full = c.post("/v1/images/jobs", json={"prompt": "one too many", **FAST})
        assert full.status_code == 503
        assert full.json()["error"]["code"] == "overloaded"
        assert "Retry-After" in full.headers
        assert metric(c, "llmops_rejections_total", model="fake-sd", reason="overload") == 1
        for q in [first, *queued]:
            c.delete(f"/v1/images/jobs/{q['id']}")
        poll_until(lambda: metric(c, "inference_queue_size", model="fake-sd") == 0)


def test_deprecated_images_max_queued_is_the_models_default(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", [FAKE_SD, {**FAKE_SD, "name": "own", "limits": {"max_queued": 7}}],
                       images={"max_queued": 3})
    settings = load_settings(cfg)
    assert [m.limits.max_queued for m in settings.models] == [3, 7]


def test_cached_image_with_an_exhausted_budget_gets_429(tmp_path: Path) -> None:
    with start(tmp_path, [FAKE_SD], auth={"admin_key": ADMIN}, cache={"enabled": True}) as c:
        loaded(c)
        made = c.post("/admin/keys", json={"name": "img", "budget_usd": 0.01, "budget_period": "day"},
                      headers={"Authorization": f"Bearer {ADMIN}"})
        assert made.status_code == 201, made.text
        auth = {"Authorization": f"Bearer {made.json()['secret']}"}
        body = {"prompt": "a cached fox", "seed": 7, **FAST}
        first = c.post("/v1/images/generations", json=body, headers=auth)
        assert first.status_code == 200
        assert first.headers["x-cache"] == "miss"
        poll_until(lambda: c.get("/v1/usage", headers=auth).json().get("budget", {}).get("spent_usd", 0) >= 0.01)
        again = c.post("/v1/images/generations", json=body, headers=auth)
        assert again.status_code == 429, again.text
        assert again.json()["error"]["code"] == "insufficient_quota"
        assert metric(c, "llmops_rejections_total", model="fake-sd", reason="budget") == 1


def test_a_model_that_failed_to_load_says_why_and_not_to_retry(tmp_path: Path) -> None:
    broken = {**FAKE_SD, "options": {"fail_load": "weights are corrupt"}}
    with start(tmp_path, [broken]) as c:
        assert loaded(c)["models"]["fake-sd"]["state"] == "failed"
        r = generate(c)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_failed"
        assert "weights are corrupt" in r.json()["error"]["message"]
        assert "Retry-After" not in r.headers
        assert r.headers["x-should-retry"] == "false"
        assert metric(c, "llmops_rejections_total", model="fake-sd", reason="model_failed") == 1


def test_only_jobs_api_jobs_are_kept_and_at_most_max_kept(tmp_path: Path) -> None:
    """A synchronous request's job leaves the index with its answer (a soak of 10,000 images grew RSS by 40 MB
    when they stayed for job_ttl_s); jobs created through the jobs API are kept, the oldest dropped past the cap."""
    with start(tmp_path, [FAKE_SD], images={"max_kept_jobs": 2}) as c:
        loaded(c)
        jobs = c.app.state.services.image_jobs  # type: ignore[attr-defined]
        for _ in range(3):
            assert generate(c).status_code == 200
            assert c.post("/generate", json={"prompt": "x", "width": 256, "height": 256,
                                             "num_inference_steps": 2}).status_code == 200
        assert len(jobs) == 0
        ids = [c.post("/v1/images/jobs", json={"prompt": "x", **FAST}).json()["id"] for _ in range(3)]
        job(c, ids[2], {"succeeded"})  # the last one finished: so had the others (one queue, in order)
        assert c.get(f"/v1/images/jobs/{ids[0]}").status_code == 404  # the oldest finished job went first
        assert [c.get(f"/v1/images/jobs/{i}").json()["status"] for i in ids[1:]] == ["succeeded"] * 2
