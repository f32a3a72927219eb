"""Count requests in flight, and refuse new ones with 503 once the server is draining. The probes
(/health, /ready) and /metrics pass through and are not counted."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from llmops.errors import ShuttingDown, error_response_parts
from llmops.lifecycle import Lifecycle

UNCOUNTED = ("/health", "/ready", "/metrics")


class DrainMiddleware:
    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            status, body, headers = error_response_parts(ShuttingDown("the server is shutting down", retry_after=5))
            await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
            return
        self.lifecycle.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave()
