"""Instructions (and optionally first-level data-cache misses) per request in the server, under valgrind's
callgrind: repeatable on a shared machine where CPU time is not. The gateway-overhead case (bench/overhead.py:
non-streaming chat, one token, the fake engine, auth and limits off, cache off) or the bare FastAPI app, each
under 16-way load from bench.overhead's client. A keyed case (llmops-keyed-sqlite, llmops-keyed-redis) has its
key made through the admin API before counting starts, and every request sends it (bench.overhead.give_key).

The server runs under callgrind with instrumentation off while it starts (imports are not counted and run
faster); then instrumentation goes on, a warm-up load runs, the counters are zeroed, the measured load runs,
and the counters are dumped: the dump holds only the measured requests (plus the few housekeeping ticks of
that window). Per request = the dump's total / requests. With --functions, the top C functions of the
window (callgrind_annotate's inclusive-free listing: where the interpreter spends, e.g. `sre_*` for regular
expressions, `dict_*`, pydantic-core's Rust symbols).

With --stream, the per-token case instead (bench/overhead.py's stream phase): streamed chat answers of the
fake engine's 64-word reply, usage included, 16 at once; per token = the window's total / the completion
tokens the answers' usage events report (both servers answer 64 tokens a request).

    python -m bench.instructions --cases bare-fastapi,llmops-open [--requests 1000] [--cache-sim]
    python -m bench.instructions --stream --requests 200 --functions 30 --keep /tmp/dumps   # per token
    python -m bench.instructions --cases llmops-open@baseline --baseline-src /tmp/base/src   # before/after
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.overhead import BASELINE, parallel, start
from bench.run import stop

EVENTS = re.compile(r"^(?:summary|totals):\s*([\d\s]+)$", re.M)


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def _totals(path: Path) -> dict[str, int]:
    text = path.read_text()
    names = re.search(r"^events:\s*(.+)$", text, re.M)
    found = EVENTS.findall(text)
    if names is None or not found:
        raise RuntimeError(f"no totals in {path}")
    return dict(zip(names.group(1).split(), (int(v) for v in found[-1].split()), strict=False))


def measure(case: str, requests: int, warmup: int, port: int, tmp: Path, baseline_src: str | None,
            cache_sim: bool, functions: int, keep: Path | None = None, stream: bool = False) -> dict[str, Any]:
    out = tmp / f"callgrind.{case.replace('@', '-')}{'.stream' if stream else ''}.out"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               f"--cache-sim={'yes' if cache_sim else 'no'}"]
    with ExitStack() as stack:
        server = start(case, port, tmp, stack, baseline_src, prefix=command, env={"PYTHONHASHSEED": "0"},
                       ready_s=600)  # a keyed case's key made before the counting starts
        try:
            _control(server.proc.pid, "-i", "on")
            asyncio.run(parallel(server, warmup, 16, stream))
            _control(server.proc.pid, "-z")
            t0 = time.perf_counter()
            _, tokens, _ = asyncio.run(parallel(server, requests, 16, stream))
            wall = time.perf_counter() - t0
            _control(server.proc.pid, "-d")
        finally:
            stop(server.proc)
    dumps = sorted(tmp.glob(f"{out.name}.*"), key=lambda p: p.stat().st_mtime)
    dump = next(p for p in reversed(dumps) if p.stat().st_size > 0)
    totals = _totals(dump)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / out.name).write_bytes(dump.read_bytes())
    row: dict[str, Any] = {"case": case, "requests": requests, "wall_s_under_valgrind": round(wall, 1),
                           "instructions_per_request": totals["Ir"] / requests}
    per = requests
    if stream:  # per token: what a streamed answer costs, spread over the tokens it carried
        per = max(1, tokens)
        row.update(stream=True, tokens=tokens, instructions_per_token=totals["Ir"] / per)
    if cache_sim:
        misses = totals.get("D1mr", 0) + totals.get("D1mw", 0)
        row["d1_misses_per_" + ("token" if stream else "request")] = misses / per
    if functions:
        listing = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=99", str(dump)],
                                 capture_output=True, text=True, check=True).stdout
        row["top"] = _top(listing, functions, per)
    return row


def _top(listing: str, n: int, per: int) -> list[str]:
    """The listing's first `n` functions, each one's instructions divided by `per` (requests, or tokens)."""
    rows = []
    for line in listing.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.+)$", line)
        if m and ":" in m.group(2) and not m.group(2).startswith("PROGRAM TOTALS"):
            name = re.sub(r"^\S*/", "", m.group(2).split(" [", 1)[0])  # file:function, the file without its folders
            rows.append(f"{int(m.group(1).replace(',', '')) / per:9.0f}  {name}")
        if len(rows) >= n:
            break
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="bare-fastapi,llmops-open")
    p.add_argument("--requests", type=int, default=1000, help="measured requests (16-way)")
    p.add_argument("--warmup", type=int, default=300, help="requests before the counters are zeroed")
    p.add_argument("--port", type=int, default=18195)
    p.add_argument("--baseline-src", default=None, help="another checkout's src/ for CASE" + BASELINE)
    p.add_argument("--cache-sim", action="store_true", help="count first-level data-cache misses too (slower)")
    p.add_argument("--functions", type=int, default=0, help="list the top N C functions of the window")
    p.add_argument("--out", default=None, help="a JSON file for the rows")
    p.add_argument("--keep", default=None, help="a folder to copy the callgrind dumps to (callgrind_annotate them)")
    p.add_argument("--stream", action="store_true",
                   help="streamed answers (64 tokens each): instructions per token; --requests counts answers")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in a.cases.split(","):
            row = measure(case, a.requests, a.warmup, a.port, Path(folder), a.baseline_src, a.cache_sim, a.functions,
                          Path(a.keep) if a.keep else None, a.stream)
            rows.append(row)
            top = row.pop("top", None)
            print(json.dumps(row), flush=True)
            for line in top or ():
                print("   ", line, flush=True)
            if top:
                row["top"] = top
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
