"""The HTTP edge as one ASGI middleware: every request passes its concerns in one coroutine, in this
order, each refusal answered in the path's error envelope:

1. request id    every answer, errors included, carries X-Request-Id (request_id.py)
2. observe       HTTP metrics, the access-log line, the root span; a 500 for what escapes (observe.py)
3. auth          API key → principal; 401 before anything else is spent on the request (auth.py)
4. rate limit    requests/min and in flight per key, requests/min per client IP without one: 429 (rate_limit.py)
5. drain         requests in flight counted; 503 for new ones once draining (drain.py)
6. gate, early   503/404 for what admission would certainly refuse, when the body cannot change the answer,
                 before it is read (admission_gate.py)
7. body limit    431 for too many headers, 413 for a body over the limit (declared or read), 400 for a lone
                 surrogate anywhere in it (body_limit.py)
8. gate, body    the same refusals decided from the body's model name, parsed once
9. the route     a direct route gets the body already read and parsed (api/direct.py); every other
                 request goes on to FastAPI with its body replayed

Why one middleware and not a stack of them: each ASGI layer is a coroutine call and a `send` wrapper per
message, and FastAPI's routing and dependency machinery cost as much again; on a small machine that was
most of a request's CPU (issue 14's profile: the eight middlewares and routing were ~50 % of the gateway's
time per request). Here a request costs one coroutine, one `send` wrapper (`observe.Responder`), one
scan of its headers per concern and one JSON parse."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from llmops.http_edge import UNPARSED, Refusal, parse_body, send_error
from llmops.middleware.admission_gate import GATED, AdmissionGate
from llmops.middleware.auth import Authenticator
from llmops.middleware.body_limit import BodyLimit, reject, replay
from llmops.middleware.drain import Drain
from llmops.middleware.observe import CLIENT_LEFT, Observer, Responder
from llmops.middleware.rate_limit import RateLimiter
from llmops.middleware.request_id import assign_request_id


class DirectRoute(Protocol):
    """A route the edge calls itself, with the body it read (`raw`) and parsed (`parsed`, or UNPARSED)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send, raw: bytes, parsed: Any) -> None: ...


class Edge:
    def __init__(self, app: ASGIApp, *, observer: Observer, auth: Authenticator, limiter: RateLimiter,
                 drain: Drain, gate: AdmissionGate, body_limit: BodyLimit,
                 direct: Mapping[str, DirectRoute]) -> None:
        self.app, self.observer, self.auth, self.limiter = app, observer, auth, limiter
        self.drain, self.gate, self.body_limit, self.direct = drain, gate, body_limit, direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        out = Responder(send, [(b"x-request-id", assign_request_id(scope).encode())])
        await self.observer.observe(scope, receive, out, self._admit)

    async def _admit(self, scope: Scope, receive: Receive, out: Responder) -> None:
        """Auth, rate limit and drain, then the request."""
        refused = await self.auth.check(scope)
        if refused is not None:
            await send_error(refused.error, scope, receive, out, refused.headers)
            return
        admission = self.limiter.unlimited(scope) or await self.limiter.limited(scope)
        if isinstance(admission, Refusal):
            await send_error(admission.error, scope, receive, out, admission.headers)
            return
        out.headers.extend(admission.headers)
        self.limiter.report_tokens(admission, out.headers)
        try:
            if not self.drain.counted(scope["path"]):
                await self._dispatch(scope, receive, out)
                return
            draining = self.drain.refusal(scope["method"])
            if draining is not None:
                await send_error(draining, scope, receive, out)
                return
            self.drain.lifecycle.enter()
            try:
                await self._dispatch(scope, receive, out)
            except asyncio.CancelledError:
                cut = self.drain.cut_off(out.sent == "none")
                if cut is None:
                    raise
                await send_error(cut, scope, receive, out)
            finally:
                self.drain.lifecycle.leave()
        finally:
            self.limiter.release(admission)

    async def _dispatch(self, scope: Scope, receive: Receive, out: Responder) -> None:
        """The gate, the body limit, then the route."""
        post = scope["method"] == "POST"
        path: str = scope["path"]
        gated = GATED.get(path) if post else None
        body_decides = gated is not None and self.gate.needs_body(scope, gated)
        if gated is not None and not body_decides:
            error = self.gate.refusal(scope, gated, None)
            if error is not None:
                await send_error(error, scope, receive, out)
                return
        error = self.body_limit.check_head(scope)
        if error is not None:
            await reject(error, scope, receive, out)
            return
        if not self.body_limit.has_body(scope):
            await self.app(scope, receive, out)
            return
        messages = await self.body_limit.read(receive)
        if messages is None:
            await reject(self.body_limit.too_large(), scope, receive, out)
            return
        if messages[-1]["type"] != "http.request":  # the client left mid-body: nobody to answer
            out.status = CLIENT_LEFT
            return
        # a body read in one message (nearly every one) is its bytes as they are: no generator, no copy
        raw = messages[0].get("body", b"") if len(messages) == 1 else b"".join(m.get("body", b"") for m in messages)
        error = self.body_limit.check_body(raw)
        if error is not None:
            await reject(error, scope, receive, out)
            return
        route = self.direct.get(path) if post else None
        parsed = parse_body(raw) if body_decides or route is not None else UNPARSED
        if gated is not None and body_decides and isinstance(parsed, dict):
            error = self.gate.refusal(scope, gated, parsed)
            if error is not None:
                await send_error(error, scope, receive, out)
                return
        if route is not None:
            await route(scope, receive, out, raw, parsed)
            return
        await self.app(scope, replay(messages, receive), out)
