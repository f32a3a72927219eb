"""Where the gateway's per-token time goes: py-spy samples an llmops server (llamacpp engine, Gemma) while
N concurrent streams run, keeping only samples of a thread that holds the GIL (on a small machine every
such millisecond is taken from llama.cpp's decode threads or the HTTP side), and folds them into the
functions and modules that hold it most. The result is a table, not a flame graph:

    python -m bench.profile_tokens --out bench/results [--concurrency 16,64] [--mode chat-stream]
    python -m bench.profile_tokens --engine fake --name profile-fake   # the gateway alone: no model work at all

needs py-spy (`pip install py-spy`; the bench extra) and permission to ptrace the server (root, or
kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.load import run_load, summarize
from bench.overhead import server_command as overhead_command
from bench.report import run_meta, save
from bench.run import PROMPT, stop, targets, wait_ready

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")
GROUPS = (  # first match wins: where a frame's file lives (py-spy names it relative to its sys.path entry)
    ("llmops.engines", "llmops/engines/"), ("llmops.api", "llmops/api/"), ("llmops.pipeline", "llmops/pipeline/"),
    ("llmops.scheduling", "llmops/scheduling/"), ("llmops.observability", "llmops/observability/"),
    ("llmops.middleware", "llmops/middleware/"), ("llmops.stores", "llmops/stores/"), ("llmops (other)", "llmops/"),
    ("pydantic", "pydantic"), ("starlette", "starlette/"), ("fastapi", "fastapi/"), ("uvicorn", "uvicorn/"),
    ("h11", "h11/"), ("httptools", "httptools/"), ("prometheus_client", "prometheus_client/"),
    ("opentelemetry", "opentelemetry/"), ("anyio", "anyio/"), ("asyncio", "asyncio/"), ("json", "json/"),
    ("structlog", "structlog/"), ("logging", "logging/"), ("threading", "threading.py"),
    ("concurrent", "concurrent/"), ("httpx", "httpx/"), ("httpcore", "httpcore/"))


def _group(path: str) -> str:
    return next((g for g, marker in GROUPS if path.startswith(marker) or "/" + marker in path), "other")


def fold(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    """py-spy's collapsed stacks ('a (f.py:1);b (g.py:2) 17') into total samples, self samples per function,
    inclusive samples per function and self samples per module group."""
    total, own, incl, groups = 0, collections.Counter[str](), collections.Counter[str](), collections.Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f[0]]
        if not frames:
            continue
        total += n
        own[frames[-1][0]] += n
        groups[frames[-1][1]] += n
        for name in {f[0] for f in frames}:
            incl[name] += n
    return total, own, incl, groups


def _name(frame: str) -> tuple[str, str]:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "other"
    path = m["file"]
    return f"{m['func']} ({path})", _group(path)


def record(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", str(rate),
                             "--format", "raw", "--output", str(out), "--duration", "3600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_level(base: str, pid: int, concurrency: int, mode: str, max_tokens: int, rate: int,
                  tmp: Path, model: str = "gemma", requests: int = 0) -> dict[str, Any]:
    raw = tmp / f"profile-{concurrency}.txt"
    spy = record(pid, raw, rate)
    time.sleep(1.0)  # py-spy attaches
    started = time.perf_counter()
    samples = asyncio.run(run_load(base, model, concurrency, requests or concurrency, max_tokens, PROMPT, mode=mode,
                                   temperature=0))
    wall = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=120)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    result = summarize(model, concurrency, samples, wall)
    total, own, incl, groups = fold(raw.read_text())
    per_token = 1000 / rate / max(1, result.output_tokens)
    return {"concurrency": concurrency, "mode": mode, "tokens": result.output_tokens,
            "tokens_per_s": result.tokens_per_s, "wall_s": round(wall, 2), "samples": total,
            "gil_ms_per_token": round(total * per_token, 3), "gil_share_of_wall": round(total / rate / wall, 3),
            "self": [(k, v, round(v * per_token, 3)) for k, v in own.most_common(25)],
            "inclusive": [(k, v, round(v * per_token, 3)) for k, v in incl.most_common(40)],
            "groups": [(k, v, round(v * per_token, 3)) for k, v in groups.most_common()]}


def markdown(levels: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    engine = "llamacpp engine, Gemma 3 270M" if meta["engine"] == "llamacpp" else \
        "fake engine (64-word answer, no model work: the gateway alone)"
    lines = ["# Where the per-token time goes (py-spy, GIL-holding samples)", "",
             f"llmops, {engine}, {meta['mode']}, {meta['max_tokens']} tokens per request, "
             f"py-spy --gil at {meta['rate']} Hz; {meta['machine']}, {meta['date']}. Milliseconds are GIL-held "
             "time per output token (samples / rate / tokens); a loaded shared machine stretches them all alike.", ""]
    for lv in levels:
        lines += [f"## {lv['concurrency']} concurrent streams", "",
                  f"{lv['tokens']} tokens in {lv['wall_s']} s ({lv['tokens_per_s']} tok/s); {lv['samples']} samples; "
                  f"GIL held {lv['gil_share_of_wall']:.0%} of the wall time, **{lv['gil_ms_per_token']} ms per "
                  "token**.", "", "| module (self) | samples | ms/token |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {ms} |" for k, v, ms in lv["groups"]]
        lines += ["", "| function (self) | samples | ms/token |", "|---|---|---|"]
        lines += [f"| `{k}` | {v} | {ms} |" for k, v, ms in lv["self"]]
        lines += ["", "| function (inclusive) | samples | ms/token |", "|---|---|---|"]
        lines += [f"| `{k}` | {v} | {ms} |" for k, v, ms in lv["inclusive"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="profile")
    p.add_argument("--concurrency", default="16,64")
    p.add_argument("--mode", default="chat-stream")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--engine", choices=["llamacpp", "fake"], default="llamacpp")
    p.add_argument("--requests", type=int, default=0, help="per level (default: the concurrency)")
    a = p.parse_args()
    tmp = Path(a.out) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    if a.engine == "fake":
        command, model = overhead_command("llmops-open", a.port, tmp), "fake"
    else:
        command, model = targets(a.threads, a.slots, 50)["llmops-llamacpp"].command(a.port, tmp), "gemma"
    log = (tmp / "profile-server.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{a.port}"
    try:
        wait_ready(proc, base + "/ready", 600)
        asyncio.run(run_load(base, model, 1, 1, 8, PROMPT, mode=a.mode))  # warm-up
        levels = [profile_level(base, proc.pid, int(c), a.mode, a.max_tokens, a.rate, tmp, model, a.requests)
                  for c in a.concurrency.split(",")]
    finally:
        stop(proc)
        log.close()
    meta = run_meta(mode=a.mode, max_tokens=a.max_tokens, rate=a.rate, engine=a.engine)
    save(a.out, a.name, markdown(levels, meta), {"meta": meta, "levels": levels})


if __name__ == "__main__":
    main()
