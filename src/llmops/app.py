"""The app factory: middleware order, routers, error handlers and the lifespan that loads the engines.

Nothing happens at import time; `create_app(settings)` builds everything from the settings it is given.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from llmops import __version__
from llmops.api import (
    admin,
    chat,
    classifications,
    classifying,
    completions,
    embeddings,
    images,
    inference_v2,
    models,
    ops,
    unsupported,
    usage,
)
from llmops.api.console import cors, install_console
from llmops.api.direct import direct_routes, invalid_request, llmops_error
from llmops.api.openapi import install_error_schema
from llmops.errors import LLMOpsError, error_format, http_status_error, internal_error
from llmops.http_edge import error_response
from llmops.lifecycle import Lifecycle
from llmops.middleware.admission_gate import AdmissionGate
from llmops.middleware.auth import Authenticator
from llmops.middleware.body_limit import BodyLimit
from llmops.middleware.drain import Drain
from llmops.middleware.edge import Edge
from llmops.middleware.observe import Observer
from llmops.middleware.rate_limit import RateLimiter
from llmops.observability.gpu import GpuProbe
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer, build_tracer
from llmops.pipeline.accounting import Accountant
from llmops.pipeline.cache import ResponseCacher
from llmops.pipeline.gate import EdgeGate
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.routing import Router
from llmops.pipeline.semantic_cache import build_semantic_cache
from llmops.pipeline.services import Services
from llmops.pipeline.signed_urls import UrlSigner
from llmops.prompts.registry import PromptRegistry
from llmops.scheduling.image_jobs import ClassifyJobs, ImageJobs
from llmops.scheduling.pool import ModelPool
from llmops.settings import Settings
from llmops.stores import State, build_state

log = logging.getLogger("llmops.app")


def create_app(settings: Settings, tracer: Tracer | None = None) -> FastAPI:
    """The app for `settings`. `tracer` replaces the one the settings describe (tests use an in-memory one)."""
    pool = ModelPool(settings)  # validates every engine's options now: a bad config fails at start
    metrics = Metrics()
    image_jobs = ImageJobs(settings.images.job_ttl_s, max_kept=settings.images.max_kept_jobs,
                           on_batch=lambda model, n: metrics.batch_size.labels(model).observe(n))
    classify_jobs = ClassifyJobs(0.0, on_batch=lambda model, n: metrics.batch_size.labels(model).observe(n))
    lifecycle = Lifecycle()
    state = build_state(settings.state, on_error=lambda op: metrics.store_errors.labels(op).inc(),
                        cache_entries=settings.cache.max_entries, key_cache_s=settings.auth.key_refresh_s)
    accountant = Accountant(state, settings.spend, metrics)
    guardrails = Guardrails(settings.guardrails, metrics)  # loads classifiers: a bad one fails at start
    prompts = PromptRegistry(settings.prompts.dir)  # refuses a published prompt that changed
    gpu = GpuProbe()
    metrics.watch(pool.loads, gpu.utilization)
    obs = settings.observability
    tracer = tracer or build_tracer(obs.otlp_endpoint, obs.service_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start_loading()
        await services.url_signer.load()
        try:
            yield
        finally:
            await image_jobs.close()
            await classify_jobs.close()
            classifying.close_decode_threads(app)  # the image-decoding threads, if a request made them
            services.background.cancel()  # shadow requests: nobody waits for their answers
            await pool.close()
            if services.semantic_cache is not None:
                await services.semantic_cache.close()
            await state.close()
            tracer.shutdown()

    app = LLMOpsApp(title="llmops", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                    openapi_url="/openapi.json" if settings.web.docs else None,  # docs: api/console.py, offline
                    **_without_native_telemetry())
    services = Services(settings=settings, pool=pool, metrics=metrics, tracer=tracer, state=state,
                        accountant=accountant, guardrails=guardrails, prompts=prompts, router=Router(settings.routes),
                        cacher=ResponseCacher(state.cache, settings.cache, metrics), image_jobs=image_jobs,
                        classify_jobs=classify_jobs,
                        url_signer=UrlSigner(settings.images, state.cache if state.backend == "redis" else None),
                        lifecycle=lifecycle, started_at=int(time.time()),
                        semantic_cache=build_semantic_cache(
                            settings, pool, on_error=lambda op: metrics.store_errors.labels(op).inc()))
    app.state.services = services
    routers = (chat.router, completions.router, images.router, models.router, usage.router, ops.router,
               admin.router, embeddings.router, classifications.router, inference_v2.router)
    for router in routers:
        app.include_router(router)  # no prefix, no dependencies: each APIRoute is served as it is defined
    install_console(app, settings.web)
    app.include_router(unsupported.router)  # last: any other /v1/ route is named as unsupported
    install_error_handlers(app, metrics)
    install_error_schema(app)
    install_slash_redirects(app)
    edge = build_edge(app.serve_routes, settings, lifecycle, metrics, tracer, state, EdgeGate(services),
                      [route for router in routers for route in router.routes])
    app.entry = cors(edge, settings.web)  # outermost: preflights never reach auth
    return app


class LLMOpsApp(FastAPI):
    """FastAPI with the edge in front (`entry`: CORS when configured, then middleware/edge.py). Every HTTP
    request enters there; what the edge does not answer or serve itself goes on to FastAPI's own stack
    (`serve_routes`: its error handlers, routing, the routes). Lifespan events go straight to FastAPI."""

    entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.entry is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.entry(scope, receive, send)

    async def serve_routes(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def _without_native_telemetry() -> dict[str, Any]:
    """Newer FastAPI instruments requests with OpenTelemetry itself, looking for a configured provider on
    every request; llmops makes its own spans (observability/tracing.py), so FastAPI's are turned off."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


