"""The server's life: serving, then draining after SIGTERM.

While draining, /ready answers 503, new work gets 503 `shutting_down` (reads and cancellations are still
served: middleware/drain.py), and every request and image job already admitted runs to its end (a job is
in flight from its admission to its end: pipeline/images.submit_job); the process exits once none is left
(and the results of jobs that finished meanwhile were read, app.drain) or `drain_timeout_s` passed.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("llmops.lifecycle")


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.warming = False  # the server finishes start-up after the models loaded (server.py): not ready yet
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting and wait for in-flight requests. True when all finished in time."""
        self.draining = True
        started = time.monotonic()
        log.info("draining: %d request(s) in flight, up to %.0f s", self.in_flight, timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain timeout: %d request(s) still in flight", self.in_flight)
            return False
        log.info("drained in %.2f s", time.monotonic() - started)
        return True
