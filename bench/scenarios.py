"""Two scenarios beside the throughput levels, on llmops with the llamacpp engine:

overload: 10x more concurrent streams than the server admits (slots + queue). Rejections must come at
          once (their latency is reported) and admitted requests must still meet their deadline. The
          rejection latency is probed twice, sequentially: from the process that makes the burst (its
          figure includes that client's own work of opening hundreds of connections at once) and from a
          process of its own, like another caller (the server's figure).
drain:    SIGTERM while streams are running and queued; every admitted request must complete, new ones
          get 503, and the process must exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.load import Sample, one_request, pct

CPU_POLL = 50


def _config(tmp: Path, name: str, threads: int, slots: int, queued: int) -> Path:
    cfg = tmp / f"{name}.yaml"
    # queue_ahead 0: the server admits exactly its slots, so "full" means slots + queue as the scenario counts
    options = {"n_threads": threads, "n_parallel": slots, "cpu_poll": CPU_POLL, "queue_ahead": 0}
    # no response cache (as in bench.run): every request must reach admission, deterministic or not
    cfg.write_text(yaml.safe_dump({"log_level": "warning", "shutdown": {"drain_timeout_s": 120},
                                   "cache": {"enabled": False}, "models": [
        {"name": "gemma", "engine": "llamacpp", "options": options,
         "limits": {"max_queued": queued, "default_deadline_s": 60}}]}))
    return cfg


def _start(cfg: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(cfg), "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


async def _ready(base: str) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(600):
            try:
                if (await c.get(f"{base}/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(base)


def _body(max_tokens: int) -> dict[str, Any]:
    return {"model": "gemma", "prompt": "Tell me a story. Once upon a time,", "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


async def _burst(base: str, n: int, max_tokens: int) -> list[Sample]:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        return list(await asyncio.gather(*(one_request(c, f"{base}/v1/completions", _body(max_tokens))
                                           for _ in range(n))))


async def _full(base: str) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(600):
            model = (await c.get(f"{base}/ready")).json()["models"]["gemma"]
            if model["queued"] >= model["slots"]:
                return
            await asyncio.sleep(0.05)


async def _probe(base: str, n: int) -> list[Sample]:
    """Requests one after another while the server is full: how fast is a rejection answered."""
    out = []
    async with httpx.AsyncClient(timeout=60) as c:
        for _ in range(n):
            try:
                out.append(await one_request(c, f"{base}/v1/completions", _body(8)))
            except httpx.HTTPError:  # a connection reset under the burst: an error, not a crash of the bench
                out.append(Sample(ok=False, status=-1))
    return out


def _probe_elsewhere(base: str, n: int) -> list[Sample]:
    """`_probe` in a process of its own (run in a ProcessPoolExecutor)."""
    return asyncio.run(_probe(base, n))


async def _overload_run(base: str, capacity: int) -> tuple[list[Sample], list[Sample], list[Sample], list[Sample]]:
    with ProcessPoolExecutor(1) as other:
        other.submit(len, "").result()  # started before the clock matters
        fill = asyncio.create_task(_burst(base, capacity, 128))
        await _full(base)
        burst = asyncio.create_task(_burst(base, 9 * capacity - 100, 32))
        elsewhere = asyncio.get_running_loop().run_in_executor(other, _probe_elsewhere, base, 50)
        probe = await _probe(base, 50)
        return await fill, await burst, probe, await elsewhere


def overload(threads: int, slots: int, port: int, tmp: Path) -> dict[str, Any]:
    """Fill the server (slots + queue), then offer 10x that: a burst plus 50 sequential probes. The probes
    measure how fast a rejection is answered under full load; the burst's own latencies also include this
    2-core machine's client overhead of opening hundreds of connections at once."""
    queued = slots
    cfg = _config(tmp, "overload", threads, slots, queued)
    proc = _start(cfg, port, tmp / "overload.log")
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_ready(base))
        started = time.perf_counter()
        fill, burst, probe, elsewhere = asyncio.run(_overload_run(base, slots + queued))
        wall = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(60)
    everything = fill + burst + probe + elsewhere
    admitted = [s for s in everything if s.status == 200]
    probe_rejected = [s.e2e_s for s in probe if s.status == 503]
    elsewhere_rejected = [s.e2e_s for s in elsewhere if s.status == 503]
    burst_rejected = [s.e2e_s for s in burst if s.status == 503]
    return {"offered": len(everything), "capacity": slots + queued, "admitted": len(admitted),
            "rejected": sum(1 for s in everything if s.status == 503),
            "rejection_latency_p50_ms": _ms(pct(probe_rejected, 50)),
            "rejection_latency_p99_ms": _ms(pct(probe_rejected, 99)),
            "own_process_rejection_latency_p50_ms": _ms(pct(elsewhere_rejected, 50)),
            "own_process_rejection_latency_p99_ms": _ms(pct(elsewhere_rejected, 99)),
            "burst_rejection_latency_p99_ms": _ms(pct(burst_rejected, 99)),
            "admitted_completed": sum(1 for s in admitted if s.ok),
            "admitted_e2e_p99_s": pct([s.e2e_s for s in admitted if s.ok], 99),
            "deadline_misses": sum(1 for s in everything if s.status == 504) + sum(1 for s in admitted if not s.ok),
            "other_errors": sum(1 for s in everything if s.status not in (200, 503, 504)), "wall_s": round(wall, 2)}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


async def _drain_run(proc: subprocess.Popen[bytes], base: str, n: int) -> tuple[list[Sample], list[int]]:
    load = asyncio.create_task(_burst(base, n, 48))
    await asyncio.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(timeout=30) as c:
        late = [(await c.post(f"{base}/v1/completions", json=_body(8))).status_code for _ in range(4)]
    return await load, late


def drain(threads: int, slots: int, port: int, tmp: Path) -> dict[str, Any]:
    cfg = _config(tmp, "drain", threads, slots, 64)
    proc = _start(cfg, port, tmp / "drain.log")
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_ready(base))
        samples, late = asyncio.run(_drain_run(proc, base, 2 * slots))
        code = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
    completed = sum(1 for s in samples if s.ok and s.tokens > 0)
    return {"in_flight_at_sigterm": len(samples), "completed": completed, "lost": len(samples) - completed,
            "late_requests_status": late, "exit_code": code}
