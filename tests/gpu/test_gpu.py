"""GPU checks: run on a machine with CUDA (skipped elsewhere). fp16 diffusion on the tiny pipeline,
GPU memory in /ready, and the transformers engine on the GPU."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.settings import load_settings
from tests.helpers import write_config

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_fp16_diffusion_on_gpu(tmp_path: Any) -> None:
    from PIL import Image

    cfg = write_config(tmp_path / "g.yaml", [{"name": "tiny-sd", "kind": "image", "engine": "diffusers",
                                              "options": {"model": "builtin:tiny-sd", "safety_checker": False,
                                                          "attention_slicing": True, "vae_slicing": True}}])
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        for _ in range(600):
            ready = c.get("/ready").json()["models"]["tiny-sd"]
            if ready["state"] != "loading":
                break
            time.sleep(0.1)
        assert ready["state"] == "ready", ready
        assert (ready["device"], ready["dtype"]) == ("cuda", "float16")
        assert ready["gpu_memory_allocated_bytes"] > 0
        started = time.perf_counter()
        r = c.post("/v1/images/generations", json={"prompt": "x", "size": "512x512", "num_inference_steps": 30,
                                                   "seed": 1})
        print(f"tiny-sd fp16 512px 30 steps on GPU: {time.perf_counter() - started:.3f} s")
        assert r.status_code == 200, r.text
        img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
        assert img.size == (512, 512)
