"""Image classification on a real server: KServe V2 clients (plain HTTP JSON as the protocol specifies, and
Triton's own `tritonclient[http]`) classify the held-out digits at the accuracy the build measured."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from llmops.engines.tiny_resnet import Digits, digits
from tests.helpers import encode_image, live_server, write_config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_dir: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("classify-live")
    cfg = write_config(folder / "classify.yaml", [
        {"name": "digits", "kind": "classify", "engine": "classifier",
         "options": {"model": str(tiny_resnet_dir), "n_threads": 1}},
        {"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    with live_server(cfg) as base:
        yield base


@pytest.fixture(scope="module")
def data() -> Digits:
    return digits()


def b64_png(data: Digits, i: int) -> str:
    return base64.b64encode(encode_image(data.images[i], "PNG")).decode()


def test_held_out_accuracy_over_plain_v2_json(server: str, data: Digits, tiny_resnet_dir: Path) -> None:
    stated = json.loads((tiny_resnet_dir / "llmops.json").read_text())["held_out_accuracy"]
    right = 0
    with httpx.Client(base_url=server, timeout=60) as client:
        assert client.get("/v2/health/ready").status_code == 200
        for start in range(0, len(data.test), 60):
            chunk = data.test[start:start + 60]
            request = {"id": f"chunk-{start}", "parameters": {"top_k": 1},
                       "inputs": [{"name": "image", "shape": [len(chunk)], "datatype": "BYTES",
                                   "data": [b64_png(data, i) for i in chunk]}],
                       "outputs": [{"name": "label"}, {"name": "score"}]}
            reply = client.post("/v2/models/digits/infer", json=request)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["id"] == f"chunk-{start}"
            labels = body["outputs"][0]["data"]
            right += sum(label == str(data.labels[i]) for label, i in zip(labels, chunk, strict=True))
    assert right / len(data.test) >= stated - 1 / len(data.test)


def test_tritonclient(server: str, data: Digits) -> None:
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"][1]["shape"] == [-1, 3, 32, 32]
        picks = data.test[20:28]
        images = np.array([b64_png(data, i).encode() for i in picks], dtype=np.object_)
        tensor = http.InferInput("image", [len(picks)], "BYTES")
        tensor.set_data_from_numpy(images, binary_data=False)
        outputs = [http.InferRequestedOutput(name, binary_data=False) for name in ("label", "score")]
        result = client.infer("digits", [tensor], outputs=outputs, parameters={"top_k": 1})
        labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("label").reshape(-1)]
        assert labels == [str(data.labels[i]) for i in picks]
        assert result.as_numpy("score").dtype == np.float32
    finally:
        client.close()


def test_errors_in_the_protocol_envelope(server: str) -> None:
    bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["bm90IGFuIGltYWdl"]}]}
    reply = httpx.post(f"{server}/v2/models/digits/infer", json=bad)
    assert reply.status_code == 400
    assert set(reply.json()) == {"error"}
    assert "accepted format" in reply.json()["error"]
    assert httpx.get(f"{server}/v2/models/nope").json() == {"error": "model 'nope' does not exist"}
