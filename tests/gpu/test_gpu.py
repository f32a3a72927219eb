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
        deadline = time.monotonic() + 300  # a fresh machine builds tiny-sd and initialises CUDA first
        while (ready := c.get("/ready").json()["models"]["tiny-sd"])["state"] == "loading":
            assert time.monotonic() < deadline, ready
            time.sleep(0.1)
        # "failed" here was diffusers' steps_offset FutureWarning (an error under the project's warning filter)
        # raised while building tiny-sd; tiny_sd.py builds with steps_offset=1 and tests/model checks it
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


def test_nvml_gpu_utilization_metric(tmp_path: Any) -> None:
    pytest.importorskip("pynvml")
    from prometheus_client.parser import text_string_to_metric_families

    cfg = write_config(tmp_path / "m.yaml", [{"name": "fake", "engine": "fake"}])
    with TestClient(create_app(load_settings(cfg)), raise_server_exceptions=False) as c:
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    samples = families["gpu_utilization_percent"].samples
    assert samples, "NVML reported no GPU"
    assert all(0 <= s.value <= 100 for s in samples)
    print("gpu_utilization_percent:", [(s.labels, s.value) for s in samples])


def test_tiny_sd_timings_on_gpu(tmp_path: Any) -> None:
    """Seconds per image on the GPU (fp16), for the record: printed, never asserted against a threshold."""
    import asyncio

    from llmops.engines.base import ImageRequest
    from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

    async def run() -> None:
        engine = DiffusersEngine("t", DiffusersOptions(model="builtin:tiny-sd", safety_checker=False))
        await engine.start()
        for size in (256, 512):
            req = ImageRequest("r", "x", None, size, size, 30, 7.5, 1, 1)
            await engine.generate_images([req])  # warm-up
            started = time.perf_counter()
            await engine.generate_images([req])
            print(f"tiny-sd fp16 {size}px 30 steps: {time.perf_counter() - started:.3f} s")
            batch = [ImageRequest(f"r{i}", "x", None, size, size, 30, 7.5, 1, i) for i in range(4)]
            started = time.perf_counter()
            await engine.generate_images(batch)
            print(f"tiny-sd fp16 {size}px 30 steps, batch of 4: {time.perf_counter() - started:.3f} s")
        await engine.close()

    asyncio.run(run())


# inductor warns when a graph it compiles has a float32 matmul and TF32 is off; tiny-sd here is fp16, but the
# warning is advice, not a fault, and the project's filter would turn it into a failure
@pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning")
# torch's CUDA-graph tree manager captures an empty graph on purpose as it starts (cudagraph_trees.py, to
# set up its memory pool), and torch warns about any empty capture: seen on an H200, torch 2.11
@pytest.mark.filterwarnings("ignore:The CUDA Graph is empty:UserWarning")
def test_compiled_tiny_sd_serves_its_warmed_batch_sizes_without_compiling(tmp_path: Any) -> None:
    """The compile option compiles and records every configured batch size before ready: serving them
    adds no graph; with the batch dimension dynamic (compile_dynamic_batch), neither does a size it did not
    warm (3), which only records its CUDA graph. Timings printed for the record, never asserted."""
    import asyncio

    from torch._dynamo.utils import counters

    from llmops.engines.base import ImageRequest
    from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

    async def run() -> None:
        engine = DiffusersEngine("t", DiffusersOptions(
            model="builtin:tiny-sd", safety_checker=False, compile=True, compile_batch_sizes=[1, 2],
            compile_dynamic_batch=True, compile_size=256, compile_cache_dir=str(tmp_path / "cache")))
        started = time.perf_counter()
        await engine.start()
        health = engine.health()
        print(f"tiny-sd compiled for batch 1 and 2 in {time.perf_counter() - started:.1f} s, graphs traced per "
              f"size {health.detail['compile_graphs_per_size']}")
        assert health.state == "ready"
        assert health.detail["compiled"] is True
        graphs = counters["stats"]["unique_graphs"]
        for batch in (1, 2, 3, 1):
            reqs = [ImageRequest(f"r{i}", "x", None, 256, 256, 30, 7.5, 1, i) for i in range(batch)]
            started = time.perf_counter()
            results = await engine.generate_images(reqs)
            print(f"compiled tiny-sd fp16 256px 30 steps, batch {batch}: {time.perf_counter() - started:.3f} s")
            assert all(len(r.images) == 1 for r in results)
        assert counters["stats"]["unique_graphs"] == graphs
        assert any((tmp_path / "cache").iterdir())
        await engine.close()

    asyncio.run(run())
