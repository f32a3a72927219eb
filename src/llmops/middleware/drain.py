"""Count requests in flight, and refuse new work with 503 once the server is draining. The probes
(/health, /ready) and /metrics pass through and are not counted. Reads and cancellations (GET, HEAD, DELETE)
are still served while draining: an image job admitted before the drain runs to its end, and its client must
be able to follow it, fetch its result and cancel it (they were 503 too, so a finished job's answer was lost)."""

from __future__ import annotations

import asyncio

from llmops.errors import ShuttingDown
from llmops.http_edge import OPS, UNKNOWN_MODEL
from llmops.lifecycle import Lifecycle
from llmops.observability.metrics import Metrics

STILL_SERVED = frozenset({"GET", "HEAD", "DELETE"})  # while draining: they start no new work


class Drain:
    def __init__(self, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.lifecycle, self.metrics = lifecycle, metrics

    @staticmethod
    def counted(path: str) -> bool:
        return path not in OPS

    def cut_off(self, unanswered: bool) -> ShuttingDown | None:
        """The answer for a request the server cancels as it stops after the drain's time ran out (uvicorn
        cancels what is left): a 503 in the API's envelope where nothing was sent yet (uvicorn's own answer is a
        plain-text 500 and a logged traceback), else None: the cancellation goes on. The task's cancellation is
        taken back so the answer can be written."""
        if not (self.lifecycle.draining and unanswered):
            return None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return ShuttingDown("the server stopped before this request finished (its drain time ran out)")

    def refusal(self, method: str) -> ShuttingDown | None:
        """The 503 for new work once draining (counted), else None."""
        if not self.lifecycle.draining or method in STILL_SERVED:
            return None
        error = ShuttingDown("the server is shutting down")
        self.metrics.reject(UNKNOWN_MODEL, error)
        return error
