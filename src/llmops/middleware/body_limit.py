"""Refuse request bodies above a size with 413, before they are parsed: at once from Content-Length,
or as soon as a chunked body grows past the limit."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.errors import PayloadTooLarge, error_response_parts


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counting_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes")

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = error_response_parts(self._error())
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
