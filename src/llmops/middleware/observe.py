"""Per request: HTTP metrics (route template, method, status, latency), one structured access-log line,
and the root tracing span. Handlers add fields to the log line through `log_fields(scope)` (model,
tokens, queue time...); prompts and outputs are never added unless `log_content` is set.

Label values are closed sets, so no client can create series: the method is one of the standard verbs
or "OTHER", the route is the matched route's template or "unmatched", the status a 3-digit code.

An exception that escapes the app is logged once here (a plain traceback, no locals) and answered 500 in
the OpenAI envelope; it is never re-raised to uvicorn, which would close the keep-alive connection under
the client's next request (and log the traceback a second time)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.errors import internal_error
from llmops.http_edge import error_response, log_fields
from llmops.observability.logging import request_logger
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer

UNLOGGED = ("/health", "/ready", "/metrics")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
log = logging.getLogger("llmops.errors")


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


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
        status, sent = 500, "none"  # none, started, done

        async def send_status(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status, sent = int(message["status"]), "started"
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = "done"
            await send(message)

        with self.tracer.span("http " + method_label(scope["method"]), {"http.target": scope["path"]}) as span:
            try:
                await self.app(scope, receive, send_status)
            except Exception as exc:
                log.exception("unhandled error on %s %s", method_label(scope["method"]), scope["path"])
                if sent == "started":  # half a response is out: only closing the connection can tell
                    raise
                if sent == "none":
                    await error_response(internal_error(exc))(scope, receive, send_status)
            finally:
                span.set_attribute("http.status_code", status)
                self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route, method = _route(scope), method_label(scope["method"])
        self.metrics.http_requests.labels(route, method, str(status)).inc()
        self.metrics.http_latency.labels(route, method).observe(elapsed)
        if scope["path"] in UNLOGGED and status < 400:
            return
        state = scope.get("state", {})
        self.log.info("request", request_id=state.get("request_id"), method=method, path=scope["path"],
                      route=route, status=status, latency_ms=round(elapsed * 1000, 1), **log_fields(scope))
