"""What a router reads from the app and the HTTP request: the typed services, and the request's
`RequestContext` (built once per request, from the values the edge middleware left in the scope)."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from llmops import http_edge
from llmops.pipeline.accounting import Accountant
from llmops.pipeline.cache import ResponseCacher, opted_out
from llmops.pipeline.context import RequestContext, parse_priority, parse_timeout
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.routing import Router
from llmops.pipeline.services import Services
from llmops.pipeline.stages import authorize as authorize_model
from llmops.scheduling.pool import ModelPool
from llmops.settings import Settings
from llmops.stores import State
from llmops.stores.keys import ApiKey


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


_HINTS = (b"x-request-timeout", b"x-priority", b"cache-control")  # what context() reads, in one scan


def context(request: Request) -> RequestContext:
    """The request's context for the pipeline; 400 for a malformed X-Request-Timeout or X-Priority. A header
    sent twice counts once, the first, as Starlette's `Headers.get` reads it."""
    hints: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _HINTS and name not in hints:
            hints[name] = value.decode("latin-1")
    return RequestContext(
        key=api_key(request), request_id=str(request.scope.get("state", {}).get("request_id", "-")),
        timeout_s=parse_timeout(hints.get(b"x-request-timeout")), priority=parse_priority(hints.get(b"x-priority")),
        cache_opt_out=opted_out(hints.get(b"cache-control")), log=http_edge.log_fields(request.scope))


def pool(request: Request) -> ModelPool:
    return services(request).pool


def serving_ready(request: Request) -> bool:
    """Readiness (/ready, the Open Inference Protocol's too): every model loaded, start-up finished
    (lifecycle.warming, server.py) and not draining."""
    lifecycle = services(request).lifecycle
    return pool(request).ready() and not lifecycle.draining and not lifecycle.warming


def settings(request: Request) -> Settings:
    return services(request).settings


def accountant(request: Request) -> Accountant:
    return services(request).accountant


def router(request: Request) -> Router:
    return services(request).router


def cacher(request: Request) -> ResponseCacher:
    return services(request).cacher


def guardrails(request: Request) -> Guardrails:
    return services(request).guardrails


def state(request: Request) -> State:
    return services(request).state


def api_key(request: Request) -> ApiKey | None:
    return http_edge.api_key(request.scope)


def authorize(request: Request, model: str) -> None:
    """403 when the caller's key may not use `model` (anonymous callers reach here only on an open server)."""
    authorize_model(api_key(request), model)
