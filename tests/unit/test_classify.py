"""Image classification on the in-process app with the real tiny ResNet: the Open Inference Protocol
(KServe V2) REST surface checked against the protocol's schema, /v1/classifications, the bad inputs, keys,
cache, cost and metrics."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from llmops.engines.tiny_resnet import Digits, digits, image_processor
from llmops.stores.keys import KeyLimits, new_key
from tests.helpers import encode_image, ready_client, write_config
from tests.unit.test_image_input import png_header_only

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "open_inference_v2_rest.schema.json").read_text())
INFER = "/v2/models/digits/infer"


def conforms(instance: Any, definition: str) -> None:
    jsonschema.validate(instance, {**SCHEMA, "$ref": f"#/$defs/{definition}"})


@pytest.fixture(scope="module")
def data() -> Digits:
    return digits()


def serve(tmp_path: Path, tiny_resnet_dir: Path, **classify: Any) -> Iterator[TestClient]:
    limits = {"max_image_bytes": 100_000, "max_pixels": 1_000_000, "max_images": 8, **classify}
    models = [
        {"name": "digits", "kind": "classify", "engine": "classifier",
         "options": {"model": str(tiny_resnet_dir), "n_threads": 1}, "limits": {"classify": limits},
         "pricing": {"image_usd": 0.001}},
        {"name": "fake", "engine": "fake"},
    ]
    cfg = write_config(tmp_path / "c.yaml", models, state={"backend": "memory"}, cache={"enabled": True})
    with ready_client(cfg, 60) as c:
        yield c


@pytest.fixture
def client(tmp_path: Path, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    yield from serve(tmp_path, tiny_resnet_dir)


@pytest.fixture
def slow_batches(tmp_path: Path, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    """The first request of a batch waits up to 2 s for companions, up to 8 requests in one model call."""
    yield from serve(tmp_path, tiny_resnet_dir, max_batch_size=8, batch_timeout_s=2.0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bytes_request(images: list[bytes], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(x) for x in images]}], **extra}


def v2_error(resp: Any, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    conforms(body, "error_response")
    assert set(body) == {"error"}
    for needle in needles:
        assert needle in body["error"]
    return str(body["error"])


def digit_png(data: Digits, i: int) -> bytes:
    return encode_image(data.images[i], "PNG")


def test_health_metadata_and_ready(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    server = client.get("/v2").json()
    conforms(server, "metadata_server_response")
    meta = client.get("/v2/models/digits").json()
    conforms(meta, "metadata_model_response")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                              {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "index"]


def test_infer_bytes_follows_the_protocol(client: TestClient, data: Digits) -> None:
    picks = data.test[:3]
    request = bytes_request([digit_png(data, i) for i in picks], id="req-7", parameters={"top_k": 2})
    conforms(request, "inference_request")
    resp = client.post(INFER, json=request)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    conforms(body, "inference_response")
    assert body["model_name"] == "digits"
    assert body["id"] == "req-7"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["datatype"] == "BYTES"
    assert out["label"]["shape"] == [3, 2]
    assert out["score"]["datatype"] == "FP32"
    assert out["index"]["datatype"] == "INT64"
    scores = np.array(out["score"]["data"]).reshape(3, 2)
    assert (scores[:, 0] >= scores[:, 1]).all()
    assert (scores <= 1).all()
    assert out["label"]["data"][::2] == [str(data.labels[i]) for i in picks]
    assert out["index"]["data"][::2] == [data.labels[i] for i in picks]


def test_held_out_digits_at_the_stated_accuracy(client: TestClient, data: Digits, tiny_resnet_dir: Path) -> None:
    stated = json.loads((tiny_resnet_dir / "llmops.json").read_text())["held_out_accuracy"]
    right = 0
    for start in range(0, len(data.test), 8):
        chunk = data.test[start:start + 8]
        body = client.post(INFER, json=bytes_request([digit_png(data, i) for i in chunk],
                                                     outputs=[{"name": "label"}], parameters={"top_k": 1})).json()
        assert [o["name"] for o in body["outputs"]] == ["label"]
        right += sum(label == str(data.labels[i]) for label, i in zip(body["outputs"][0]["data"], chunk, strict=True))
    accuracy = right / len(data.test)
    assert stated > 0.95
    assert accuracy >= stated - 1 / len(data.test)  # the same images as the build measured, batched differently


def test_fp32_tensor_nchw_and_nhwc(client: TestClient, data: Digits) -> None:
    picks = data.test[:2]
    pixels = image_processor()(images=[data.images[i].convert("RGB") for i in picks],
                               return_tensors="np")["pixel_values"]
    for array in (pixels, pixels.transpose(0, 2, 3, 1)):
        request = {"inputs": [{"name": "pixel_values", "shape": list(array.shape), "datatype": "FP32",
                               "data": array.flatten().tolist()}]}
        body = client.post(INFER, json=request).json()
        labels = next(o for o in body["outputs"] if o["name"] == "label")
        assert labels["data"][::5] == [str(data.labels[i]) for i in picks]
    nested = {"inputs": [{"name": "x", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.tolist()}]}
    assert client.post(INFER, json=nested).status_code == 200


def test_bad_inputs_get_400_naming_the_problem(client: TestClient, data: Digits) -> None:
    good = digit_png(data, data.test[0])
    noise = encode_image(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    v2_error(client.post(INFER, json=bytes_request([png_header_only(20_000, 20_000)])), 400, "inputs[0].data[0]",
             "pixels")
    v2_error(client.post(INFER, json=bytes_request([noise[:len(noise) // 2]])), 400, "truncated or corrupt")
    v2_error(client.post(INFER, json=bytes_request([encode_image(Image.new("RGB", (8, 8)), "TIFF")])), 400,
             "accepted format")
    v2_error(client.post(INFER, json=bytes_request([b"\x89PNG" + b"\0" * 100_000])), 400, "the limit is 100000")
    bad_b64 = bytes_request([good])
    bad_b64["inputs"][0]["data"] = ["not base64!"]
    v2_error(client.post(INFER, json=bad_b64), 400, "not valid base64")
    v2_error(client.post(INFER, json=bytes_request([good] * 9)), 400, "9 images", "limit is 8")
    v2_error(client.post(INFER, json=bytes_request([good], parameters={"top_k": 11})), 400, "top_k")
    v2_error(client.post(INFER, json=bytes_request([good], outputs=[{"name": "logits"}])), 400, "unknown output")


def test_bad_tensors_get_400(client: TestClient) -> None:
    def tensor(shape: list[int], datatype: str = "FP32", data: list[Any] | None = None) -> dict[str, Any]:
        n = int(np.prod(shape))
        return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                            "data": data if data is not None else [0.0] * n}]}

    v2_error(client.post(INFER, json=tensor([1, 3, 16, 16])), 400, "[N, 3, 32, 32] or [N, 32, 32, 3]")
    v2_error(client.post(INFER, json=tensor([1, 3, 32, 32], "INT32")), 400, "INT32 is not accepted")
    v2_error(client.post(INFER, json=tensor([1, 3, 32, 32], data=[0.0] * 5)), 400, "holds 3072 elements but data has 5")
    v2_error(client.post(INFER, json=tensor([1, 3, 32, 32], data=["a"] * 3072)), 400, "numbers only")
    v2_error(client.post(INFER, json=tensor([2, 0])), 400, "every dimension")
    v2_error(client.post(INFER, json=tensor([1], "FP8")), 400, "datatype")
    two = tensor([1, 3, 32, 32])
    two["inputs"].append(two["inputs"][0])
    v2_error(client.post(INFER, json=two), 400, "takes one input")
    v2_error(client.post(INFER, json={"inputs": []}), 400)
    v2_error(client.post(INFER, content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_unknown_and_other_kind_models_are_404(client: TestClient) -> None:
    v2_error(client.post("/v2/models/nope/infer", json=bytes_request([b"x"])), 404, "'nope' does not exist")
    v2_error(client.get("/v2/models/fake"), 404, "chat model")
    v2_error(client.get("/v2/models/fake/ready"), 404)


def test_classifications_json_and_multipart(client: TestClient, data: Digits) -> None:
    picks = data.test[:2]
    pngs = [digit_png(data, i) for i in picks]
    body = client.post("/v1/classifications", json={"model": "digits", "images": [b64(p) for p in pngs],
                                                    "top_k": 3}).json()
    assert body["object"] == "list"
    assert body["model"] == "digits"
    assert body["usage"] == {"images": 2}
    assert [d["labels"][0]["label"] for d in body["data"]] == [str(data.labels[i]) for i in picks]
    assert len(body["data"][0]["labels"]) == 3
    files = [("file", (f"{i}.png", p, "image/png")) for i, p in zip(picks, pngs, strict=True)]
    uploaded = client.post("/v1/classifications", files=files, data={"top_k": "1"}).json()
    assert [d["labels"] for d in uploaded["data"]] == [d["labels"][:1] for d in body["data"]]
    err = client.post("/v1/classifications", json={"images": ["@@"]}).json()["error"]
    assert err["param"] == "images[0]"
    assert err["type"] == "invalid_request_error"
    err = client.post("/v1/classifications", files=[("file", ("a.tif", encode_image(Image.new("RGB", (4, 4)), "TIFF"),
                                                               "image/tiff"))]).json()["error"]
    assert err["code"] == "unsupported_image_format"
    assert err["param"] == "file[0] (a.tif)"
    assert client.post("/v1/classifications", json={"model": "fake", "images": ["AA=="]}).status_code == 404


def test_identical_images_hit_the_cache_and_cost_per_image(client: TestClient, data: Digits) -> None:
    request = bytes_request([digit_png(data, data.test[5])] * 2)
    first = client.post(INFER, json=request)
    second = client.post(INFER, json=request)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json()["outputs"] == second.json()["outputs"]
    assert client.post(INFER, json=request, headers={"Cache-Control": "no-cache"}).headers["x-cache"] == "bypass"
    metrics = client.get("/metrics").text
    assert 'llmops_images_classified_total{model="digits"} 4.0' in metrics  # the hit ran nothing
    assert 'inference_requests_total{model="digits",status="success"} 2.0' in metrics
    assert 'llmops_cache_requests_total{model="digits",result="hit"} 1.0' in metrics
    assert 'llmops_batch_size_count{model="digits"} 2.0' in metrics
    assert spent(client) == pytest.approx(0.004)  # 4 images ran, at $0.001 each; the hit cost nothing


def spent(client: TestClient) -> float:
    """The anonymous caller's recorded spend on digits, once the background settling has written it."""
    deadline = time.monotonic() + 10
    while True:
        lines = [x for x in client.get("/metrics").text.splitlines()
                 if x.startswith('llmops_spend_usd_total{key="-",model="digits"}')]
        if lines or time.monotonic() > deadline:
            return float(lines[0].split()[-1]) if lines else 0.0
        time.sleep(0.02)


