"""Where a server's CPU goes per output token, thread by thread: each target (bench/run.py's) started
fresh, a load run against it (one stream by default: where issue 14's single-stream ratio sits at its
edge), and every thread's CPU time (the scheduler's, from /proc/<pid>/task) and context switches read
before and after. Threads are listed by CPU, most first; on the llama.cpp targets the first two are
the decode threads. Targets alternate within each repeat so the machine's noise falls on all alike.

What it shows that a sampling profiler does not: CPU the OS saw each thread use (a py-spy --gil profile
counts wall time holding the GIL, preemption included), and what the gateway's threads cost the
decode threads (their CPU per token against the bare engine's: a decode thread preempted mid-step leaves
its partner spinning at llama.cpp's barrier).

    python -m bench.thread_cpu --targets bare-llamacpp,llmops-llamacpp --mode chat-stream --repeats 3
    python -m bench.thread_cpu --targets llmops-llamacpp,llmops-llamacpp@baseline --baseline-src OLD/src
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.load import run_load
from bench.report import run_meta, save
from bench.run import PROMPT, stop, targets, wait_ready


@dataclass
class ThreadTimes:
    cpu_s: float
    voluntary: int
    involuntary: int


def read_threads(pid: int) -> dict[int, ThreadTimes]:
    """Every thread of `pid`: CPU seconds so far and context switches. The CPU time is the scheduler's
    own (`se.sum_exec_runtime` in /proc/<pid>/task/<tid>/sched, nanosecond-based) where the kernel shows
    it; psutil's thread times are counted in ticks (4 ms at HZ=250), too coarse for threads that run a
    few microseconds per token, and are the fallback."""
    out = {}
    for thread in psutil.Process(pid).threads():
        sched = _fields(Path(f"/proc/{pid}/task/{thread.id}/sched"))
        cpu = sched["se.sum_exec_runtime"] / 1000 if "se.sum_exec_runtime" in sched else \
            thread.user_time + thread.system_time
        out[thread.id] = ThreadTimes(cpu, int(sched.get("nr_voluntary_switches", 0)),
                                     int(sched.get("nr_involuntary_switches", 0)))
    return out


def _fields(path: Path) -> dict[str, float]:
    """The `name : number` lines of a /proc file; empty when it is gone (the thread ended) or unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            continue
    return out


def per_token(before: dict[int, ThreadTimes], after: dict[int, ThreadTimes], tokens: int) -> list[dict[str, Any]]:
    """Each thread's use over the load, per output token, most CPU first."""
    zero = ThreadTimes(0, 0, 0)
    rows = []
    for tid, end in after.items():
        start = before.get(tid, zero)
        rows.append({"tid": tid, "cpu_ms": (end.cpu_s - start.cpu_s) * 1000 / tokens,
                     "voluntary": (end.voluntary - start.voluntary) / tokens,
                     "involuntary": (end.involuntary - start.involuntary) / tokens})
    return sorted(rows, key=lambda r: -r["cpu_ms"])


def measure(name: str, mode: str, concurrency: int, requests: int, max_tokens: int, port: int,
            baseline_src: str | None = None) -> dict[str, Any]:
    target = targets(2, 16, 50, baseline_src)[name]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(target.command(port, Path(tmp)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, base + target.ready_path, 600)
            asyncio.run(run_load(base, target.model, 1, 1, 8, PROMPT, mode=mode))  # warm-up
            before, started = read_threads(proc.pid), time.perf_counter()
            samples = asyncio.run(run_load(base, target.model, concurrency, requests, max_tokens, PROMPT, mode=mode,
                                           temperature=0))
            wall, after = time.perf_counter() - started, read_threads(proc.pid)
        finally:
            stop(proc)
    tokens = max(1, sum(s.tokens for s in samples if s.ok))
    rows = per_token(before, after, tokens)
    return {"target": name, "tokens": tokens, "tokens_per_s": tokens / wall,
            "cpu_ms_per_token": sum(r["cpu_ms"] for r in rows), "threads": rows[:6]}


def wake_cost(interval_s: float, seconds: float = 3.0) -> float:
    """CPU microseconds per wake-up of an asyncio loop (uvloop, as the server runs) that does nothing but
    sleep `interval_s` at a time: the floor under any thread woken once per token on this machine."""
    import uvloop

    def runtime_ms() -> float:
        return _fields(Path("/proc/thread-self/sched")).get("se.sum_exec_runtime", 0.0)

    async def sleeper() -> float:
        start_cpu, start, wakes = runtime_ms(), time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            await asyncio.sleep(interval_s)
            wakes += 1
        return (runtime_ms() - start_cpu) * 1000 / wakes

    return uvloop.run(sleeper())


def markdown(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# CPU per output token, thread by thread", "",
             f"{meta['mode']}, {meta['concurrency']} concurrent, {meta['requests']} requests of {meta['max_tokens']} "
             f"tokens, temperature 0; {meta['machine']}, {meta['date']}. ms of CPU per output token (the "
             "scheduler's runtime); context switches per token (voluntary: the thread waited; involuntary: it "
             "was preempted).", "",
             f"An event loop doing nothing but wake every 26 ms (a token's time here) used {meta['wake_us']:.0f} us "
             "of CPU per wake-up on this machine, before any of the runs (`wake_cost`).", ""]
    for run in runs:
        lines += [f"## {run['target']}, repeat {run['repeat']}: {run['tokens_per_s']:.1f} tok/s, "
                  f"{run['cpu_ms_per_token']:.2f} ms CPU per token", "",
                  "| thread | CPU ms/token | voluntary switches/token | involuntary switches/token |",
                  "|---|---|---|---|"]
        lines += [f"| {i + 1} | {r['cpu_ms']:.3f} | {r['voluntary']:.2f} | {r['involuntary']:.2f} |"
                  for i, r in enumerate(run["threads"])]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="bare-llamacpp,llmops-llamacpp")
    p.add_argument("--mode", default="chat-stream", choices=["chat-stream", "json", "stream"])
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--port", type=int, default=18095)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="thread-cpu")
    p.add_argument("--baseline-src", help="another checkout's src/: adds the target llmops-llamacpp@baseline")
    a = p.parse_args()
    wake_us = wake_cost(0.026)
    runs = []
    for repeat in range(a.repeats):
        names = a.targets.split(",")
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:  # the order rotates
            run = measure(name, a.mode, a.concurrency, a.requests, a.max_tokens, a.port, a.baseline_src)
            runs.append({**run, "repeat": repeat})
            print(f"{name}: {run['tokens_per_s']:.1f} tok/s, {run['cpu_ms_per_token']:.2f} ms CPU/token", flush=True)
    meta = run_meta(mode=a.mode, concurrency=a.concurrency, requests=a.requests, max_tokens=a.max_tokens,
                    wake_us=wake_us)
    save(a.out, a.name, markdown(runs, meta), {"meta": meta, "runs": runs})


if __name__ == "__main__":
    main()
