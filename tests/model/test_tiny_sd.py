"""Images on the tiny Stable Diffusion pipeline (seeded random weights), in-process: the model tier (the
image API itself is tested on the fake image engine in tests/unit/test_images.py)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.settings import load_settings
from tests.helpers import write_config

pytest.importorskip("diffusers")
from PIL import Image

TINY = {"name": "tiny-sd", "kind": "image", "engine": "diffusers",
        "options": {"model": "builtin:tiny-sd", "safety_checker": False, "n_threads": 1}}
FAST = {"size": "256x256", "num_inference_steps": 2}


def wait_ready(c: TestClient) -> dict[str, Any]:
    for _ in range(600):
        body: dict[str, Any] = c.get("/ready").json()
        if all(m["state"] != "loading" for m in body["models"].values()):
            return body
        time.sleep(0.05)
    raise TimeoutError("models still loading")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("img")
    cfg = write_config(tmp / "img.yaml", [TINY], images={"store_dir": str(tmp / "store")})
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        assert wait_ready(c)["models"]["tiny-sd"]["state"] == "ready"
        yield c


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def generate(c: TestClient, **body: Any) -> Any:
    return c.post("/v1/images/generations", json={"prompt": "a red fox", **FAST, **body})


def test_png_at_requested_size(client: TestClient) -> None:
    r = generate(client, size="320x256")
    assert r.status_code == 200, r.text
    img = png(r.json()["data"][0]["b64_json"])
    assert img.format == "PNG"
    assert img.size == (320, 256)


def test_same_seed_same_bytes_and_n_differs(client: TestClient) -> None:
    a = generate(client, seed=42).json()["data"][0]["b64_json"]
    b = generate(client, seed=42).json()["data"][0]["b64_json"]
    assert a == b
    two = generate(client, seed=42, n=2).json()["data"]
    assert len(two) == 2
    assert two[0]["b64_json"] != two[1]["b64_json"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "250x256"}, "size"),
        ({"size": "1024x1024"}, "size"),
        ({"size": "big"}, "size"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 51}, "num_inference_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"guidance_scale": 21}, "guidance_scale"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"negative_prompt": "x" * 501}, "negative_prompt"),
        ({"n": 5}, "n"),
        ({"model": "gemma"}, "model"),
    ],
)
def test_limits_name_the_param(client: TestClient, body: dict[str, Any], param: str) -> None:
    r = generate(client, **body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(("field", "value"), [("width", 260), ("height", 800), ("width", 128),
                                              ("num_inference_steps", 0), ("guidance_scale", 25)])
def test_generate_limits(client: TestClient, field: str, value: float) -> None:
    r = client.post("/generate", json={"prompt": "x", field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field


def test_guide_generate_contract(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "a photo of an astronaut riding a horse on mars", "width": 256,
                                       "height": 256, "num_inference_steps": 2})
    body = r.json()
    assert set(body) == {"image_base64", "generation_time", "parameters"}
    assert png(body["image_base64"]).size == (256, 256)
    assert body["parameters"]["negative_prompt"] == "blurry, low quality, distorted"
    assert body["parameters"]["guidance_scale"] == 7.5


def test_url_response_format(client: TestClient) -> None:
    url = generate(client, response_format="url").json()["data"][0]["url"]
    r = client.get(url)
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (256, 256)
    assert client.get("/v1/images/files/..%2Fsecret.png").status_code == 404


def poll(c: TestClient, job_id: str, until: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = c.get(f"/v1/images/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.02)
    raise TimeoutError(job_id)


def test_job_lifecycle(client: TestClient) -> None:
    r = client.post("/v1/images/jobs", json={"prompt": "x", **FAST})
    assert r.status_code == 202
    job = poll(client, r.json()["id"], {"succeeded"})
    assert job["progress"] == {"step": 2, "total": 2}
    assert png(job["data"][0]["b64_json"]).size == (256, 256)


def test_cancel_running_job_stops_early(client: TestClient) -> None:
    job_id = client.post("/v1/images/jobs", json={"prompt": "x", "size": "512x512",
                                                  "num_inference_steps": 50}).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/images/jobs/{job_id}").json()["progress"] in (None, {"step": 0, "total": 50}):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.delete(f"/v1/images/jobs/{job_id}").status_code == 200
    job = poll(client, job_id, {"cancelled", "succeeded"})
    assert job["status"] == "cancelled"
    assert job["progress"]["step"] < 50
    assert job["error"]["code"] == "cancelled"
    assert generate(client).status_code == 200  # the pipeline is still usable


def test_queued_job_has_position_and_cancels(client: TestClient) -> None:
    first = client.post("/v1/images/jobs", json={"prompt": "x", "size": "512x512", "num_inference_steps": 50}).json()
    second = client.post("/v1/images/jobs", json={"prompt": "y", **FAST}).json()
    assert second["status"] == "queued"
    assert second["position"] == 0
    cancelled = client.delete(f"/v1/images/jobs/{second['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["progress"] is None or cancelled["progress"]["step"] == 0
    client.delete(f"/v1/images/jobs/{first['id']}")
    assert client.get("/v1/images/jobs/imgjob-unknown").status_code == 404


def test_ready_reports_image_model(client: TestClient) -> None:
    model = client.get("/ready").json()["models"]["tiny-sd"]
    assert model["state"] == "ready"
    assert model["device"] == "cpu"


@pytest.mark.parametrize(("options", "message"), [
    ({"safety_checker": True}, "has no safety checker"),
    ({"safety_checker": False, "cpu_offload": True}, "cpu_offload needs a CUDA device"),
])
def test_unsafe_or_impossible_configs_fail_loading_clearly(tmp_path: Path, options: dict[str, Any],
                                                            message: str) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available() and "cpu_offload" in options:
        pytest.skip("a GPU is present")
    model = {**TINY, "options": {**TINY["options"], **options}}  # type: ignore[dict-item]
    cfg = write_config(tmp_path / "c.yaml", [model])
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        state = wait_ready(c)["models"]["tiny-sd"]
        assert state["state"] == "failed"
        assert message in state["error"]
        assert c.get("/ready").status_code == 503


def test_same_shape_requests_coalesce_into_one_call(client: TestClient) -> None:
    def detail() -> dict[str, Any]:
        return dict(client.get("/ready").json()["models"]["tiny-sd"])

    blocker = client.post("/v1/images/jobs", json={"prompt": "x", "size": "512x512", "num_inference_steps": 8}).json()
    calls = detail()["pipeline_calls"]
    ids = [client.post("/v1/images/jobs", json={"prompt": f"p{i}", "seed": i, "n": 1 + i % 2, **FAST}).json()["id"]
           for i in range(3)]
    odd = client.post("/v1/images/jobs", json={"prompt": "other shape", "size": "256x320",
                                               "num_inference_steps": 2}).json()["id"]
    poll(client, blocker["id"], {"succeeded"})
    jobs = [poll(client, i, {"succeeded"}) for i in ids]
    poll(client, odd, {"succeeded"})
    assert [len(j["data"]) for j in jobs] == [1, 2, 1]
    assert detail()["pipeline_calls"] - calls == 3  # blocker, the three same-shape jobs together, the odd one
    assert len({j["data"][0]["b64_json"] for j in jobs}) == 3


def test_cancelled_member_of_a_batch_leaves_the_others(client: TestClient) -> None:
    blocker = client.post("/v1/images/jobs", json={"prompt": "x", "size": "512x512", "num_inference_steps": 8}).json()
    keep = client.post("/v1/images/jobs", json={"prompt": "keep", "size": "256x256", "num_inference_steps": 20})
    drop = client.post("/v1/images/jobs", json={"prompt": "drop", "size": "256x256", "num_inference_steps": 20})
    poll(client, blocker["id"], {"succeeded"})
    poll(client, drop.json()["id"], {"running"})
    client.delete(f"/v1/images/jobs/{drop.json()['id']}")
    assert poll(client, keep.json()["id"], {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    assert poll(client, drop.json()["id"], {"succeeded", "failed", "cancelled"})["status"] == "cancelled"


def test_sync_image_deadline(client: TestClient) -> None:
    r = client.post("/v1/images/generations", json={"prompt": "x", "size": "768x768", "num_inference_steps": 50},
                    headers={"X-Request-Timeout": "0.5"})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert generate(client).status_code == 200
