"""Refuse request bodies above a size with 413, before they are parsed: at once from Content-Length, or,
for a body sent without one (chunked), by reading it here up to the limit (at most `max_bytes` held) and
answering 413 as soon as it grows past it; the body read is then replayed to the app. Requests with more
than `max_headers` header fields get 431. The whole body (at most `max_bytes`) is checked once here for what
no request model may hold (protocol/validation.py: a lone surrogate → 400 naming the field)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.errors import HeadersTooLarge, InvalidRequest, LLMOpsError, PayloadTooLarge, error_response_parts
from llmops.protocol.validation import lone_surrogate_field

BODYLESS = ("GET", "HEAD", "OPTIONS", "DELETE")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, max_headers: int = 100) -> None:
        self.app = app
        self.max_bytes, self.max_headers = max_bytes, max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_headers:
            await _reject(HeadersTooLarge(f"more than {self.max_headers} header fields"), scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reject(self._error(), scope, receive, send)
            return
        if scope["method"] in BODYLESS and declared is None:
            await self.app(scope, receive, send)
            return
        messages = await self._read_bounded(receive)
        if messages is None:
            await _reject(self._error(), scope, receive, send)
            return
        field = lone_surrogate_field(b"".join(m.get("body", b"") for m in messages))
        if field is not None:
            await _reject(InvalidRequest(f"invalid value for '{field}': a lone UTF-16 surrogate is not text",
                                         param=field), scope, receive, send)
            return
        await self.app(scope, _replay(messages, receive), send)

    async def _read_bounded(self, receive: Receive) -> list[Message] | None:
        """The body's messages, or None once it grows past the limit (or the client left mid-body)."""
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _reject(exc: LLMOpsError, scope: Scope, receive: Receive, send: Send) -> None:
    status, body, headers = error_response_parts(exc)
    await JSONResponse(body, status_code=status, headers={**headers, "Connection": "close"})(scope, receive, send)
