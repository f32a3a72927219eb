"""Refuse request bodies above a size with 413, before they are parsed: at once from Content-Length, or,
for a body sent without one (chunked), by reading it up to the limit (at most `max_bytes` held) and
answering 413 as soon as it grows past it. Requests with more than `max_headers` header fields get 431.
The whole body (at most `max_bytes`) is checked once here for what no request model may hold
(protocol/validation.py: a lone surrogate → 400 naming the field). These answers close the connection:
the rest of an unread body would otherwise be taken for the next request."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from llmops.errors import (
    HeadersTooLarge,
    InvalidRequest,
    LLMOpsError,
    PayloadTooLarge,
    error_format,
    error_response_parts,
)
from llmops.protocol.validation import lone_surrogate_field

BODYLESS = ("GET", "HEAD", "OPTIONS", "DELETE")


class BodyLimit:
    def __init__(self, max_bytes: int, max_headers: int = 100) -> None:
        self.max_bytes, self.max_headers = max_bytes, max_headers

    def check_head(self, scope: Scope) -> LLMOpsError | None:
        """431 for too many header fields, 413 for a declared length over the limit."""
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            return HeadersTooLarge(f"more than {self.max_headers} header fields")
        for name, declared in headers:  # the first Content-Length (a loop: no generator object a request)
            if name == b"content-length":
                if declared.isdigit() and int(declared) > self.max_bytes:
                    return self._error()
                break
        return None

    @staticmethod
    def has_body(scope: Scope) -> bool:
        return scope["method"] not in BODYLESS or any(k == b"content-length" for k, _ in scope["headers"])

    async def read(self, receive: Receive) -> list[Message] | None:
        """The body's messages, or None once it grows past the limit. When the client leaves mid-body, the
        last message is its `http.disconnect`."""
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

    def too_large(self) -> PayloadTooLarge:
        return self._error()

    @staticmethod
    def check_body(raw: bytes) -> LLMOpsError | None:
        field = lone_surrogate_field(raw)
        if field is None:
            return None
        return InvalidRequest(f"invalid value for '{field}': a lone UTF-16 surrogate is not text", param=field)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes")


def replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that gives the messages already read first, then the connection's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def reject(exc: LLMOpsError, scope: Scope, receive: Receive, send: Send) -> None:
    """`exc` in the path's envelope (OpenAI; V2 under /v2), closing the connection."""
    status, body, headers = error_response_parts(exc, error_format(scope["path"]))
    await JSONResponse(body, status_code=status, headers={**headers, "Connection": "close"})(scope, receive, send)
