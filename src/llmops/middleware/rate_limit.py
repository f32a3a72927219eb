"""Requests per minute, per API key (its `rpm`) or, without a key, per client IP (`anonymous_rpm`).

The client IP is the TCP peer. `X-Forwarded-For` is believed only when the peer is one of the configured
`trusted_proxies`, and then the address used is the rightmost one that is not itself a trusted proxy: the
guide's limiter took the header from anyone, so any client could rotate it to escape the limit.
Over the limit: 429 with Retry-After and X-RateLimit-Limit / -Remaining / -Reset."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.errors import RateLimited, error_response_parts
from llmops.observability.metrics import Metrics
from llmops.stores.ratelimit import Decision, MemoryRateLimiter

EXEMPT = ("/health", "/ready", "/metrics")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str:
    peer = (scope.get("client") or ("unknown", 0))[0]

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.strip())
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not trusted or not is_trusted(peer):
        return str(peer)
    raw: bytes = dict(scope["headers"]).get(b"x-forwarded-for", b"")
    hops = [h.strip() for h in raw.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return str(peer)


def _headers(d: Decision) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(d.limit), "X-RateLimit-Remaining": str(d.remaining),
            "X-RateLimit-Reset": str(math.ceil(d.reset_s))}


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, anonymous_rpm: int | None, trusted_proxies: Sequence[str],
                 metrics: Metrics) -> None:
        self.app, self.anonymous_rpm, self.metrics = app, anonymous_rpm, metrics
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
        self.limiter = MemoryRateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in EXEMPT or path.startswith("/admin"):
            await self.app(scope, receive, send)
            return
        key = scope.get("state", {}).get("api_key")
        subject, rpm = (f"key:{key.id}", key.rpm) if key is not None else (
            f"ip:{client_ip(scope, self.trusted)}", self.anonymous_rpm)
        if rpm is None:
            await self.app(scope, receive, send)
            return
        decision = self.limiter.hit(subject, rpm)
        if not decision.allowed:
            self.metrics.rejections.labels("-", "rate_limit").inc()
            error = RateLimited(f"rate limit of {rpm} requests/min exceeded", retry_after=math.ceil(
                decision.retry_after_s))
            status, body, headers = error_response_parts(error)
            await JSONResponse(body, status_code=status, headers={**headers, **_headers(decision)})(
                scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in _headers(decision).items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
