"""The comparison harness: start each target server, drive it at each concurrency with streaming
completions, record throughput, latency and memory, stop it; write JSON and a markdown table with every
figure also given as a ratio to the baselines measured in the same run.

    python -m bench.run --out bench/results [--targets llmops-llamacpp,bare-llamacpp] [--concurrency 1,4,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench.load import Result, run_load, summarize
from bench.report import markdown

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle. Once upon a time,"


@dataclass
class Target:
    name: str
    model: str
    command: Callable[[int, Path], list[str]]
    ready_path: str = "/ready"
    headers: dict[str, str] | None = None


def _llmops(engine: str, options: dict[str, object]) -> Callable[[int, Path], list[str]]:
    def command(port: int, tmp: Path) -> list[str]:
        cfg = tmp / f"llmops-{engine}.yaml"
        cfg.write_text(yaml.safe_dump({"log_level": "warning", "models": [
            {"name": "gemma", "engine": engine, "options": options, "limits": {"default_max_tokens": 512}}]}))
        return [sys.executable, "-m", "llmops", "serve", "--config", str(cfg), "--port", str(port)]
    return command


def targets(threads: int, slots: int) -> dict[str, Target]:
    def bare(port: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", "bench.targets.bare_llamacpp", "--port", str(port), "--threads", str(threads),
                "--slots", str(slots)]

    return {
        "llmops-llamacpp": Target("llmops-llamacpp", "gemma", _llmops(
            "llamacpp", {"n_threads": threads, "n_parallel": slots})),
        "llmops-transformers": Target("llmops-transformers", "gemma", _llmops(
            "transformers", {"n_threads": threads})),
        "bare-llamacpp": Target("bare-llamacpp", "gemma", bare, ready_path="/health"),
    }


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def measure(target: Target, levels: list[int], per_level: Callable[[int], int], max_tokens: int, port: int,
            tmp: Path) -> tuple[float, list[Result]]:
    log = open(tmp / f"{target.name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(target.command(port, tmp), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        startup = wait_ready(proc, base + target.ready_path, 600)
        asyncio.run(run_load(base, target.model, 1, 1, 8, PROMPT, target.headers))  # warm-up
        for c in levels:
            t0 = time.perf_counter()
            samples = asyncio.run(run_load(base, target.model, c, per_level(c), max_tokens, PROMPT, target.headers))
            result = summarize(target.name, c, samples, time.perf_counter() - t0)
            result.peak_rss_mb = peak_rss_mb(proc.pid)
            results.append(result)
            print(json.dumps(result.as_dict()), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    return startup, results


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--targets", default="llmops-llamacpp,bare-llamacpp,llmops-transformers")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default: max(4, 2 x concurrency))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--port", type=int, default=18080)
    a = p.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    out = Path(a.out)
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    known = targets(a.threads, a.slots)
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"threads": a.threads, "slots": a.slots, "max_tokens": a.max_tokens, "prompt": PROMPT},
        "startup_s": {}, "results": []}
    for name in a.targets.split(","):
        startup, results = measure(known[name], levels, lambda c: a.requests or max(4, 2 * c), a.max_tokens,
                                   a.port, tmp)
        report["startup_s"][name] = round(startup, 2)  # type: ignore[index]
        report["results"] += [r.as_dict() for r in results]  # type: ignore[operator]
    (out / "latest.json").write_text(json.dumps(report, indent=2))
    (out / "latest.md").write_text(markdown(report))
    print((out / "latest.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
