"""The fast refusal path: an inference request that admission would certainly refuse (its model's queue is
full, the model is unknown, failed or loading) is answered here, 503 or 404 in the OpenAI envelope, before
FastAPI and pydantic see its body; when the body cannot change the answer, before it is even read. Draining
(drain.py) and rate limits (rate_limit.py) are refused earlier still, from the headers.

It sits twice in the stack (app.build_middleware): outside the body limit, which reads every body, where it
answers what needs no body (`with_body=False`), and inside it, where it reads the body the limit already
bounded and checked (`with_body=True`).

Under a burst most requests are refusals: each costs a few dictionary lookups here instead of a parse, the
guardrails and a budget check, so the event loop stays free for the admitted streams and for the next
caller. The decisions are the pipeline's (`pipeline.gate.EdgeGate`); the refusal is counted here, once, in
llmops_rejections_total, and the request never reaches the pipeline to be counted again."""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.errors import LLMOpsError, ModelNotFound, Overloaded, ShuttingDown
from llmops.http_edge import UNKNOWN_MODEL, api_key, log_fields, send_error
from llmops.observability.metrics import Metrics
from llmops.stores.keys import ApiKey

Kind = Literal["chat", "image"]
Cached = Literal["none", "exact", "semantic"]  # which caches may answer a path's requests
# path -> (the kind of model it needs, which caches may answer it)
GATED: dict[str, tuple[Kind, Cached]] = {
    "/v1/chat/completions": ("chat", "semantic"), "/v1/completions": ("chat", "exact"),
    "/v1/images/generations": ("image", "exact"), "/generate": ("image", "none"), "/v1/images/jobs": ("image", "none"),
}


ADMISSION_REFUSALS = (Overloaded, ShuttingDown)  # inference_requests_total counts these as outcomes


class EdgeRoute(NamedTuple):
    """What a refusal here leaves in `scope["route"]`: the route's template (its path: gated routes have no
    parameters), so the HTTP metrics label it as FastAPI's routing would have."""

    path: str


class Gate(Protocol):
    def needs_body(self, kind: Kind, cached: Cached, cache_control: str | None) -> bool: ...

    def refusal(self, kind: Kind, body: dict[str, Any] | None, cached: Cached, cache_control: str | None,
                key: ApiKey | None) -> tuple[str, LLMOpsError] | None: ...


class AdmissionGateMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate, metrics: Metrics, with_body: bool) -> None:
        self.app, self.gate, self.metrics, self.with_body = app, gate, metrics, with_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gated = GATED.get(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if gated is None:
            await self.app(scope, receive, send)
            return
        kind, cached = gated
        cache_control = _header(scope, b"cache-control")
        body: dict[str, Any] | None = None
        if self.gate.needs_body(kind, cached, cache_control) != self.with_body:  # the other placement's
            await self.app(scope, receive, send)
            return
        if self.with_body:
            try:
                raw = await _read_body(receive)
            except LLMOpsError as exc:  # the body limit, for a chunked body that grew past it
                await send_error(exc, scope, receive, send)
                return
            if raw is None:  # the client left before sending all of it: nobody to answer
                return
            receive = _replay(raw, receive)
            body = _parsed(raw)
            if body is None:  # not a JSON object: FastAPI answers the 400
                await self.app(scope, receive, send)
                return
        refused = self.gate.refusal(kind, body, cached, cache_control, api_key(scope))
        if refused is None:
            await self.app(scope, receive, send)
            return
        model, error = refused
        scope["route"] = EdgeRoute(scope["path"])
        known = not isinstance(error, ModelNotFound)  # a name the caller made up stays out of logs and labels
        if known:
            log_fields(scope)["model"] = model
        reason = self.metrics.reject(model if known else UNKNOWN_MODEL, error)
        if reason is not None and isinstance(error, ADMISSION_REFUSALS):  # as the pipeline's observer counts them
            self.metrics.requests.labels(model, reason).inc()
            log_fields(scope)["outcome"] = reason
        await send_error(error, scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((v for k, v in scope["headers"] if k == name), None)
    return value.decode("latin-1") if value is not None else None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the body limit outside bounds it); None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """The body read here, given to the app as one message; then the connection's own messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def _parsed(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep: FastAPI's path answers the 400
        return None
    return body if isinstance(body, dict) else None
