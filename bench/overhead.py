"""The gateway's own cost, with the fake engine (no model work) against a bare FastAPI app returning the
same JSON on the same uvicorn (bench/targets/bare_fastapi.py):

  per request  non-streaming chat, one token: sequential p50/p99 latency, 16-way requests/s and the server's
               CPU time per request in that run (steadier than req/s on a shared machine); llmops with
               auth and limits off (no keys, cache off), and with a key carrying every limit (requests/min,
               tokens/min, in flight, budget, prices) on the SQLite store (or, as the case
               llmops-keyed-redis, on a redis-server the bench starts)
  per token    streaming chat, a 64-token answer, 16 concurrent streams: the server's CPU time per token

Each repeat starts every server fresh and runs them one after another, the order rotating, so the
machine's noise falls on all of them alike; the report gives medians of the repeats with their spread,
and differences/ratios taken within each repeat. The client is a minimal HTTP/1.1 client on raw asyncio
streams (keep-alive, one connection per worker), so little of the client's own CPU competes on a small
machine.

    python -m bench.overhead --out bench/results [--repeats 3] [--requests 400]
    python -m bench.overhead --baseline-src /path/to/old/checkout/src   # adds llmops-open@baseline: before/after
    python -m bench.overhead --cases bare-fastapi,llmops-keyed-redis --baseline-src OLD/src \
        --baseline-case llmops-keyed-redis                               # the same for the Redis store
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.load import pct
from bench.report import run_meta, save, spread
from bench.run import stop, wait_ready

ADMIN = "bench-admin-key-0123456789abcdef"
REPLY = " ".join(f"w{i}" for i in range(64))
LIMITS = {"name": "bench", "rpm": 100_000_000, "tpm": 1_000_000_000, "max_concurrent": 256,
          "budget_usd": 1_000_000, "budget_period": "month"}
CASES = ("bare-fastapi", "llmops-open", "llmops-keyed-sqlite")
KEYED = ("llmops-keyed-sqlite", "llmops-keyed-redis")  # a key carrying every limit; the state store named
REDIS_URL_ENV = "BENCH_REDIS_URL"  # the redis-server main() starts for the keyed-redis case


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


BASELINE = "@baseline"  # suffix of a case served from another source tree (--baseline-src)


def base_case(case: str) -> str:
    """The case a baseline case configures like (`llmops-open@baseline` is `llmops-open`)."""
    return case.removesuffix(BASELINE)


def server_command(case: str, port: int, tmp: Path) -> list[str]:
    case_name, case = case, base_case(case)
    if case == "bare-fastapi":
        return [sys.executable, "-m", "bench.targets.bare_fastapi", "--port", str(port), "--reply", REPLY]
    model = {"name": "fake", "engine": "fake", "options": {"reply": REPLY, "capacity": 256},
             "pricing": {"prompt_usd_per_1k": 0.001, "completion_usd_per_1k": 0.002},
             "limits": {"max_queued": 1024}}
    config: dict[str, Any] = {"log_level": "warning", "models": [model], "cache": {"enabled": False},
                              "state": {"backend": "sqlite", "sqlite_path": str(tmp / f"{case}-{port}.db")}}
    if case in KEYED:
        config["auth"] = {"admin_key": ADMIN}
    if case == "llmops-keyed-redis":
        config["state"] = {"backend": "redis", "redis_url": os.environ[REDIS_URL_ENV],
                           "redis_prefix": f"bench{port}-{case_name.replace('@', '-')}:"}
    path = tmp / f"{case_name.replace('@', '-')}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "llmops", "serve", "--config", str(path), "--port", str(port)]


def start(case: str, port: int, tmp: Path, stack: ExitStack, baseline_src: str | None = None,
          prefix: Sequence[str] = (), env: dict[str, str] | None = None, ready_s: float = 120) -> Server:
    """The case's server, ready, with its key made (a keyed case); `prefix` runs it under another command
    (valgrind: bench/instructions.py), with `env` added to the environment. The caller stops it."""
    log = stack.enter_context((tmp / f"{case.replace('@', '-')}.log").open("w"))
    env = dict(os.environ, **(env or {}))
    if case.endswith(BASELINE) and baseline_src:
        env["PYTHONPATH"] = os.pathsep.join([baseline_src, *env.get("PYTHONPATH", "").split(os.pathsep)])
    proc = subprocess.Popen([*prefix, *server_command(case, port, tmp)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    server = Server(case, port, proc)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/ready", ready_s)
        give_key(server)
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        stop(proc)
        log.flush()
        raise RuntimeError(f"{case}: {exc}\n{Path(log.name).read_text()[-2000:]}") from None
    return server


def give_key(server: Server) -> None:
    """For a keyed case: create its key (every limit, `LIMITS`) through the admin API and send it from now on."""
    if base_case(server.name) in KEYED:
        created = httpx.post(f"http://127.0.0.1:{server.port}/admin/keys", json=LIMITS,
                             headers={"Authorization": f"Bearer {ADMIN}"})
        created.raise_for_status()
        server.key = created.json()["secret"]


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read the whole response (length or chunked)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port, self.headers = port, headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        if b"content-length" in fields:
            return status, await self.reader.readexactly(int(fields[b"content-length"]))
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(parts)
            parts.append(data[:-2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _body(stream: bool) -> bytes:
    body: dict[str, Any] = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    else:
        body["max_tokens"] = 1
    return json.dumps(body).encode()


async def sequential(server: Server, n: int) -> list[float]:
    conn, body, times = Connection(server.port, server.headers()), _body(False), []
    try:
        for i in range(n + 50):  # 50 warm-up requests
            t0 = time.perf_counter()
            status, _ = await conn.post("/v1/chat/completions", body)
            if status != 200:
                raise RuntimeError(f"{server.name}: status {status}")
            if i >= 50:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return times


async def parallel(server: Server, n: int, width: int, stream: bool) -> tuple[float, int, list[float]]:
    """`n` requests from `width` connections at once: (wall seconds, completion tokens, each request's ms)."""
    body, todo, tokens, times = _body(stream), list(range(n)), [0], []

    async def worker() -> None:
        conn = Connection(server.port, server.headers())
        try:
            while todo:
                todo.pop()
                t0 = time.perf_counter()
                status, data = await conn.post("/v1/chat/completions", body)
                times.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    raise RuntimeError(f"{server.name}: status {status}")
                tail = data[data.rfind(b'"completion_tokens":') + 20:]
                tokens[0] += int(tail[:tail.find(b",")])
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return time.perf_counter() - t0, tokens[0], times


def _cpu(pid: int) -> float:
    p = psutil.Process(pid)
    return sum(p.cpu_times()[:2])


def measure(server: Server, requests: int, load: int, streams: int) -> dict[str, Any]:
    times = asyncio.run(sequential(server, requests))
    asyncio.run(parallel(server, 64, 16, False))  # warm-up of the 16 connections' path
    cpu0 = _cpu(server.proc.pid)
    wall, _, loaded = asyncio.run(parallel(server, load, 16, False))
    cpu_us_per_request = (_cpu(server.proc.pid) - cpu0) * 1e6 / load
    cpu0 = _cpu(server.proc.pid)
    _, tokens, _ = asyncio.run(parallel(server, streams, 16, True))
    cpu_us_per_token = (_cpu(server.proc.pid) - cpu0) * 1e6 / max(1, tokens)
    return {"case": server.name, "p50_ms": statistics.median(times), "p99_ms": pct(times, 99),
            "rps_16": load / wall, "p99_16_ms": pct(loaded, 99), "max_16_ms": max(loaded),
            "cpu_us_per_request": cpu_us_per_request, "stream_tokens": tokens, "cpu_us_per_token": cpu_us_per_token}


def run(cases: tuple[str, ...], repeats: int, requests: int, load: int, streams: int, port: int, tmp: Path,
        baseline_src: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for rep in range(repeats):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]
        for case in order:
            with ExitStack() as stack:
                server = start(case, port, tmp, stack, baseline_src)
                try:
                    row = measure(server, requests, load, streams)
                finally:
                    stop(server.proc)
            row["repeat"] = rep
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summarize(rows: list[dict[str, Any]], cases: tuple[str, ...] = CASES) -> dict[str, Any]:
    """Per case: medians with spread; against bare-fastapi: added p50/p99 ms, rps ratio, CPU ratio, paired
    within each repeat."""
    reps = sorted({r["repeat"] for r in rows})
    by = {(r["case"], r["repeat"]): r for r in rows}
    out: dict[str, Any] = {}
    for case in cases:
        mine = [by[(case, rep)] for rep in reps if (case, rep) in by]
        pairs = [(by[(case, rep)], by[("bare-fastapi", rep)]) for rep in reps
                 if (case, rep) in by and ("bare-fastapi", rep) in by]
        out[case] = {
            "p50_ms": [r["p50_ms"] for r in mine], "p99_ms": [r["p99_ms"] for r in mine],
            "rps_16": [r["rps_16"] for r in mine], "p99_16_ms": [r.get("p99_16_ms", 0.0) for r in mine],
            "max_16_ms": [r.get("max_16_ms", 0.0) for r in mine],
            "cpu_us_per_token": [r["cpu_us_per_token"] for r in mine],
            "added_p50_ms": [a["p50_ms"] - b["p50_ms"] for a, b in pairs],
            "added_p99_ms": [a["p99_ms"] - b["p99_ms"] for a, b in pairs],
            "rps_ratio": [a["rps_16"] / b["rps_16"] for a, b in pairs],
            "cpu_us_per_request": [r.get("cpu_us_per_request", 0.0) for r in mine],
            "cpu_per_request_ratio": [a.get("cpu_us_per_request", 0.0) / b["cpu_us_per_request"] for a, b in pairs
                                      if b.get("cpu_us_per_request")],
            "cpu_per_token_ratio": [a["cpu_us_per_token"] / b["cpu_us_per_token"] for a, b in pairs]}
    keyed, open_ = out.get("llmops-keyed-sqlite"), out.get("llmops-open")
    if keyed and open_:
        keyed["added_p50_vs_open_ms"] = [k - o for k, o in zip(keyed["p50_ms"], open_["p50_ms"], strict=False)]
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = ["# Gateway overhead: fake engine vs bare FastAPI on the same uvicorn", "",
             f"{meta['repeats']} interleaved repeats (each server fresh, order rotating); per repeat "
             f"{meta['requests']} sequential non-streaming requests (after 50 warm-up), {meta['load']} "
             f"requests over 16 connections (their latency: 16-way p99 and max), {meta['streams']} streamed "
             "64-token answers over 16 connections; "
             f"{meta['machine']}, {meta['date']}. median [min-max] of the repeats; differences and ratios are taken "
             "within a repeat. Absolute figures come from a loaded shared machine.", "",
             "| case | p50 ms | p99 ms | +p50 vs bare | +p99 vs bare | 16-way req/s | req/s vs bare | "
             "16-way p99 ms | 16-way max ms | 16-way CPU us/request | CPU/request vs bare | stream CPU us/token | "
             "CPU/token vs bare |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, s in summary.items():
        lines.append(" | ".join([f"| {case}", spread(s["p50_ms"]), spread(s["p99_ms"]), spread(s["added_p50_ms"]),
                                 spread(s["added_p99_ms"]), spread(s["rps_16"], 0), spread(s["rps_ratio"]),
                                 spread(s["p99_16_ms"], 1), spread(s["max_16_ms"], 1),
                                 spread(s["cpu_us_per_request"], 0), spread(s["cpu_per_request_ratio"]),
                                 spread(s["cpu_us_per_token"], 0), spread(s["cpu_per_token_ratio"])]) + " |")
    keyed = summary.get("llmops-keyed-sqlite", {})
    if keyed.get("added_p50_vs_open_ms"):
        lines += ["", f"Key with every limit on SQLite, p50 added over the open server: "
                  f"{spread(keyed['added_p50_vs_open_ms'])} ms."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="overhead")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--load", type=int, default=6000,
                   help="requests over 16 connections per repeat (long enough to take in the collector's pauses)")
    p.add_argument("--streams", type=int, default=64, help="streamed answers per repeat (64 tokens each)")
    p.add_argument("--port", type=int, default=18095)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES + KEYED[1:])}")
    p.add_argument("--baseline-src", default=None,
                   help="another checkout's src/: adds the case BASELINE-CASE" + BASELINE + ", served from it")
    p.add_argument("--baseline-case", default="llmops-open", help="the case the baseline source serves")
    a = p.parse_args()
    cases = tuple(a.cases.split(","))
    if a.baseline_src and a.baseline_case + BASELINE not in cases:  # named in --cases already: once
        cases += (a.baseline_case + BASELINE,)
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        if any(base_case(c) == "llmops-keyed-redis" for c in cases):
            from tests.helpers import RedisServer
            redis = RedisServer(Path(folder)).start()
            stack.callback(redis.stop)
            os.environ[REDIS_URL_ENV] = redis.url
        rows = run(cases, a.repeats, a.requests, a.load, a.streams, a.port, Path(folder), a.baseline_src)
    meta = run_meta(repeats=a.repeats, requests=a.requests, load=a.load, streams=a.streams, baseline_src=a.baseline_src)
    save(a.out, a.name, markdown(summarize(rows, cases), meta), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
