"""How long the server's other threads wait for the GIL while its event loop is busy, by switch interval
(llmops/gil.py): the llmops app driven in-process as bench/request_parts.py drives it (16 non-streaming
one-token chat requests at a time, fake engine, cache off, no keys, uvloop), in a fresh process per
variant with `sys.setswitchinterval` set first, variants interleaved over the repeats.

Two threads are watched while the load runs:

  probe   a thread of the bench's that gives up the GIL (`time.sleep(0)`) every 10 ms and times how long
          it takes to get it back: what any thread of the process (a store read, a token callback) waits
  spend   the SQLite spend ledger's batches: from the batch leaving the event loop for its writer thread
          until it is written (llmops/stores/ledger.py), under load one batch at most every 20 ms

and the process's CPU time per request, which a shorter interval could raise (more hand-overs).
The bare FastAPI app (bench/targets/bare_fastapi.py) runs with the probe at Python's default too: the
waits come from uvloop's loop, not from llmops.

    python -m bench.gil_wait --out bench/results [--repeats 4] [--requests 12000]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import run_meta, save, spread
from bench.request_parts import _replace, bare_app, interleaved, lifespan, llmops_app, measure, run_loop, variant_args

VARIANTS = {"llmops@5": ("llmops", 5.0), "llmops@1": ("llmops", 1.0), "llmops@0.5": ("llmops", 0.5),
            "bare@5": ("bare", 5.0)}
PROBE_EVERY_S = 0.01


class Probe:
    """A thread that gives up the GIL every PROBE_EVERY_S and records how long it took to get it back."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            started = time.perf_counter()
            time.sleep(0)  # releases the GIL; returning needs it back
            self.waits.append(time.perf_counter() - started)
            if self._stop.wait(PROBE_EVERY_S):
                return

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _watch_spend_batches() -> list[float]:
    """Each SQLite spend batch's time from leaving the event loop to written, as the ledger writes them."""
    from llmops.stores import ledger
    times: list[float] = []
    write = ledger.SqliteLedger._write

    async def timed(self: Any, batch: list[Any]) -> None:
        started = time.perf_counter()
        await write(self, batch)
        times.append(time.perf_counter() - started)

    _replace(ledger.SqliteLedger, "_write", timed)  # fails loudly should the ledger's writer be renamed
    return times


async def one_variant(name: str, requests: int) -> dict[str, Any]:
    app_kind, interval_ms = VARIANTS[name]
    sys.setswitchinterval(interval_ms / 1000)
    batches = _watch_spend_batches()
    with tempfile.TemporaryDirectory() as folder:
        app = bare_app() if app_kind == "bare" else llmops_app(Path(folder))
        inbox, task = await lifespan(app)
        try:
            with Probe() as probe:
                cpu_us = await measure(app, requests)
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await task
    ms = sorted(w * 1000 for w in probe.waits)
    return {"cpu_us": cpu_us, "probe_p50_ms": statistics.median(ms), "probe_p99_ms": ms[int(len(ms) * 0.99)],
            "probe_max_ms": ms[-1], "probes": len(ms),
            "batches": len(batches), "batch_max_ms": max(batches, default=0.0) * 1000,
            "batch_p50_ms": statistics.median(batches) * 1000 if batches else 0.0}


def run_variant(name: str, requests: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.gil_wait", "--variant", name, "--requests", str(requests)],
                         capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"variant {name} failed: {out.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    names = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["# GIL waits of the server's other threads under load, by switch interval", "",
             f"{meta['repeats']} interleaved repeats of {meta['requests']} non-streaming one-token chat requests, "
             "16 at a time, in-process on uvloop (bench/request_parts.py's harness), fake engine, cache off, no "
             f"keys; {meta['machine']}, {meta['date']}. median [min-max] of the repeats. A variant is "
             "app@interval in ms (Python's default: 5). probe: a thread that gives up the GIL every 10 ms, "
             "time to get it back. spend batch: a SQLite spend batch from leaving the event loop to written "
             "(bare FastAPI writes none).", "",
             "| variant | CPU us/request | probe wait p50 ms | probe wait p99 ms | probe wait max ms | "
             "spend batches | spend batch p50 ms | spend batch max ms |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        mine = [r for r in rows if r["variant"] == name]

        def col(field: str, digits: int = 1, of: list[dict[str, Any]] = mine) -> str:
            return spread([float(r[field]) for r in of], digits)
        lines.append(f"| {name} | {col('cpu_us', 0)} | {col('probe_p50_ms', 2)} | {col('probe_p99_ms')} | "
                     f"{col('probe_max_ms')} | {col('batches', 0)} | {col('batch_p50_ms')} | {col('batch_max_ms')} |")
    return "\n".join([*lines, ""])


def main() -> None:
    a = variant_args(__doc__, "gil-wait", 4, 12000, list(VARIANTS))
    if a.variant:
        print(json.dumps(run_loop(one_variant(a.variant, a.requests))))
        return
    rows = interleaved(a.variants.split(","), a.repeats, lambda name: run_variant(name, a.requests))
    meta = run_meta(repeats=a.repeats, requests=a.requests)
    save(a.out, a.name, report(rows, meta), {"meta": meta, "results": rows})


if __name__ == "__main__":
    main()
