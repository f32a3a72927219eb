"""The GIL's switch interval, which the server sets for its process as it starts (server.py).

A thread that waits for the GIL asks the holder to drop it once it has waited `sys.getswitchinterval()`
(5 ms by default), but that wait starts over whenever the holder drops the GIL on its own and takes it
straight back before the waiter can (CPython's take_gil). uvloop does that around each of libuv's callbacks
into Python (libuv runs without the GIL), so a busy event loop kept the process's other threads waiting:
the spend writer, the threads that read the stores (stores/sqlite.py's own), llama.cpp's callback threads.

Measured in-process under 16-way load with the fake engine (bench/gil_wait.py): at 5 ms a thread waited up
to 0.5-0.8 s for the GIL, and a batch of spend took about 0.75 s to reach SQLite where it takes 2 ms; at
1 ms the longest wait was about 2 ms. The interval is process-wide, so it is the server's choice, not the
app's."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("llmops.gil")


def set_switch_interval(interval_ms: float) -> None:
    """Let a thread waiting for the GIL ask for it after `interval_ms` (Python's default: 5 ms)."""
    sys.setswitchinterval(interval_ms / 1000)
    log.info("GIL switch interval: %.2f ms", interval_ms)