def test_key_permissions(client: TestClient, data: Digits) -> None:
    store = client.app.state.services.state.keys  # type: ignore[attr-defined]
    only_fake, fake_secret = new_key("only-fake", ("fake",), "interactive", KeyLimits())
    digits_key, digits_secret = new_key("digits", ("digits",), "interactive", KeyLimits())
    once, once_secret = new_key("once", ("digits",), "interactive", KeyLimits(rpm=1))
    broke, broke_secret = new_key("broke", ("digits",), "interactive", KeyLimits(budget_usd=0.0005))
    for key in (only_fake, digits_key, once, broke):
        client.portal.call(store.add, key)  # type: ignore[union-attr]
    request = bytes_request([digit_png(data, data.test[0])])
    deadline = time.monotonic() + 10  # the auth middleware re-reads the key count once a second
    while client.post(INFER, json=request).status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.05)
    v2_error(client.post(INFER, json=request), 401, "missing API key")
    v2_error(client.post(INFER, json=request, headers={"Authorization": f"Bearer {fake_secret}"}), 403,
             "may not use model 'digits'")
    denied = client.post("/v1/classifications", json={"images": request["inputs"][0]["data"]},
                         headers={"Authorization": f"Bearer {fake_secret}"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "model_not_allowed"
    assert client.post(INFER, json=request, headers={"X-API-Key": digits_secret}).status_code == 200
    assert client.get("/v2/health/live").status_code == 200  # probes stay open
    assert client.post(INFER, json=request, headers={"X-API-Key": once_secret}).status_code == 200
    limited = client.post(INFER, json=request, headers={"X-API-Key": once_secret})
    v2_error(limited, 429)
    assert "retry-after" in limited.headers
    broke_auth = {"X-API-Key": broke_secret, "Cache-Control": "no-cache"}  # a cache hit would cost nothing
    assert client.post(INFER, json=request, headers=broke_auth).status_code == 200  # $0.001: over the $0.0005 budget
    deadline = time.monotonic() + 10  # the spend is settled in the background
    while (resp := client.post(INFER, json=request, headers=broke_auth)).status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    v2_error(resp, 429, "budget")


def test_concurrent_requests_share_one_model_call(slow_batches: TestClient, data: Digits) -> None:
    picks = data.test[12:20]  # eight the model gets right (it misses test[5] and test[11])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: slow_batches.post(INFER, json=bytes_request([digit_png(data, i)])), picks))
    labels = [next(o for o in a.json()["outputs"] if o["name"] == "label")["data"][0] for a in answers]
    assert labels == [str(data.labels[i]) for i in picks]
    metrics = slow_batches.get("/metrics").text
    assert 'llmops_images_classified_total{model="digits"} 8.0' in metrics
    calls = float(metrics.split('llmops_batch_size_count{model="digits"} ')[1].split()[0])
    assert calls < 8  # a full batch of 8 runs at once, without waiting out the 2 s


def test_deadline_while_waiting_for_a_batch(slow_batches: TestClient, data: Digits) -> None:
    request = bytes_request([digit_png(data, data.test[0])])
    resp = slow_batches.post(INFER, json=request, headers={"X-Request-Timeout": "0.2"})
    v2_error(resp, 504, "deadline")
    assert 'llmops_rejections_total{model="digits",reason="deadline"} 1.0' in slow_batches.get("/metrics").text
