"""Per request: HTTP metrics (route template, method, status, latency), one structured access-log line,
and the root tracing span. Handlers add fields to the log line through `log_fields(scope)` (model,
tokens, queue time...); prompts and outputs are never added unless `log_content` is set.

Label values are closed sets, so no client can create series: the method is one of the standard verbs
or "OTHER", the route is the matched route's template or "unmatched", the status a 3-digit code (499
when the client left before its request was read whole: nobody saw an answer).

An exception that escapes the app is logged once here (a plain traceback, no locals) and answered 500 in
the path's envelope (OpenAI; V2 under /v2); it is never re-raised to uvicorn, which would close the
keep-alive connection under the client's next request (and log the traceback a second time).

`Responder` is the edge's one `send` wrapper: it notes the status for the metrics and the log, and adds
the headers the edge owes every response (X-Request-Id, the rate-limit headers)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from llmops.errors import error_format, internal_error
from llmops.http_edge import error_response, log_fields
from llmops.observability.logging import request_logger
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer

UNLOGGED = ("/health", "/ready", "/metrics")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
CLIENT_LEFT = 499  # the client closed the connection before its request was read whole
log = logging.getLogger("llmops.errors")


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class Responder:
    """The `send` every layer below the edge writes to: the status seen, whether the answer started or
    finished, and the headers added to its start."""

    __slots__ = ("_send", "headers", "sent", "status")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self._send, self.headers = send, headers
        self.status, self.sent = 500, "none"  # none, started, done

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status, self.sent = int(message["status"]), "started"
            message["headers"] = [*message.get("headers", ()), *self.headers]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.sent = "done"
        await self._send(message)


Inner = Callable[[Scope, Receive, Responder], Awaitable[None]]


MAX_HTTP_SERIES = 4096  # (route, method, status) series pairs kept by an Observer; past it, it starts over


class Observer:
    def __init__(self, metrics: Metrics, tracer: Tracer) -> None:
        self.metrics, self.tracer = metrics, tracer
        self.log = request_logger()
        off = tracer.span("")
        self._untraced = off if off is tracer.span("") else None  # the tracer's one no-op span, when it is off
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # -> (requests, latency) children

    async def observe(self, scope: Scope, receive: Receive, out: Responder, inner: Inner) -> None:
        """Run `inner` as the request's root span; record it; answer 500 for an exception that escapes."""
        started = time.perf_counter()
        untraced = self._untraced  # tracing off: no span's name and attributes to build
        opened = untraced or self.tracer.span("http " + method_label(scope["method"]), {"http.target": scope["path"]})
        with opened as span:
            try:
                await inner(scope, receive, out)
            except Exception as exc:
                log.exception("unhandled error on %s %s", method_label(scope["method"]), scope["path"])
                if out.sent == "started":  # half a response is out: only closing the connection can tell
                    raise
                if out.sent == "none":
                    await error_response(internal_error(exc), fmt=error_format(scope["path"]))(scope, receive, out)
            finally:
                if untraced is None:
                    span.set_attribute("http.status_code", out.status)
                self._record(scope, out.status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route, method = _route(scope), method_label(scope["method"])
        series = self._series.get((route, method, status))
        if series is None:  # label values are closed sets (module docstring): few distinct triples
            if len(self._series) >= MAX_HTTP_SERIES:
                self._series = {}
            series = self._series[(route, method, status)] = (
                self.metrics.http_requests.labels(route, method, str(status)),
                self.metrics.http_latency.labels(route, method))
        series[0].inc()
        series[1].observe(elapsed)
        if scope["path"] in UNLOGGED and status < 400:
            return
        if not self.log.writes_info():  # the line would be dropped: don't build its fields
            return
        state = scope.get("state", {})
        self.log.info("request", request_id=state.get("request_id"), method=method, path=scope["path"],
                    route=route, status=status, latency_ms=round(elapsed * 1000, 1), **log_fields(scope))
