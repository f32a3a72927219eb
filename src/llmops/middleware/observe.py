"""Per request: HTTP metrics (route template, method, status, latency), one structured access-log line,
and the root tracing span. Handlers add fields to the log line through `log_fields(scope)` (model,
tokens, queue time...); prompts and outputs are never added unless `log_content` is set."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.http_edge import log_fields
from llmops.observability.logging import request_logger
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer

UNLOGGED = ("/health", "/ready", "/metrics")


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, tracer: Tracer) -> None:
        self.app, self.metrics, self.tracer = app, metrics, tracer
        self.log = request_logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with self.tracer.span("http " + scope["method"], {"http.target": scope["path"]}) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                span.set_attribute("http.status_code", status)
                self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route, method = _route(scope), scope["method"]
        self.metrics.http_requests.labels(route, method, str(status)).inc()
        self.metrics.http_latency.labels(route, method).observe(elapsed)
        if scope["path"] in UNLOGGED and status < 400:
            return
        state = scope.get("state", {})
        self.log.info("request", request_id=state.get("request_id"), method=method, path=scope["path"],
                      route=route, status=status, latency_ms=round(elapsed * 1000, 1), **log_fields(scope))
