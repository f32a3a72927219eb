"""What each part of a request costs, measured by taking it away: the llmops app and a bare FastAPI app
(bench/targets/bare_fastapi.py) driven in-process through ASGI (no sockets, no uvicorn, no client on the
same cores), 16 requests at a time, non-streaming chat of one token with the fake engine, cache off, no
keys (the configuration of bench/overhead.py's llmops-open), on uvloop as the server runs. The figure is
the process's CPU time per request (every thread: the spend writer's too).

Each variant runs in a fresh process with one part replaced by the least that keeps requests answered,
and the variants are interleaved over the repeats, so a noisy moment falls on all of them alike. A part's
cost is the full app's CPU per request minus the variant's, within a repeat. Sampling profilers
(py-spy) misplace time among the frames of nested async generators, and cProfile inflates small calls
several times; taking a part away is what an outsider can check.

    python -m bench.request_parts --out bench/results [--repeats 5] [--requests 8000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bench.report import run_meta, save, spread

T = TypeVar("T")
REPLY = " ".join(f"w{i}" for i in range(64))
BODY = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
CONCURRENCY = 16
ASGI = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                 Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


def _replace(owner: Any, name: str, value: Any) -> None:
    """Put `value` in place of `owner.name`, which must exist: a part renamed in the code fails the variant
    (and its test) instead of silently measuring nothing."""
    if not hasattr(owner, name):
        raise RuntimeError(f"{owner!r} has no {name}: bench/request_parts.py needs updating")
    setattr(owner, name, value)


def _without_access_record() -> None:
    from llmops.middleware import observe
    _replace(observe.Observer, "_record", lambda self, scope, status, elapsed: None)


def _without_inference_observer() -> None:
    from llmops.observability import inference

    async def text(self: Any, choices: Any) -> Any:
        async for item in choices:
            yield item
    _replace(inference.InferenceObserver, "text", text)


def _without_settlement() -> None:
    from llmops.pipeline import accounting
    _replace(accounting.Accountant, "settle", lambda self, *a, **k: None)


def _without_deadline() -> None:
    from llmops.scheduling import runner
    _replace(runner, "with_deadline", lambda items, deadline: items)


def _without_disconnect_watch() -> None:
    from llmops.api import textcall

    async def work_only(request: Any, work: Any) -> Any:
        return await work
    _replace(textcall, "cancel_on_disconnect", work_only)


def _without_answer_encoding() -> None:
    from starlette.responses import Response

    from llmops.api import textcall
    _replace(textcall, "encode_answer", lambda answer, headers: Response(
        b'{"id":"x"}', headers=headers, media_type="application/json"))


def _without_all_six() -> None:
    """Every part above at once: what is left is routing, validation, admission, the engine call and the
    pipeline's layers, the floor under the gateway's per-request CPU without dropping a feature's work."""
    for patch in (_without_access_record, _without_inference_observer, _without_settlement, _without_deadline,
                  _without_disconnect_watch, _without_answer_encoding):
        patch()


VARIANTS: dict[str, tuple[str, Callable[[], None] | None]] = {
    "bare": ("bare FastAPI, same JSON", None),
    "full": ("llmops, everything on", None),
    "access": ("without the access record (HTTP metrics, access-log call)", _without_access_record),
    "observer": ("without the inference observer (TTFT, latency, tokens metrics, spans)",
                 _without_inference_observer),
    "settle": ("without settlement (tokens, cost, spend written to SQLite)", _without_settlement),
    "deadline": ("without the deadline timer", _without_deadline),
    "disconnect": ("without the disconnect watch timer", _without_disconnect_watch),
    "encode": ("without encoding the answer (fixed bytes)", _without_answer_encoding),
    "all": ("without all six parts above at once", _without_all_six),
}


def llmops_app(folder: Path) -> ASGI:
    from llmops.app import create_app
    from llmops.observability.logging import configure_logging
    from llmops.settings import load_settings
    model = {"name": "fake", "engine": "fake", "options": {"reply": REPLY, "capacity": 256},
             "pricing": {"prompt_usd_per_1k": 0.001, "completion_usd_per_1k": 0.002}, "limits": {"max_queued": 1024}}
    config = {"log_level": "warning", "models": [model], "cache": {"enabled": False},
              "state": {"backend": "sqlite", "sqlite_path": str(folder / "state.db")}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    configure_logging("warning", "json")
    app: ASGI = create_app(load_settings(path))
    return app


def bare_app() -> ASGI:
    from bench.targets.bare_fastapi import build
    app: ASGI = build(REPLY)
    return app


async def request(app: ASGI) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(BODY)).encode())], "state": {}}
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client stays: no disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def lifespan(app: ASGI) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        await outbox.put(message)

    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    return inbox, task


