"""The overload scenario alone, repeated: how fast are refusals answered under a 10x burst (scenarios.overload:
the server filled to slots + queue, then a burst of 9x that plus 50 sequential probes). The repeats show the
spread, which on a shared machine is most of the story.

    python -m bench.overload --repeats 3 --label after [--slots 16] [--out bench/results]
    python -m bench.overload --label after --refusal-cost    # the server's own cost of one refusal

Run it with PYTHONPATH pointing at the sources to measure (the server is `python -m llmops serve`).
`--refusal-cost` runs the app in this process (httpx's ASGI transport, the fake engine, one slot taken and
no queue) and times 300 refused completions in a row, three rounds: what one refusal costs the event loop,
which is what a caller arriving behind a burst of refusals waits for."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import scenarios

KEYS = ("rejection_latency_p50_ms", "rejection_latency_p99_ms", "own_process_rejection_latency_p50_ms",
        "own_process_rejection_latency_p99_ms", "burst_rejection_latency_p99_ms", "admitted",
        "rejected", "admitted_completed", "deadline_misses", "other_errors", "wall_s")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}", "", "| label | run | " + " | ".join(KEYS) + " |",
             "|---|---|" + "---|" * len(KEYS)]
    for label, runs in report["runs"].items():
        for i, run in enumerate(runs, 1):
            lines.append(f"| {label} | {i} | " + " | ".join(str(run.get(k)) for k in KEYS) + " |")
    costs = report.get("refusal_cost_ms", {})
    if costs:
        lines += ["", "One refusal's cost in process (ms, three rounds of 300): " +
                  "; ".join(f"{label}: {values}" for label, values in costs.items())]
    return "\n".join(lines) + "\n"


async def _refusal_cost(tmp: Path, n: int = 300, rounds: int = 3) -> list[float]:
    from llmops.app import create_app
    from llmops.settings import load_settings

    cfg = tmp / "refusal.yaml"
    cfg.write_text(yaml.safe_dump({"log_level": "warning", "cache": {"enabled": False}, "models": [
        {"name": "m", "engine": "fake", "options": {"reply": " ".join(["w"] * 2000), "token_delay_s": 0.01,
                                                    "capacity": 1}, "limits": {"max_queued": 0}}]}))
    app = create_app(load_settings(cfg))
    body = {"model": "m", "prompt": "Tell me a story. Once upon a time,", "max_tokens": 8, "stream": True,
            "temperature": 0}
    out = []
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=60) as c:
        while (await c.get("/ready")).status_code != 200:  # noqa: ASYNC110 (polling the app)
            await asyncio.sleep(0.05)
        hold = asyncio.create_task(c.post("/v1/completions", json={**body, "max_tokens": 2000}))
        while (await c.get("/ready")).json()["models"]["m"]["running"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(n):
                assert (await c.post("/v1/completions", json=body)).status_code == 503
            out.append(round((time.perf_counter() - started) / n * 1000, 3))
        hold.cancel()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--label", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--refusal-cost", action="store_true", help="time one refusal in process instead")
    a = p.parse_args()
    out = Path(a.out)
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = out / "overload.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if a.refusal_cost:
        cost = asyncio.run(_refusal_cost(tmp))
        print(a.label, "ms per refusal", cost, flush=True)
        report.setdefault("refusal_cost_ms", {})[a.label] = cost
        path.write_text(json.dumps(report, indent=2))
        (out / "overload.md").write_text(markdown(report))
        return 0
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                         "load_avg_at_end": os.getloadavg()}
    runs = report["runs"].setdefault(a.label, [])
    for _ in range(a.repeats):
        run = scenarios.overload(a.threads, a.slots, a.port, tmp)
        print(a.label, run, flush=True)
        runs.append(run)
    path.write_text(json.dumps(report, indent=2))
    (out / "overload.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
