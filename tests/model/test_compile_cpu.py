"""The diffusers compile option for real, on the CPU (`compile_force`; CUDA graphs are the GPU's, tests/gpu):
the cold start compiles into the configured cache folder, and a restart (a new process) compiles nothing:
every graph comes from that folder. The restart runs in its own process with its own empty TMPDIR, so
torch's default cache folder (under /tmp) is new and empty there and cannot be where a hit came from. The
cold start runs in this process, under the project's warning filter, as tests/gpu compiles.

This caught two faults: importing diffusers' pipelines makes torch set TORCHINDUCTOR_CACHE_DIR to its
default folder under /tmp, so the option's folder was never used and a container's restart compiled again;
and the first compile in a process raises a torch deprecation warning that the filter made an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.model

CHILD = r"""
import asyncio, json, sys
from torch._dynamo.utils import counters
from llmops.engines.base import ImageRequest
from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

async def main() -> None:
    engine = DiffusersEngine("t", DiffusersOptions(
        model="builtin:tiny-sd", safety_checker=False, n_threads=1, compile=True, compile_force=True,
        compile_batch_sizes=[1], compile_size=64, compile_cache_dir=sys.argv[1]))
    await engine.start()
    graphs = counters["stats"]["unique_graphs"]
    results = await engine.generate_images([ImageRequest("r", "x", None, 64, 64, 2, 7.5, 1, 1)])
    new_graphs = counters["stats"]["unique_graphs"] - graphs
    health = engine.health()
    print(json.dumps({"state": health.state, "compile_s": health.detail["compile_s"],
                      "images": len(results[0].images), "graphs_while_serving": new_graphs,
                      "hits": health.detail["compile_cache_hits"], "misses": health.detail["compile_cache_misses"],
                      "all_hits": counters["inductor"]["fxgraph_cache_hit"],
                      "all_misses": counters["inductor"]["fxgraph_cache_miss"]}))
    await engine.close()

asyncio.run(main())
"""


async def cold_start(cache: Path) -> dict[str, Any]:
    from llmops.engines.base import ImageRequest
    from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

    engine = DiffusersEngine("t", DiffusersOptions(
        model="builtin:tiny-sd", safety_checker=False, n_threads=1, compile=True, compile_force=True,
        compile_batch_sizes=[1], compile_size=64, compile_cache_dir=str(cache)))
    try:
        await engine.start()
        results = await engine.generate_images([ImageRequest("r", "x", None, 64, 64, 2, 7.5, 1, 1)])
        health = engine.health()
        return {"state": health.state, "compile_s": health.detail["compile_s"], "images": len(results[0].images),
                "hits": health.detail["compile_cache_hits"], "misses": health.detail["compile_cache_misses"]}
    finally:
        await engine.close()


def restart(cache: Path, tmp: Path) -> dict[str, Any]:
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["TMPDIR"] = str(tmp)
    done = subprocess.run([sys.executable, "-c", CHILD, str(cache)], capture_output=True, text=True, env=env,
                          timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


async def test_a_restart_compiles_nothing_the_cache_folder_has(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("diffusers")
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # set by the compile; gone after the test
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    cold = await cold_start(cache)
    assert (cold["state"], cold["images"]) == ("ready", 1), cold
    assert cold["misses"] > 0, cold  # compiled, from an empty folder
    assert cold["hits"] == 0, cold
    assert any(cache.iterdir()), "the cold start wrote nothing to the configured cache folder"
    warm = restart(cache, tmp_path / "tmp-warm")
    assert (warm["state"], warm["images"], warm["graphs_while_serving"]) == ("ready", 1, 0), warm
    assert warm["misses"] == 0, warm  # every graph from the folder
    assert warm["hits"] == cold["misses"], warm
    assert (warm["all_hits"], warm["all_misses"]) == (warm["hits"], 0), warm  # serving compiled nothing
    print(f"tiny-sd compiled on the CPU (64 px, batch 1): cold start {cold['compile_s']:.1f} s, "
          f"restart {warm['compile_s']:.1f} s")


@pytest.mark.timeout(600)  # one compile, ~2 minutes on a quiet 2-core machine
async def test_a_dynamic_batch_is_compiled_once_for_every_size(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile_dynamic_batch` compiles the batch dimension once: the first warmed size traces the UNet and
    the VAE decoder, the next traces nothing (a static plan compiles both again, 60-100 s each on an H200),
    and serving a batch of a third size, unwarmed, traces nothing either."""
    pytest.importorskip("diffusers")
    from torch._dynamo.utils import counters

    from llmops.engines.base import ImageRequest
    from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    engine = DiffusersEngine("t", DiffusersOptions(
        model="builtin:tiny-sd", safety_checker=False, n_threads=1, compile=True, compile_force=True,
        compile_batch_sizes=[3, 2], compile_dynamic_batch=True, compile_size=64,
        compile_cache_dir=str(tmp_path / "cache")))
    try:
        await engine.start()
        per_size = engine.health().detail["compile_graphs_per_size"]
        assert isinstance(per_size, dict), per_size
        assert list(per_size) == [2, 3], per_size
        assert per_size[2] > 0, per_size  # the UNet and the VAE decoder, traced with the batch a symbol
        assert per_size[3] == 0, per_size  # a static plan traces both again here
        graphs = counters["stats"]["unique_graphs"]
        results = await engine.generate_images([ImageRequest(f"r{i}", "x", None, 64, 64, 2, 7.5, 1, i)
                                                for i in range(4)])
        assert [len(r.images) for r in results] == [1, 1, 1, 1]
        assert engine.last_batch_size == 4
        assert counters["stats"]["unique_graphs"] == graphs, "serving a batch of 4 traced a graph"
    finally:
        await engine.close()
