"""API-key authentication: `Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key`.
Missing or unknown → 401 in the OpenAI envelope. The key found is put in `scope["state"]["api_key"]` for
the handlers (allowed models, priority) and its id in the access log, never the secret. Once a key has
been created the server stays keyed: revoking every key does not reopen it.

/health and /ready are always open, and so are the console and docs pages and signed image URLs (the
handler checks the signature; which paths these are is http_edge's); /metrics is open unless
`auth.metrics_require_key`; /admin is guarded by the admin key in its own router. With no key in the
store, the server is open (a loopback-only embedded default: `llmops serve` refuses a non-loopback bind
without keys)."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import Scope

from llmops.errors import LLMOpsError, Unauthorized
from llmops.http_edge import (
    ADMIN_PREFIX,
    PROBES,
    UNKNOWN_MODEL,
    Refusal,
    browser_page,
    presented_key,
    set_api_key,
    signed_image_request,
)
from llmops.observability.metrics import Metrics
from llmops.stores.keys import KeyStore, verify
from llmops.tasks import SingleFlight

log = logging.getLogger("llmops.auth")


class Authenticator:
    def __init__(self, store: KeyStore, metrics_require_key: bool, metrics: Metrics, refresh_s: float = 1.0) -> None:
        self.store, self.metrics, self.refresh_s = store, metrics, refresh_s
        self.open_paths = PROBES if metrics_require_key else (*PROBES, "/metrics")
        self._active: tuple[float, int] = (0.0, 0)  # (time.monotonic() when counted, keys in the store)
        self._recount: SingleFlight[str, int] = SingleFlight()

    async def _any_keys(self) -> bool:
        """Whether the store holds any key, re-read every `refresh_s` (keys created by the CLI show up this
        soon). One re-read at a time, and requests do not wait for it: they go by the last count while it
        runs (else every request arriving meanwhile would send its own query, and all of them wait for a
        store busy writing spend). Only before the first count do requests wait, for that one query."""
        checked_at, count = self._active
        if time.monotonic() - checked_at >= self.refresh_s:
            recount = self._recount.start("keys", self._count)
            if not checked_at:
                return await asyncio.shield(recount) > 0
        return count > 0

    async def _count(self) -> int:
        """The store's key count; when a re-read fails, the last count (logged; the next request retries).
        The first count has no last one: its error goes to the requests waiting for it."""
        try:
            count = await self.store.key_count()
        except Exception as error:
            last_at, last = self._active
            if not last_at:
                raise
            log.warning("could not re-read whether any API key exists (%s: %s); going by the last count",
                        type(error).__name__, error)
            return last
        self._active = (time.monotonic(), count)
        return count

    def exempt(self, scope: Scope) -> bool:
        path: str = scope["path"]
        return (path in self.open_paths or path.startswith(ADMIN_PREFIX) or browser_page(path)
                or signed_image_request(path, scope.get("query_string", b"")))

    async def check(self, scope: Scope) -> Refusal | None:
        """None when the request may go on (its key, if any, put in the scope); else the 401 (or the
        store's error when it cannot vouch for a key)."""
        if self.exempt(scope):
            return None
        try:
            keyed = await self._any_keys()
            if not keyed:
                return None
            secret = presented_key(scope)
            key = await verify(self.store, secret) if secret else None
        except LLMOpsError as exc:  # the store is unreachable and cannot vouch for the key
            self.metrics.reject(UNKNOWN_MODEL, exc)
            return Refusal(exc)
        if key is None:
            message = "invalid API key" if secret else "missing API key: send Authorization: Bearer <key>"
            return Refusal(Unauthorized(message), {"WWW-Authenticate": "Bearer"})
        set_api_key(scope, key)
        return None
