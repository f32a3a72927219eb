"""Images through a real server: the official openai client's images.generate, and the guide's curl."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from collections.abc import Iterator

import openai
import pytest

from tests.helpers import live_server, write_config

pytest.importorskip("diffusers")
from PIL import Image

TINY = {"name": "tiny-sd", "kind": "image", "engine": "diffusers",
        "options": {"model": "builtin:tiny-sd", "safety_checker": False, "n_threads": 1},
        "limits": {"image": {"default_steps": 4}}}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = write_config(tmp_path_factory.mktemp("img") / "img.yaml", [TINY])
    with live_server(cfg) as base:
        yield base


def test_openai_images_generate(base_url: str) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        result = client.images.generate(model="tiny-sd", prompt="a lighthouse at dusk", size="256x256", n=1,
                                        response_format="b64_json", extra_body={"seed": 3})
        assert result.data is not None
        b64 = result.data[0].b64_json
        assert b64 is not None
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert (img.format, img.size) == ("PNG", (256, 256))
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.generate(model="tiny-sd", prompt="x", size="100x100")
        assert bad.value.param == "size"


def test_guide_curl_example(base_url: str) -> None:
    # The guide's example, as printed, plus a smaller size so that it runs quickly on a CPU.
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{base_url}/generate", "-H", "Content-Type: application/json", "-d",
         '{"prompt": "a photo of an astronaut riding a horse on mars, cinematic lighting", '
         '"width": 256, "height": 256}'],
        capture_output=True, text=True, timeout=120, check=True)
    body = json.loads(out.stdout)
    assert Image.open(io.BytesIO(base64.b64decode(body["image_base64"]))).size == (256, 256)
    assert body["generation_time"] >= 0
    assert body["parameters"]["num_inference_steps"] == 4