async def drain(app: FastAPI) -> bool:
    """Begin draining (SIGTERM): refuse new work, let admitted work finish, then give the clients of image
    jobs that finished meanwhile up to `result_pickup_s` to read them. True when all finished."""
    services: Services = app.state.services
    services.pool.close_admission()
    since, started, shutdown = time.time(), time.monotonic(), services.settings.shutdown
    if not await services.lifecycle.drain(shutdown.drain_timeout_s):
        return False
    if unread := services.image_jobs.unread(since):  # within the drain's time: the pod's grace period holds
        pickup = min(shutdown.result_pickup_s, max(0.0, shutdown.drain_timeout_s - (time.monotonic() - started)))
        log.info("waiting up to %.1f s for %d image job result(s) to be read", pickup, unread)
        if left := await services.image_jobs.wait_pickup(since, pickup):
            log.warning("%d image job result(s) never read: they are lost with this process", left)
    return True


# The POST routes the edge serves itself (api/direct.py): the inference requests, where FastAPI's routing and
# dependency solving were a third of a request's CPU. Every other route goes through FastAPI.
DIRECT_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/images/generations",
                "/v1/images/jobs")


def build_edge(app: ASGIApp, settings: Settings, lifecycle: Lifecycle, metrics: Metrics,
               tracer: Tracer, state: State, gate: EdgeGate, routes: list[BaseRoute]) -> Edge:
    """The edge in front of `app` (middleware/edge.py: its docstring gives the order of its concerns)."""
    limits = settings.rate_limits
    return Edge(
        app, observer=Observer(metrics, tracer),
        auth=Authenticator.from_settings(state.keys, settings, metrics),
        limiter=RateLimiter(state.counters, limits.anonymous_rpm, limits.trusted_proxies, metrics),
        drain=Drain(lifecycle, metrics), gate=AdmissionGate(gate, metrics),
        body_limit=BodyLimit(settings.limits.max_body_bytes, settings.http.max_headers),
        direct=direct_routes(routes, DIRECT_PATHS, metrics))


def install_slash_redirects(app: FastAPI) -> None:
    """Starlette's trailing-slash redirect (`/health/` to `/health`, 307), with a Location of the path alone.
    Starlette's own writes an absolute URL whose host is the request's Host header: `Host: evil.example`
    made this server redirect to evil.example, which a cache or proxy that does not key on Host would then
    serve to everyone. A path-only Location stays on whatever origin the client asked."""
    router = app.router
    router.redirect_slashes = False
    not_found = router.default

    async def redirect_or_not_found(scope: Scope, receive: Receive, send: Send) -> None:
        location = slash_location(router.routes, scope)
        if location is None:
            await not_found(scope, receive, send)
            return
        await RedirectResponse(location, status_code=307)(scope, receive, send)

    router.default = redirect_or_not_found


def slash_location(routes: list[BaseRoute], scope: Scope) -> str | None:
    """The path (and query) with its trailing slash added or taken away, when a route serves that and not
    this one; None otherwise. Never `//...`: a Location starting so names a host."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    route_path = path[len(root):] if root and path.startswith(root) else path
    if scope["type"] != "http" or route_path in ("", "/"):
        return None
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    moved = {**scope, "path": other}
    if not other.startswith("/") or other.startswith("//") or \
            all(route.matches(moved)[0] is Match.NONE for route in routes):
        return None
    query: bytes = scope.get("query_string", b"")
    return quote(other) + ("?" + query.decode("latin-1") if query else "")


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error becomes the OpenAI envelope, or under /v2 the Open Inference Protocol's
    (http_edge.error_response); every refusal not counted where it happened is counted here, so each 429 and
    503 is in llmops_rejections_total once."""
    async def on_llmops(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LLMOpsError)
        return llmops_error(exc, request.scope, metrics)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(invalid_request(exc.errors()), fmt=error_format(request.url.path))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(http_status_error(exc.status_code, str(exc.detail)), fmt=error_format(request.url.path))

    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(internal_error(exc), fmt=error_format(request.url.path))

    app.add_exception_handler(LLMOpsError, on_llmops)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_other)
