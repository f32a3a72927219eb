"""The diffusers compile option's cold start, static against dynamic batch dimension, on the CPU.

`compile_dynamic_batch: false` (the default) compiles the UNet and the VAE decoder once per warmed batch
size; `true` compiles the batch dimension once for every size (the VAE decoder's batch of 1 its own graph).
Each case here is its own process with its own empty compile cache folder and TMPDIR: the engine
(engines/diffusers.py, `compile_force` on the CPU) loads builtin:tiny-sd, warms batch sizes 1..4 at
`--size`, and reports the seconds and graphs traced at each size (the engine's own figures, from
engines/diffusers_compile.warm_up), then times `--calls` pipeline calls at batch 1 and at batch 4 (2 steps)
on the compiled pipeline: inductor's CPU kernels, not a GPU's, so this says what the option costs to start
and whether it serves unwarmed sizes without compiling, not how its GPU kernels compare (bench/gpu_images.py
with --compile-batch static|dynamic on a GPU measures that).

    python -m bench.compile_batch --out bench/results          # ~8 minutes on 2 busy cores, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import run_meta, save, spread

CASES = ("static", "dynamic")
SIZES = [1, 2, 3, 4]


async def _child(dynamic: bool, cache: str, size: int, calls: int, threads: int) -> dict[str, Any]:
    from llmops.engines.base import ImageRequest
    from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

    engine = DiffusersEngine("t", DiffusersOptions(
        model="builtin:tiny-sd", safety_checker=False, n_threads=threads, compile=True, compile_force=True,
        compile_batch_sizes=SIZES, compile_size=size, compile_dynamic_batch=dynamic, compile_cache_dir=cache))
    try:
        started = time.perf_counter()
        await engine.start()
        ready_s = time.perf_counter() - started
        assert engine.compiled is not None
        served: dict[str, float] = {}
        for batch in (1, 4):
            walls = []
            for i in range(calls):
                t = time.perf_counter()
                await engine.generate_images([ImageRequest(f"r{j}", "x", None, size, size, 2, 7.5, 1, i * 8 + j)
                                              for j in range(batch)])
                walls.append(time.perf_counter() - t)
            served[f"batch_{batch}_call_ms"] = statistics.median(walls) * 1000
        c = engine.compiled
        return {"ready_s": ready_s, "compile_s": c.seconds, "misses": c.cache_misses,
                "graphs_per_size": c.graphs_per_size,
                "seconds_per_size": {k: round(v, 2) for k, v in c.seconds_per_size.items()}, **served}
    finally:
        await engine.close()


def measure(case: str, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{case}-"))
    (folder / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["TMPDIR"] = str(folder / "tmp")
    argv = [sys.executable, "-m", "bench.compile_batch", "--child", case, "--cache", str(folder / "cache"),
            "--size", str(a.size), "--calls", str(a.calls), "--threads", str(a.threads)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed: {done.stderr[-3000:]}")
    return {"case": case, **json.loads(done.stdout.strip().splitlines()[-1])}


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# The compile option's cold start on the CPU: tiny-sd, batch sizes 1..4 at {meta['size']}x"
             f"{meta['size']}, static against dynamic batch", "", f"{meta}", "",
             "median [min-max] of the repeats; per size: the warm-up's seconds (graphs dynamo traced).", "",
             "| case | compile s | graphs compiled | " + " | ".join(f"size {s}" for s in SIZES)
             + " | batch 1 call ms | batch 4 call ms |", "|---|---|---|" + "---|" * len(SIZES) + "---|---|"]
    for case in CASES:
        mine = [r for r in rows if r["case"] == case]
        per = [f"{spread([r['seconds_per_size'][str(s)] for r in mine], 1)} "
               f"({'/'.join(str(r['graphs_per_size'][str(s)]) for r in mine)})" for s in SIZES]
        lines.append(f"| {case} | {spread([r['compile_s'] for r in mine], 1)} | "
                     f"{'/'.join(str(r['misses']) for r in mine)} | " + " | ".join(per)
                     + f" | {spread([r['batch_1_call_ms'] for r in mine], 1)}"
                     f" | {spread([r['batch_4_call_ms'] for r in mine], 1)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="compile-batch-cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        import asyncio

        print(json.dumps(asyncio.run(_child(a.child == "dynamic", a.cache, a.size, a.calls, a.threads))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for case in CASES[rep % 2:] + CASES[:rep % 2]:
                rows.append({**measure(case, a, Path(tmp)), "repeat": rep})
                print(rows[-1], flush=True)
    meta = run_meta(size=a.size, calls=a.calls, threads=a.threads, repeats=a.repeats, cores=os.cpu_count())
    save(a.out, a.name, report(rows, meta), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
