"""A request's images are bounded together, not only one by one: 64 PNGs of about 2 KB, each a blank
4000x4000 image at the per-image pixel limit, once decoded to RGB and were all held at once (7.9 GB of peak
memory for a 1 MB body). Now every header is read first and the request's pixels are refused past a budget
before anything is decoded, and each image is scaled down before the next is decoded."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from llmops.api.classifying import Target, image_limits
from llmops.errors import InvalidRequest
from llmops.media.image_input import MAX_REQUEST_PIXELS, ImageLimits, decode_images
from llmops.settings import ModelConfig
from tests.helpers import encode_image
from tests.unit.test_classify import INFER, b64, bytes_request, serve, v2_error
from tests.unit.test_image_input import png_header_only

SIDE = 4000  # 16 M pixels: the default per-image limit


def blank_png(side: int = SIDE) -> bytes:
    """About 2 KB of PNG that decodes to side x side pixels."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_budget_is_checked_from_the_headers_before_any_image_is_decoded() -> None:
    corrupt = encode_image(Image.effect_noise((100, 100), 50).convert("RGB"), "PNG")
    items = [(corrupt[: len(corrupt) // 2], "x[0]")] + [(png_header_only(1000, 1000), f"x[{i}]") for i in (1, 2)]
    limits = ImageLimits(200_000, 1_000_000, max_request_pixels=1_500_000)
    with pytest.raises(InvalidRequest) as info:
        decode_images(items, limits)  # x[0] fails only once decoded: the budget is refused first, at x[2]
    assert info.value.code == "request_too_many_pixels"
    assert info.value.param == "x[2]"
    assert "2010000 pixels" in info.value.message
    assert "1500000 pixels in all" in info.value.message


def test_a_request_at_the_budget_decodes() -> None:
    items = [(encode_image(Image.new("L", (1000, 500), 9), "PNG"), f"x[{i}]") for i in range(3)]
    assert len(decode_images(items, ImageLimits(200_000, 1_000_000, max_request_pixels=1_500_000))) == 3


def test_each_image_is_scaled_down_to_the_kept_side() -> None:
    items = [(encode_image(Image.new("1", (400, 200), 1), "PNG"), "x[0]"),
             (encode_image(Image.new("L", (30, 90), 7), "PNG"), "x[1]"),
             (encode_image(Image.new("RGB", (64, 1000), (1, 2, 3)), "PNG"), "x[2]")]
    images = decode_images(items, ImageLimits(200_000, 1_000_000, keep_side=64))
    assert [im.size for im in images] == [(128, 64), (30, 90), (64, 1000)]  # shorter side <= 64, aspect kept
    assert {im.mode for im in images} == {"RGB"}
    assert images[0].getpixel((5, 5)) == (255, 255, 255)
    assert decode_images(items[:1], ImageLimits(200_000, 1_000_000))[0].size == (400, 200)  # None: whole


PEAK = """
import io, resource
from PIL import Image
from llmops.media.image_input import ImageLimits, decode_images
buf = io.BytesIO()
Image.new("1", (4000, 4000)).save(buf, format="PNG")
Image.new("RGB", (8, 8)).convert("L").resize((4, 4))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_images([(buf.getvalue(), f"x[{i}]") for i in range(4)], ImageLimits(4_000_000, 16_000_000, keep_side=64))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_one_full_size_image_is_held_at_a_time() -> None:
    grown_kib = int(subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True).stdout)
    full_rgb_mib = 4000 * 4000 * 4 / 2**20  # Pillow keeps RGB in 4 bytes a pixel: 61 MiB
    assert grown_kib / 1024 < 2 * full_rgb_mib  # all four kept whole would be 4 x 61 MiB


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    """The digits model with the default image limits: 16 M pixels an image, 64 images a request."""
    yield from serve(tmp_path_factory.mktemp("image-budget"), tiny_resnet_dir, max_image_bytes=4_000_000,
                     max_pixels=16_000_000, max_images=64)


def test_blank_images_at_the_per_image_limit_refused_past_the_budget(client: TestClient) -> None:
    assert MAX_REQUEST_PIXELS == 4 * SIDE * SIDE
    png = blank_png()
    v2_error(client.post(INFER, json=bytes_request([png] * 5)), 400, "inputs[0].data[4]", "80000000 pixels",
             f"{MAX_REQUEST_PIXELS} pixels in all")
    err = client.post("/v1/classifications", json={"images": [b64(png)] * 5}).json()["error"]
    assert (err["code"], err["param"]) == ("request_too_many_pixels", "images[4]")
    files = [("file", (f"{i}.png", png, "image/png")) for i in range(5)]
    err = client.post("/v1/classifications", files=files).json()["error"]
    assert (err["code"], err["param"]) == ("request_too_many_pixels", "file[4] (4.png)")


def test_blank_images_within_the_budget_are_classified(client: TestClient) -> None:
    resp = client.post(INFER, json=bytes_request([blank_png()] * 4))
    assert resp.status_code == 200, resp.text
    assert next(o for o in resp.json()["outputs"] if o["name"] == "label")["shape"][0] == 4


def test_the_budget_allows_one_image_at_a_higher_per_image_limit(client: TestClient) -> None:
    _, engine = client.app.state.services.pool.classify_engine("digits")  # type: ignore[attr-defined]
    config = ModelConfig(name="big", kind="classify", engine="classifier",
                         limits={"classify": {"max_pixels": 100_000_000}})  # type: ignore[arg-type]
    limits = image_limits(Target(config, engine))
    assert limits.max_request_pixels == 100_000_000
    assert limits.keep_side == 2 * 32  # twice the tiny ResNet's 32x32 input
