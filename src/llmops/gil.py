"""The GIL's switch interval, which the server sets for its process (server.py), as it freezes the heap.

A thread that waits for the GIL asks the holder to drop it once it has waited `sys.getswitchinterval()`
(5 ms by default). But the holder dropping the GIL on its own wakes the waiter, which starts its wait over
when it loses the race to take it back (CPython's take_gil). uvloop drops the GIL at every turn of the event
loop (it runs libuv without it) and takes it back at once, so an event loop busy enough to turn more often
than every switch interval keeps every other thread of the process waiting: the spend writer, the threads
that read the stores (`asyncio.to_thread`), llama.cpp's callback threads with their tokens.

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
