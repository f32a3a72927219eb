"""Soak: mixed traffic against a live fake-engine server for a bounded time or request count, sampling what
leaks would grow: the server's RSS, open file descriptors, asyncio tasks (all from its /metrics:
process_resident_memory_bytes, process_open_fds, llmops_event_loop_tasks) and the number of metric series.

Traffic (CONCURRENCY workers, each picking by weight): chat completions, streamed completions cancelled
after the first chunk, plain completions, bad input (a lone surrogate, invalid JSON, n too large), unknown
keys, random HTTP methods on random paths, models that do not exist, images (the fake image engine: tiny-sd
would make the run about the diffusion model's speed), image jobs cancelled while queued or running, and
embeddings (the fake embeddings engine).

    python -m bench.soak --out bench/results [--minutes 10] [--requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.helpers import live_server

from bench.report import run_meta, save

ADMIN = "soak-admin-key-0123456789abcdef"
CONCURRENCY = 8
MODELS = [{"name": "fake", "engine": "fake", "options": {"capacity": 16}},
          {"name": "fake-stream", "engine": "fake", "options": {"token_delay_s": 0.01, "capacity": 16}},
          {"name": "image", "kind": "image", "engine": "fake-image", "options": {"step_delay_s": 0.002},
           "limits": {"image": {"min_size": 64}}},
          {"name": "embed", "kind": "embeddings", "engine": "fake-embeddings"}]
CHAT = {"model": "fake", "max_tokens": 8, "messages": [{"role": "user", "content": "one two three four five"}]}
GAUGES = {"rss_mb": "process_resident_memory_bytes", "open_fds": "process_open_fds",
          "asyncio_tasks": "llmops_event_loop_tasks"}


async def chat(c: httpx.AsyncClient) -> int:
    return (await c.post("/v1/chat/completions", json=CHAT)).status_code


async def stream_cancelled(c: httpx.AsyncClient) -> int:
    body = {**CHAT, "model": "fake-stream", "stream": True, "max_tokens": 64,
            "messages": [{"role": "user", "content": "w " * 64}]}
    async with c.stream("POST", "/v1/chat/completions", json=body) as response:
        async for _ in response.aiter_bytes():
            break  # the client goes away midway
        return response.status_code


async def completion(c: httpx.AsyncClient) -> int:
    return (await c.post("/v1/completions", json={"model": "fake", "prompt": "a b c", "max_tokens": 4})).status_code


async def bad_input(c: httpx.AsyncClient) -> int:
    bodies = [b'{"model":"fake","messages":[{"role":"user","content":"\\ud800"}]}', b"{", b'{"model": 5}',
              b'{"model":"fake","n":100000,"messages":[{"role":"user","content":"x"}]}']
    return (await c.post("/v1/chat/completions", content=random.choice(bodies),
                         headers={"Content-Type": "application/json"})).status_code


async def unknown_key(c: httpx.AsyncClient) -> int:
    headers = {"Authorization": f"Bearer sk-llmops-{random.getrandbits(64):x}"}
    return (await c.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code


async def odd_method(c: httpx.AsyncClient) -> int:
    method = random.choice(["PROPFIND", "PURGE", "MKCOL", "OPTIONS", "PATCH"])
    return (await c.request(method, f"/x/{random.getrandbits(32):x}")).status_code


async def unknown_model(c: httpx.AsyncClient) -> int:
    return (await c.post("/v1/chat/completions", json={**CHAT, "model": f"m{random.getrandbits(32):x}"})).status_code


async def image(c: httpx.AsyncClient) -> int:
    body = {"model": "image", "prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 4}
    return (await c.post("/v1/images/generations", json=body)).status_code


async def image_job_cancelled(c: httpx.AsyncClient) -> int:
    body = {"model": "image", "prompt": "a harbour", "size": "64x64", "num_inference_steps": 20}
    created = await c.post("/v1/images/jobs", json=body)
    if created.status_code != 202:
        return created.status_code
    return (await c.delete(f"/v1/images/jobs/{created.json()['id']}")).status_code


async def embeddings(c: httpx.AsyncClient) -> int:
    return (await c.post("/v1/embeddings", json={"model": "embed", "input": ["one", "two three"]})).status_code


MIX = [(chat, 34), (stream_cancelled, 13), (completion, 8), (bad_input, 9), (unknown_key, 8),
       (odd_method, 4), (unknown_model, 8), (image, 6), (image_job_cancelled, 4), (embeddings, 6)]


def scrape(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    values = {name: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")
              for name in GAUGES.values() if line.startswith(name + " ")}
    sample = {key: values.get(metric, float("nan")) for key, metric in GAUGES.items()}
    sample["rss_mb"] = round(sample["rss_mb"] / 2**20, 1)
    sample["series"] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return sample


async def traffic(base: str, secret: str, deadline: float, budget: int, counts: dict[str, int]) -> None:
    actions = [a for a, _ in MIX]
    weights = [w for _, w in MIX]
    sent = 0

    async def worker() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {secret}"},
                                     timeout=60) as c:
            while time.monotonic() < deadline and sent < budget:
                sent += 1
                action = random.choices(actions, weights)[0]
                try:
                    status = await action(c)
                except httpx.HTTPError as exc:
                    status = -1
                    counts[f"error:{type(exc).__name__}"] = counts.get(f"error:{type(exc).__name__}", 0) + 1
                counts[f"{action.__name__}:{status}"] = counts.get(f"{action.__name__}:{status}", 0) + 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def sampler(base: str, every: float, done: asyncio.Event, started: float,
                  samples: list[dict[str, float]], counts: dict[str, int]) -> None:
    while not done.is_set():
        sample = await asyncio.to_thread(scrape, base)
        samples.append({"t_s": round(time.monotonic() - started), "requests": sum(counts.values()), **sample})
        print(samples[-1], flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every)


async def soak(base: str, secret: str, minutes: float, requests: int, every: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    done = asyncio.Event()
    sampling = asyncio.create_task(sampler(base, every, done, started, samples, counts))
    await traffic(base, secret, started + minutes * 60, requests, counts)
    done.set()
    await sampling
    samples.append({"t_s": round(time.monotonic() - started), "requests": sum(counts.values()),
                    **await asyncio.to_thread(scrape, base)})
    return {"counts": dict(sorted(counts.items())), "samples": samples,
            "elapsed_s": round(time.monotonic() - started, 1)}


def verdict(samples: list[dict[str, float]]) -> dict[str, Any]:
    """First sample after warm-up (a quarter of the run) against the last: growth of each figure."""
    warm = samples[max(1, len(samples) // 4)]
    last = samples[-1]
    out: dict[str, Any] = {}
    for key in ("rss_mb", "open_fds", "asyncio_tasks", "series"):
        tail = [s[key] for s in samples[len(samples) // 4:]]
        out[key] = {"after_warmup": warm[key], "last": last[key], "max": max(tail),
                    "median": statistics.median(tail)}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Soak: {result['requests']} requests of mixed traffic in {result['elapsed_s']} s",
             "", f"{result['meta']['machine']}, {result['meta']['date']}; {CONCURRENCY} concurrent clients; "
             "python -m bench.soak", "", "| figure | after warm-up | last | max | median |", "|---|---|---|---|---|"]
    for key, v in result["verdict"].items():
        lines.append(f"| {key} | {v['after_warmup']} | {v['last']} | {v['max']} | {v['median']} |")
    lines += ["", "## Samples", "", "| t (s) | requests | RSS (MB) | open fds | asyncio tasks | series |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {s['t_s']} | {s['requests']} | {s['rss_mb']} | {s['open_fds']} | {s['asyncio_tasks']} | "
              f"{s['series']} |" for s in result["samples"]]
    lines += ["", "## Answers by kind and status", "", "| kind:status | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["counts"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "soak.yaml"
        state = {"backend": "sqlite", "sqlite_path": str(Path(tmp) / "soak.db")}  # memory would keep every spend row
        cfg.write_text(yaml.safe_dump({"models": MODELS, "log_level": "warning", "state": state,
                                       "auth": {"admin_key": ADMIN}, "observability": {"log_format": "json"}}))
        with live_server(cfg) as base:
            made = httpx.post(f"{base}/admin/keys", headers={"X-Admin-Key": ADMIN}, json={"name": "soak"}).json()
            time.sleep(1.1)  # the auth middleware sees a new key within a second
            result = asyncio.run(soak(base, made["secret"], args.minutes, args.requests, args.sample_every))
    result["requests"] = sum(result["counts"].values())
    result["verdict"] = verdict(result["samples"])
    result["meta"] = run_meta(minutes=args.minutes, request_budget=args.requests)
    save(args.out, "soak", markdown(result), result)


if __name__ == "__main__":
    main()
