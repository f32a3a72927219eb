"""What API keys and limits add to a request: sequential chat completions against the fake engine (one
token, so the engine costs next to nothing), on a server with no keys and on servers whose key carries every
limit (requests/min, tokens/min, in flight, a budget, a price table), with each state backend. The added
latency is each keyed run's percentile minus the open run's.

    python -m bench.tenancy --out bench/results [--requests 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.helpers import RedisServer, live_server

from bench.load import pct
from bench.report import run_meta, save

ADMIN = "bench-admin-key-0123456789abcdef"  # settings refuse short admin keys
MODEL = {"name": "fake", "engine": "fake", "options": {"reply": "ok"},
         "pricing": {"prompt_usd_per_1k": 0.001, "completion_usd_per_1k": 0.002}}
LIMITS = {"name": "bench", "rpm": 1_000_000, "tpm": 100_000_000, "max_concurrent": 64, "budget_usd": 1_000_000,
          "budget_period": "month"}
BODY = {"model": "fake", "max_tokens": 1, "messages": [{"role": "user", "content": "hello there"}]}


def start(stack: ExitStack, tmp: Path, name: str, state: dict[str, Any] | None) -> httpx.Client:
    """A server for one case, and a keep-alive client carrying its key (if it has one)."""
    config: dict[str, Any] = {"log_level": "warning", "models": [MODEL], "auth": {"admin_key": ADMIN}}
    db = str(tmp / f"{name}.db")
    if state is not None:
        config["state"] = {**state, "sqlite_path": db}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    base = stack.enter_context(live_server(path, env={"LLMOPS_STATE__SQLITE_PATH": db}))
    headers: dict[str, str] = {}
    if state is not None:
        created = httpx.post(f"{base}/admin/keys", json=LIMITS, headers={"Authorization": f"Bearer {ADMIN}"})
        headers = {"Authorization": f"Bearer {created.json()['secret']}"}
    return stack.enter_context(httpx.Client(base_url=base, headers=headers, timeout=30))


def timed(client: httpx.Client) -> float:
    started = time.perf_counter()
    client.post("/v1/chat/completions", json=BODY).raise_for_status()
    return (time.perf_counter() - started) * 1000


def measure(clients: list[httpx.Client], requests: int) -> list[list[float]]:
    """Round-robin over the servers, so the machine's noise falls on every case alike."""
    for client in clients:
        for _ in range(50):  # warm-up: connections, caches, the first store calls
            timed(client)
    times: list[list[float]] = [[] for _ in clients]
    for i in range(requests):
        for j in range(len(clients)):
            k = (i + j) % len(clients)
            times[k].append(timed(clients[k]))
    return times


def row(name: str, times: list[float]) -> dict[str, Any]:
    return {"case": name, "requests": len(times), "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(pct(times, 99) or 0.0, 3), "mean_ms": round(statistics.fmean(times), 3)}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = rows[0]
    lines = ["# Auth + limits overhead", "", f"{meta['requests']} sequential requests per case after 50 warm-up, "
             f"fake engine (one token), one keep-alive client per server, the servers interleaved round-robin; "
             f"{meta['machine']}, {meta['date']}.", "",
             "| case | p50 ms | p99 ms | added p50 ms | added p99 ms |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['p50_ms'] - base['p50_ms']:+.2f} | {r['p99_ms'] - base['p99_ms']:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        tmp = Path(folder)
        redis = RedisServer(tmp).start()
        stack.callback(redis.stop)
        cases: list[tuple[str, dict[str, Any] | None]] = [
            ("open (no keys)", None), ("key + limits, memory store", {"backend": "memory"}),
            ("key + limits, sqlite store", {"backend": "sqlite"}),
            ("key + limits, redis store", {"backend": "redis", "redis_url": redis.url})]
        clients = [start(stack, tmp, f"case{i}", state) for i, (_, state) in enumerate(cases)]
        times = measure(clients, args.requests)
        rows = [row(name, t) for (name, _), t in zip(cases, times, strict=True)]
    meta = run_meta(requests=args.requests)
    save(args.out, "tenancy", markdown(rows, meta), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
