"""Response-cache latency: the same deterministic chat requests first as misses (the engine answers),
then as hits (the cache answers), non-streaming, one client with keep-alive. Cases: the embedded Gemma on
llama.cpp with the in-process cache, and the fake engine with the Redis cache (a real redis-server).

    python -m bench.cache --out bench/results [--prompts 20 --repeats 10]
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

GEMMA = {"name": "m", "engine": "llamacpp", "options": {"n_threads": 2, "n_parallel": 1, "context_length": 1024}}
FAKE = {"name": "m", "engine": "fake", "options": {"token_delay_s": 0.0}}


def ask(client: httpx.Client, i: int) -> tuple[float, str]:
    body = {"model": "m", "temperature": 0, "max_tokens": 32,
            "messages": [{"role": "user", "content": f"Tell me one fact about the number {i}."}]}
    started = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return (time.perf_counter() - started) * 1000, r.headers["x-cache"]


def run_case(stack: ExitStack, tmp: Path, name: str, config: dict[str, Any], prompts: int,
             repeats: int) -> dict[str, Any]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"log_level": "warning", **config}))
    base = stack.enter_context(live_server(path, env={"LLMOPS_STATE__SQLITE_PATH": str(tmp / f"{name}.db")}))
    with httpx.Client(base_url=base, timeout=120) as client:
        ask(client, -1)  # warm-up
        misses = [ask(client, i) for i in range(prompts)]
        hits = [ask(client, i) for _ in range(repeats) for i in range(prompts)]
    if {h for _, h in misses} != {"miss"} or {h for _, h in hits} != {"hit"}:
        raise RuntimeError("the cache did not behave as measured: expected misses, then hits")
    miss_ms, hit_ms = [t for t, _ in misses], [t for t, _ in hits]
    return {"case": name, "misses": len(miss_ms), "hits": len(hit_ms),
            "miss_p50_ms": round(statistics.median(miss_ms), 2), "miss_p99_ms": round(pct(miss_ms, 99) or 0.0, 2),
            "hit_p50_ms": round(statistics.median(hit_ms), 2), "hit_p99_ms": round(pct(hit_ms, 99) or 0.0, 2)}


CACHE_ON = {"cache": {"enabled": True}}  # off by default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        tmp = Path(folder)
        redis = RedisServer(tmp).start()
        stack.callback(redis.stop)
        rows = [run_case(stack, tmp, "gemma-3-270m (llama.cpp), in-process LRU", {"models": [GEMMA], **CACHE_ON},
                         args.prompts, args.repeats),
                run_case(stack, tmp, "fake engine, Redis cache", {"models": [FAKE], **CACHE_ON, "state": {
                    "backend": "redis", "redis_url": redis.url}}, args.prompts, args.repeats)]
    meta = run_meta()
    lines = ["# Response cache latency", "",
             f"Non-streaming chat, temperature 0, max_tokens 32, one keep-alive client; {meta['machine']}, "
             f"{meta['date']}.", "",
             "| case | misses | miss p50 ms | miss p99 ms | hits | hit p50 ms | hit p99 ms |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['misses']} | {r['miss_p50_ms']} | {r['miss_p99_ms']} | {r['hits']} | "
              f"{r['hit_p50_ms']} | {r['hit_p99_ms']} |" for r in rows]
    save(args.out, "cache", "\n".join(lines) + "\n", {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
