"""API-key authentication: `Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key`.
Missing or unknown → 401 in the OpenAI envelope. The key found is put in `scope["state"]["api_key"]` for
the handlers (allowed models, priority) and its id in the access log, never the secret. Once a key has
been created the server stays keyed: revoking every key does not reopen it, and once this process has
seen a key exist it stays keyed for its lifetime whatever the store says later (a Redis flushed, or
restarted without persistence, has no keys and would otherwise open the server to anyone). A server bound
beyond loopback (`Settings.exposed`) is never open: with no key in the store it refuses every request.

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
    def __init__(self, store: KeyStore, metrics_require_key: bool, metrics: Metrics, refresh_s: float = 1.0,
                 require_keys: bool = False) -> None:
        self.store, self.metrics, self.refresh_s = store, metrics, refresh_s
        self.open_paths = PROBES if metrics_require_key else (*PROBES, "/metrics")
        self._keyed = require_keys  # once true, for the process's lifetime
        self._counted_at = 0.0  # time.monotonic() of the last count of the keys in the store (0: none yet)
        self._recount: SingleFlight[str, int] = SingleFlight()

    async def _any_keys(self) -> bool:
        """Whether requests need a key. Once they do, they always will, and the store is not asked again.
        Until then its key count is re-read every `refresh_s` (keys created by the CLI, another replica or
        the admin API show up this soon), one re-read at a time. Requests go by the last count while a
        re-read runs (else, under load, every one of them would wait for a store busy writing spend), but
        never by a count older than twice `refresh_s`: the first request after a quiet spell, and every
        request arriving with it, waits for the re-read, so a key created while the server was idle is
        required from the next request on."""
        if self._keyed:
            return True
        age = time.monotonic() - self._counted_at
        if age >= self.refresh_s:
            recount = self._recount.start("keys", self._count)
            if age >= 2 * self.refresh_s:
                await asyncio.shield(recount)
        return self._keyed

    async def _count(self) -> int:
        """The store's key count (any at all makes the process keyed for good); when a re-read fails, the
        last count, none (logged; tried again `refresh_s` later). The first count has no last one: its
        error goes to the requests waiting for it."""
        try:
            count = await self.store.key_count()
        except Exception as error:
            if not self._counted_at:
                raise
            log.warning("could not re-read whether any API key exists (%s: %s); going by the last count",
                        type(error).__name__, error)
            self._counted_at = time.monotonic()  # tried again `refresh_s` from now, not by every request
            return 0
        self._counted_at = time.monotonic()
        if count > 0:
            self._keyed = True
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
