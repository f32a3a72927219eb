"""Count requests in flight, and refuse new ones with 503 once the server is draining. The probes
(/health, /ready) and /metrics pass through and are not counted."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from llmops.errors import ShuttingDown
from llmops.http_edge import OPS, UNKNOWN_MODEL, send_error
from llmops.lifecycle import Lifecycle
from llmops.observability.metrics import Metrics


class DrainMiddleware:
    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.app, self.lifecycle, self.metrics = app, lifecycle, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPS:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            error = ShuttingDown("the server is shutting down")
            self.metrics.reject(UNKNOWN_MODEL, error)
            await send_error(error, scope, receive, send)
            return
        self.lifecycle.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave()
