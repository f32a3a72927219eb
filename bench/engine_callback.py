"""What xllamacpp's streaming callback costs the thread that calls it, apart from anything llmops does: the
llama.cpp engine (src/llmops/engines/llamacpp.py) runs each request as one `Server.handle_completions`
call on a worker thread, streaming, so that a callback per token can stop generation within one token
(a client gone, a deadline). Here that call runs in a bare process with a callback that does nothing,
streaming and not, interleaved, and the calling thread's CPU per output token is read from the OS
(CLOCK_THREAD_CPUTIME_ID). The difference is xllamacpp's per-token work for a Python caller (its C++
result to JSON, the JSON to a Python dict, the GIL taken and given back, the thread woken); bench.thread_cpu
shows the same thread in the server, and bare llama.cpp's HTTP thread beside it.

    python -m bench.engine_callback --out bench/results [--repeats 4] [--requests 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from bench.report import run_meta, save, spread

MAX_TOKENS = 64
MODES = ("streaming callback", "one callback at the end")


def server(threads: int) -> Any:
    import xllamacpp

    from llmops.engines.weights import EMBEDDED_GEMMA, resolve_weights
    p = xllamacpp.CommonParams()
    p.model.path = str(resolve_weights(EMBEDDED_GEMMA))
    p.n_parallel, p.n_ctx, p.cont_batching = 2, 8192, True
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    p.verbosity = 1
    p.hostnames, p.port = ["127.0.0.1"], 0
    return xllamacpp.Server(p)


def measure(srv: Any, stream: bool, requests: int) -> dict[str, float]:
    """Thread CPU us per output token and tokens/s over `requests` calls, on a fresh thread (as the engine's
    worker threads are)."""
    body = {"prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "cache_prompt": True, "stream": stream}
    out: dict[str, float] = {}

    def run() -> None:
        calls = 0

        def callback(_: Any) -> bool:
            nonlocal calls
            calls += 1
            return False

        cpu0, wall0 = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID), time.perf_counter()
        for _ in range(requests):
            srv.handle_completions(body, callback)
        cpu, wall = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) - cpu0, time.perf_counter() - wall0
        tokens = MAX_TOKENS * requests
        out.update(cpu_us_per_token=cpu / tokens * 1e6, tokens_per_s=tokens / wall, callbacks=calls / requests)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# xllamacpp's per-token callback, on its own", "",
             f"Gemma 3 270M, {meta['threads']} decode threads, {meta['requests']} requests of {MAX_TOKENS} tokens "
             f"per measurement, {meta['repeats']} interleaved repeats, a callback that does nothing; "
             f"{meta['machine']}, {meta['date']}. median [min-max] of the repeats.", "",
             "| mode | calling thread's CPU us/token | tokens/s | callbacks/request |", "|---|---|---|---|"]
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        lines.append(f"| {mode} | {spread([r['cpu_us_per_token'] for r in mine], 1)} | "
                     f"{spread([r['tokens_per_s'] for r in mine], 1)} | "
                     f"{statistics.median(r['callbacks'] for r in mine):.0f} |")
    return "\n".join([*lines, ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="engine-callback")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    srv = server(a.threads)
    measure(srv, True, 1)  # warm-up: the prompt's cache, the first call's allocations
    rows = []
    for repeat in range(a.repeats):
        order = MODES if repeat % 2 == 0 else MODES[::-1]
        for mode in order:
            rows.append({"mode": mode, "repeat": repeat, **measure(srv, mode == MODES[0], a.requests)})
            print(rows[-1], flush=True)
    meta = run_meta(repeats=a.repeats, requests=a.requests, threads=a.threads)
    save(a.out, a.name, markdown(rows, meta), {"meta": meta, "results": rows})


if __name__ == "__main__":
    main()
