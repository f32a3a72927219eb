"""The garbage collector and the long-lived heap.

Everything imported and built before the models are ready (the modules, the app, the settings, the engines'
Python objects) lives as long as the process. CPython's full collections walk every tracked object: on the
server's heap with the fake engine alone (80,000 objects; far more with torch) one full collection costs
55-65 ms of CPU, and under 16-way load one came about every 0.7 s, each stalling every request in flight.
`freeze_loaded_heap`, which the server (server.py) calls once when the models have loaded, collects what
start-up left as garbage and moves every object left into the collector's permanent generation
(`gc.freeze`), which no collection visits. Objects that requests create are collected as before; frozen
objects that are later dropped are still freed by reference counting (only a reference cycle among them
would stay until exit).

The youngest generation is then collected every `YOUNG_THRESHOLD` net allocations instead of CPython's
700. Under 16-way load the requests in flight hold a few thousand tracked objects at any moment, so at
700 a young collection came every ~12 requests and walked all of them again (about 125 us each, ~9 us of a
request's CPU: bench/results/overhead-s18-final.md); objects that requests drop are freed by reference counting
either way, so the collector only ever finds cycles, and a larger young generation finds them as surely.

It is the server's choice, not the app's: the process is the server's. An app built in a process that builds
many (the tests, an embedding program) must not freeze each one's heap, whose garbage would then never be
collected."""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("llmops.heap")
YOUNG_THRESHOLD = 10_000  # net tracked allocations between two collections of the youngest generation


def freeze_loaded_heap() -> None:
    """Collect start-up's garbage, then freeze what is left out of every later collection. It blocks for
    one full collection, once: 52 ms with the fake engine, 321 ms with torch, diffusers and llama.cpp loaded
    (546,000 objects), where each full collection under load would have cost as much."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.info("froze the start-up heap: %d objects in %.0f ms", gc.get_freeze_count(),
             (time.perf_counter() - t0) * 1000)