async def measure(app: ASGI, requests: int) -> float:
    """CPU microseconds per request over `requests` (after a warm-up), CONCURRENCY at a time."""
    deadline = time.monotonic() + 60
    while await request(app) != 200:  # the engine loads in the background
        if time.monotonic() > deadline:
            raise RuntimeError("the app never answered 200")
        await asyncio.sleep(0.05)

    async def worker(count: int) -> None:
        for _ in range(count):
            if await request(app) != 200:
                raise RuntimeError("a request failed")

    await asyncio.gather(*(worker(50) for _ in range(CONCURRENCY)))
    per = max(1, requests // CONCURRENCY)
    cpu = time.process_time()
    await asyncio.gather(*(worker(per) for _ in range(CONCURRENCY)))
    return (time.process_time() - cpu) / (per * CONCURRENCY) * 1e6


async def one_variant(name: str, requests: int) -> float:
    patch = VARIANTS[name][1]
    if patch is not None:
        patch()
    with tempfile.TemporaryDirectory() as folder:
        app = bare_app() if name == "bare" else llmops_app(Path(folder))
        inbox, task = await lifespan(app)
        try:
            return await measure(app, requests)
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await task


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop when it is installed, as uvicorn runs the server (its `loop="auto"`): the pure-Python
    asyncio loop costs several times more per callback and would weigh the parts that schedule callbacks
    (timers, tasks) more than the server does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_variant(name: str, requests: int) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.request_parts", "--variant", name, "--requests",
                          str(requests)], capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("cpu_us ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"variant {name} failed: {out.stderr[-2000:]}")
    return float(lines[-1].split()[1])


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    names = list(dict.fromkeys(r["variant"] for r in rows))
    by: dict[str, list[float]] = {n: [r["cpu_us"] for r in rows if r["variant"] == n] for n in names}
    full = by.get("full", [])
    lines = ["# What each part of a request costs (in-process, CPU per request)", "",
             f"{meta['repeats']} interleaved repeats of {meta['requests']} non-streaming one-token chat requests, "
             f"{CONCURRENCY} at a time, fake engine, cache off, no keys; ASGI in-process (no sockets, no "
             f"uvicorn) on {meta.get('loop', 'asyncio')}; {meta['machine']}, {meta['date']}. median [min-max] of "
             "the repeats; a part's cost is the full app's CPU per request minus the variant's, within a repeat.", "",
             "| variant | CPU us/request | part's cost us | share of llmops over bare |", "|---|---|---|---|"]
    over = [f - b for f, b in zip(full, by.get("bare", []), strict=False)]
    for name in names:
        values = by[name]
        cost = [f - v for f, v in zip(full, values, strict=False)] if name not in ("full", "bare") else []
        share = ([c / o for c, o in zip(cost, over, strict=False) if o > 0] if cost else [])
        lines.append(f"| {VARIANTS[name][0]} | {spread(values, 0)} | {spread(cost, 0) if cost else '-'} | "
                     f"{spread([100 * s for s in share], 0) + ' %' if share else '-'} |")
    return "\n".join([*lines, ""])


def variant_args(doc: str | None, name: str, repeats: int, requests: int, variants: list[str]) -> argparse.Namespace:
    """The command line of an in-process bench of variants (this one, bench/gil_wait.py)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default=name)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--variants", default=",".join(variants))
    p.add_argument("--variant", help=argparse.SUPPRESS)  # one measurement, in this process
    return p.parse_args()


def interleaved(names: list[str], repeats: int, measure_one: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every variant once per repeat, each in a fresh process, the order rotating so none always runs first."""
    rows = []
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            rows.append({"variant": name, "repeat": repeat, **measure_one(name)})
            print(f"repeat {repeat} {name}: {json.dumps(rows[-1])}", file=sys.stderr)
    return rows


def main() -> None:
    a = variant_args(__doc__, "request-parts", 5, 8000, list(VARIANTS))
    if a.variant:
        print(f"cpu_us {run_loop(one_variant(a.variant, a.requests)):.1f}")
        return
    rows = interleaved(a.variants.split(","), a.repeats, lambda name: {"cpu_us": run_variant(name, a.requests)})
    meta = run_meta(repeats=a.repeats, requests=a.requests, loop=_loop_name())
    save(a.out, a.name, report(rows, meta), {"meta": meta, "results": rows})


if __name__ == "__main__":
    main()
