"""A batch of image requests end to end, this tree against another source tree in the same run: where the
images' PNG encoding sits in a batch's time.

tiny-sd (builtin, seeded random weights: its images are noise, about as costly to encode as a PNG gets) on
the CPU at 512x512 and 2 denoising steps, so the pipeline call is short and what follows it shows: each
round sends `--batch` concurrent `/v1/images/generations` requests, which the image coalescer runs as one
pipeline call (checked: one call a round, from /ready's pipeline_calls), and takes the round's wall time.
Each repeat starts both servers fresh and runs them one after the other, the order rotating; the report gives
medians of the repeats with their [min-max] and the ratio within each repeat. Then, in this process, the
encoding alone: the batch's images (512x512 noise) encoded one after another, as the model's thread did, and
as the engine's `_split` does now, on its pool of min(4, cores) threads.

    python -m bench.image_batch --baseline-src /path/to/old/checkout/src --out bench/results
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.report import run_meta, save, spread
from bench.run import stop, wait_ready

CASES = ("llmops", "llmops@baseline")


def _config(tmp: Path, batch: int) -> Path:
    model = {"name": "tiny-sd", "kind": "image", "engine": "diffusers",
             "options": {"model": "builtin:tiny-sd", "safety_checker": False},
             "limits": {"max_queued": 64, "image": {"max_batch_size": batch, "batch_timeout_s": 0.2,
                                                    "min_size": 64, "max_steps": 50}}}
    path = tmp / "image-batch.yaml"
    path.write_text(yaml.safe_dump({"log_level": "warning", "models": [model], "cache": {"enabled": False},
                                    "state": {"backend": "sqlite", "sqlite_path": str(tmp / "state.db")}}))
    return path


def _start(case: str, config: Path, port: int, baseline_src: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if case.endswith("@baseline"):
        env["PYTHONPATH"] = os.pathsep.join([baseline_src, *env.get("PYTHONPATH", "").split(os.pathsep)])
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}/ready", 300)
    return proc


def _calls(base: str) -> int:
    return int(httpx.get(f"{base}/ready").json()["models"]["tiny-sd"]["pipeline_calls"])


def _round(base: str, batch: int, size: int, steps: int) -> float:
    def one(i: int) -> None:
        r = httpx.post(f"{base}/v1/images/generations", timeout=300,
                       json={"model": "tiny-sd", "prompt": "a lighthouse", "size": f"{size}x{size}",
                             "num_inference_steps": steps, "seed": i})
        r.raise_for_status()

    calls = _calls(base)
    started = time.perf_counter()
    with ThreadPoolExecutor(batch) as pool:
        list(pool.map(one, range(batch)))
    wall = time.perf_counter() - started
    if _calls(base) != calls + 1:
        raise RuntimeError(f"a round of {batch} requests took {_calls(base) - calls} pipeline calls, not one")
    return wall


def measure(case: str, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    proc = _start(case, _config(tmp, a.batch), a.port, a.baseline_src, tmp / f"{case.replace('@', '-')}.log")
    base = f"http://127.0.0.1:{a.port}"
    try:
        _round(base, a.batch, a.size, a.steps)  # the shape's first call
        walls = [_round(base, a.batch, a.size, a.steps) for _ in range(a.rounds)]
    finally:
        stop(proc)
    return {"case": case, "round_s": statistics.median(walls), "rounds": walls}


def encode_only(batch: int, size: int, repeats: int) -> dict[str, float]:
    """ms to encode a batch's images: one after another, and through the diffusers engine's `_split`."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from llmops.engines.base import ImageRequest
    from llmops.engines.diffusers import _png, _split
    from llmops.engines.threads import available_cores

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    out = SimpleNamespace(images=images, nsfw_content_detected=None)
    requests = [ImageRequest(f"r{i}", "x", None, size, size, 2, 7.5, 1, i) for i in range(batch)]
    serial, pooled = [], []
    with ThreadPoolExecutor(min(4, available_cores())) as encoder:
        for _ in range(repeats):
            started = time.perf_counter()
            [_png(im) for im in images]
            serial.append(time.perf_counter() - started)
            started = time.perf_counter()
            _split(requests, [[i] for i in range(batch)], out, encoder)
            pooled.append(time.perf_counter() - started)
    return {"one_after_another_ms": statistics.median(serial) * 1000,
            "engine_pool_ms": statistics.median(pooled) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-src", required=True, help="another checkout's src/")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="image-batch")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--port", type=int, default=18430)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for case in CASES[rep % 2:] + CASES[:rep % 2]:
                rows.append({**measure(case, a, Path(tmp)), "repeat": rep})
                print(rows[-1], flush=True)
    by = {(r["case"], r["repeat"]): r["round_s"] for r in rows}
    ratios = [by[("llmops", i)] / by[("llmops@baseline", i)] for i in range(a.repeats)]
    meta = run_meta(batch=a.batch, size=a.size, steps=a.steps, rounds=a.rounds, repeats=a.repeats,
                    cores=os.cpu_count())
    lines = [f"# A batch of {a.batch} image requests, tiny-sd on the CPU, {a.size}x{a.size}, {a.steps} steps", "",
             f"{meta}", "", "| case | round s (one pipeline call of the batch) | vs baseline |", "|---|---|---|"]
    for case in CASES:
        vals = [r["round_s"] for r in rows if r["case"] == case]
        lines.append(f"| {case} | {spread(vals, 3)} | {spread(ratios, 3) if case == 'llmops' else '1.00'} |")
    enc = encode_only(a.batch, a.size, 10)
    lines += ["", f"Encoding the batch's {a.batch} PNGs alone ({a.size}x{a.size} noise, median of 10, this process): "
              f"one after another {enc['one_after_another_ms']:.0f} ms, the engine's pool "
              f"{enc['engine_pool_ms']:.0f} ms."]
    save(a.out, a.name, "\n".join(lines) + "\n", {"meta": meta, "rows": rows, "encode": enc})


if __name__ == "__main__":
    main()
