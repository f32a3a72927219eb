"""API-key authentication: `Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key`.
Missing or unknown → 401 in the OpenAI envelope. The key found is put in `scope["state"]["api_key"]` for
the handlers (allowed models, priority) and its id in the access log, never the secret. Once a key has
been created the server stays keyed: revoking every key does not reopen it.

/health and /ready are always open; /metrics is open unless `auth.metrics_require_key`; /admin is guarded
by the admin key in its own router. With no key in the store, the server is open (a loopback-only
embedded default: `llmops serve` refuses a non-loopback bind without keys)."""

from __future__ import annotations

import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from llmops.errors import LLMOpsError, Unauthorized, error_format, error_response_parts
from llmops.middleware.observe import log_fields
from llmops.stores.keys import KeyStore, verify

OPEN_PATHS = ("/health", "/ready", "/v2/health/live", "/v2/health/ready")


def presented_key(scope: Scope) -> str | None:
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


async def send_error(exc: LLMOpsError, scope: Scope, receive: Receive, send: Send,
                     headers: dict[str, str] | None = None) -> None:
    """Answer from middleware (outside FastAPI's handlers) in the path's envelope (OpenAI, or V2 under /v2)."""
    status, body, extra = error_response_parts(exc, error_format(scope.get("path", "")))
    await JSONResponse(body, status_code=status, headers={**extra, **(headers or {})})(scope, receive, send)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, store: KeyStore, metrics_require_key: bool) -> None:
        self.app, self.store = app, store
        self.open_paths = OPEN_PATHS if metrics_require_key else (*OPEN_PATHS, "/metrics")
        self._active: tuple[float, int] = (0.0, 0)

    async def _any_keys(self) -> bool:
        checked_at, count = self._active
        if time.monotonic() - checked_at > 1.0:  # keys created by the CLI show up within a second
            count = await self.store.key_count()
            self._active = (time.monotonic(), count)
        return count > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.open_paths or path.startswith("/admin"):
            await self.app(scope, receive, send)
            return
        try:
            keyed = await self._any_keys()
            secret = presented_key(scope)
            key = await verify(self.store, secret) if keyed and secret else None
        except LLMOpsError as exc:  # the store is unreachable and cannot vouch for the key
            await send_error(exc, scope, receive, send)
            return
        if not keyed:
            await self.app(scope, receive, send)
            return
        if key is None:
            message = "invalid API key" if secret else "missing API key: send Authorization: Bearer <key>"
            await send_error(Unauthorized(message), scope, receive, send, {"WWW-Authenticate": "Bearer"})
            return
        scope.setdefault("state", {})["api_key"] = key
        log_fields(scope)["key_id"] = key.id
        await self.app(scope, receive, send)
