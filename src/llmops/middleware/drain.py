"""Count requests in flight, and refuse new ones with 503 once the server is draining. The probes
(/health, /ready) and /metrics pass through and are not counted."""

from __future__ import annotations

from llmops.errors import ShuttingDown
from llmops.http_edge import OPS, UNKNOWN_MODEL
from llmops.lifecycle import Lifecycle
from llmops.observability.metrics import Metrics


class Drain:
    def __init__(self, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.lifecycle, self.metrics = lifecycle, metrics

    @staticmethod
    def counted(path: str) -> bool:
        return path not in OPS

    def refusal(self) -> ShuttingDown | None:
        """The 503 for a new request once draining (counted), else None."""
        if not self.lifecycle.draining:
            return None
        error = ShuttingDown("the server is shutting down")
        self.metrics.reject(UNKNOWN_MODEL, error)
        return error
