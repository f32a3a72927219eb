"""The Open Inference Protocol's input tensor is bounded before any arithmetic on it: a shape of half a million
dimensions (a 1 MB body) once stalled the event loop for seconds multiplying it out, then answered 500 because
its element count had more digits than Python will print. Every such input is now a short 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.api.inference_v2 import MAX_DIMENSION, MAX_ELEMENTS, MAX_RANK
from tests.unit.test_classify import INFER, serve, v2_error


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    yield from serve(tmp_path_factory.mktemp("v2-limits"), tiny_resnet_dir)


def tensor(shape: list[int], datatype: str = "BYTES", data: list[Any] | None = None) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data or []}]}


def short_400(resp: Any, *needles: str) -> str:
    message = v2_error(resp, 400, *needles)
    assert len(message) < 300  # no shape or count of thousands of digits is echoed back
    return message


def test_a_shape_of_half_a_million_dimensions_is_refused_by_its_rank(client: TestClient) -> None:
    body = tensor([2] * 495_000)  # 2**495000 elements: 149,000 digits, once multiplied out (twice) and printed
    short_400(client.post(INFER, json=body), "inputs[0].shape", "495000 dimensions", f"1 to {MAX_RANK}")
    short_400(client.post(INFER, json=tensor([1] * (MAX_RANK + 1))), f"{MAX_RANK + 1} dimensions")
    short_400(client.post(INFER, json=tensor([])), "0 dimensions")


def test_a_huge_dimension_is_refused_without_being_printed(client: TestClient) -> None:
    huge = 10**3999  # JSON allows it; the product of two has 7,999 digits, more than Python will format
    message = short_400(client.post(INFER, json=tensor([huge, huge])), "inputs[0].shape[0]",
                        f"from 1 to {MAX_DIMENSION}")
    assert "0000000000" not in message
    short_400(client.post(INFER, json=tensor([1, MAX_DIMENSION + 1])), "inputs[0].shape[1]")
    short_400(client.post(INFER, json=tensor([2, 0])), "every dimension")
    short_400(client.post(INFER, json=tensor([-1])), "every dimension")


def test_too_many_elements_refused_before_the_data_is_read(client: TestClient) -> None:
    short_400(client.post(INFER, json=tensor([MAX_DIMENSION] * MAX_RANK)), f"more than {MAX_ELEMENTS} elements")
    short_400(client.post(INFER, json=tensor([1, 3, 8192, 8192], "FP32")), f"more than {MAX_ELEMENTS} elements")


def test_the_datatype_is_checked_first(client: TestClient) -> None:
    short_400(client.post(INFER, json=tensor([2] * 10_000, "INT64")), "INT64 is not accepted")


def test_data_length_must_match_the_shape(client: TestClient) -> None:
    short_400(client.post(INFER, json=tensor([3], data=["AA=="])), "holds 3 elements but data has 1")
    short_400(client.post(INFER, json=tensor([1, 1], data=["AA==", "AA=="])), "holds 1 elements but data has 2")


def test_image_count_checked_before_decoding(client: TestClient) -> None:
    short_400(client.post(INFER, json=tensor([9], data=["@"] * 9)), "9 images", "limit is 8")  # not base64


def test_a_number_beyond_fp32_is_a_400(client: TestClient) -> None:
    for bad in (10**3999, 1e300, -1e39):  # the first once raised OverflowError converting to float: a 500
        data: list[Any] = [0.0] * (3 * 32 * 32 - 1) + [bad]
        short_400(client.post(INFER, json=tensor([1, 3, 32, 32], "FP32", data)), "not a finite FP32 number")


def test_each_output_asked_for_once(client: TestClient) -> None:
    body = tensor([1], data=["AA=="])
    body["outputs"] = [{"name": "label"}] * 20_000  # would answer the labels 20,000 times
    short_400(client.post(INFER, json=body), "each output may be asked for once")
