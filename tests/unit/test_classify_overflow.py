"""A finite but huge FP32 tensor (every value 1e38, within FP32) overflowed the classifier's logits to inf;
the softmax made NaN of them and the answer failed to serialise: a 500 "Out of range float values", logged
with a traceback, billed and counted as a success. Now the softmax is shifted by each row's maximum (large
finite logits are fine), a row whose logits are not finite has no scores, and its request alone is refused
with a 400 in the path's envelope, not billed and not counted as a success."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.engines.base import Label
from llmops.engines.tiny_resnet import Digits, image_processor
from llmops.scheduling.image_jobs import ClassifyRunner
from tests.unit.test_classify import INFER, bytes_request, digit_png, serve, spent, v2_error

HUGE = 1e38  # a finite FP32 (the largest is about 3.4e38)


@pytest.fixture(scope="module")
def data() -> Digits:
    from llmops.engines.tiny_resnet import digits

    return digits()


@pytest.fixture
def client(tmp_path: Path, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    yield from serve(tmp_path, tiny_resnet_dir)


def tensor(value: float, n: int = 1) -> dict[str, Any]:
    return {"inputs": [{"name": "pixel_values", "shape": [n, 3, 32, 32], "datatype": "FP32",
                        "data": [value] * (n * 3 * 32 * 32)}]}


def test_stable_softmax() -> None:
    torch = pytest.importorskip("torch")
    from llmops.engines.classifier import stable_softmax

    logits = torch.tensor([[1e30, 0.0, -1e30], [float("inf"), 0.0, 0.0], [1.0, 2.0, 3.0],
                           [float("nan"), 1.0, 1.0], [3e38, -3e38, 0.0]])
    probs = stable_softmax(logits)
    assert probs[0].tolist() == [1.0, 0.0, 0.0]  # large finite logits: no overflow, no NaN
    assert torch.allclose(probs[2], torch.softmax(logits[2], -1))
    assert probs[4].tolist() == [1.0, 0.0, 0.0]  # the spread itself overflows float32: still finite
    assert all(math.isnan(p) for row in (1, 3) for p in probs[row].tolist())  # no scores for these rows
    half = stable_softmax(torch.tensor([[60000.0, 0.0]], dtype=torch.float16))
    assert half.dtype == torch.float32
    assert half[0].tolist() == [1.0, 0.0]


def test_a_non_finite_score_refuses_that_request_only() -> None:
    runner = ClassifyRunner(engine=None)  # type: ignore[arg-type]  # refusal reads the result only
    assert runner.refusal([[Label("1", 0.9, 1)], [Label("2", 0.5, 2)]]) is None
    error = runner.refusal([[Label("1", 0.9, 1)], [Label("2", float("nan"), 2)]])
    assert error is not None
    assert error.code == "non_finite_output"
    assert "image 1" in error.message


def test_an_overflowing_tensor_is_a_400_not_billed_nor_a_success(client: TestClient, data: Digits) -> None:
    for value in (HUGE, -HUGE):
        resp = client.post(INFER, json=tensor(value))
        v2_error(resp, 400, "overflowed")
    metrics = client.get("/metrics").text
    assert 'inference_requests_total{model="digits",status="success"}' not in metrics
    assert 'llmops_images_classified_total{model="digits"}' not in metrics
    good = client.post(INFER, json=bytes_request([digit_png(data, data.test[0])]))
    assert good.status_code == 200, good.text
    assert spent(client) == pytest.approx(0.001)  # the good image only
    assert client.post(INFER, json=tensor(HUGE)).headers.get("x-cache") != "hit"  # refusals are not cached


@pytest.fixture
def pairs(tmp_path: Path, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    """Two requests to a model call: the first waits up to 2 s for the second."""
    yield from serve(tmp_path, tiny_resnet_dir, max_batch_size=2, batch_timeout_s=2.0)


def test_an_overflowing_request_does_not_spoil_its_batch(pairs: TestClient, data: Digits) -> None:
    good = image_processor()(images=[data.images[i].convert("RGB") for i in data.test[12:14]],
                             return_tensors="np")["pixel_values"]
    good_request = {"inputs": [{"name": "pixel_values", "shape": list(good.shape), "datatype": "FP32",
                                "data": good.flatten().tolist()}]}
    with ThreadPoolExecutor(2) as pool:
        bad, ok = pool.map(lambda body: pairs.post(INFER, json=body), [tensor(HUGE), good_request])
    v2_error(bad, 400, "overflowed")
    assert ok.status_code == 200, ok.text
    labels = next(o for o in ok.json()["outputs"] if o["name"] == "label")["data"]
    assert labels[::5] == [str(data.labels[i]) for i in data.test[12:14]]
    assert 'llmops_batch_size_count{model="digits"} 1.0' in pairs.get("/metrics").text  # one model call
