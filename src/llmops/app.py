"""The app factory: middleware order, routers, error handlers and the lifespan that loads the engines.

Nothing happens at import time; `create_app(settings)` builds everything from the settings it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmops import __version__
from llmops.api import (
    admin,
    chat,
    classifications,
    completions,
    embeddings,
    images,
    inference_v2,
    models,
    ops,
    unsupported,
    usage,
)
from llmops.api.console import install_console, install_cors
from llmops.api.openapi import install_error_schema
from llmops.errors import InvalidRequest, LLMOpsError, error_format, http_status_error, internal_error
from llmops.http_edge import UNKNOWN_MODEL, error_response, log_fields
from llmops.lifecycle import Lifecycle
from llmops.middleware.admission_gate import AdmissionGateMiddleware
from llmops.middleware.auth import AuthMiddleware
from llmops.middleware.body_limit import BodyLimitMiddleware
from llmops.middleware.drain import DrainMiddleware
from llmops.middleware.observe import ObserveMiddleware
from llmops.middleware.rate_limit import RateLimitMiddleware
from llmops.middleware.request_id import RequestIdMiddleware
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
                        cache_entries=settings.cache.max_entries)
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
            services.background.cancel()  # shadow requests: nobody waits for their answers
            await pool.close()
            if services.semantic_cache is not None:
                await services.semantic_cache.close()
            await accountant.close()
            await state.close()
            tracer.shutdown()

    app = FastAPI(title="llmops", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.web.docs else None)  # docs: api/console.py, offline
    services = Services(settings=settings, pool=pool, metrics=metrics, tracer=tracer, state=state,
                        accountant=accountant, guardrails=guardrails, prompts=prompts, router=Router(settings.routes),
                        cacher=ResponseCacher(state.cache, settings.cache, metrics), image_jobs=image_jobs,
                        classify_jobs=classify_jobs,
                        url_signer=UrlSigner(settings.images, state.cache if state.backend == "redis" else None),
                        lifecycle=lifecycle, started_at=int(time.time()),
                        semantic_cache=build_semantic_cache(settings, pool))
    app.state.services = services
    for router in (chat.router, completions.router, images.router, models.router, usage.router, ops.router,
                   admin.router, embeddings.router, classifications.router, inference_v2.router):
        app.include_router(router)
    install_console(app, settings.web)
    app.include_router(unsupported.router)  # last: any other /v1/ route is named as unsupported
    install_error_handlers(app, metrics)
    install_error_schema(app)
    build_middleware(app, settings, lifecycle, metrics, tracer, state, EdgeGate(services))
    install_cors(app, settings.web)  # outermost: preflights never reach auth
    return app


async def drain(app: FastAPI) -> bool:
    """Begin draining (SIGTERM): refuse new work, let admitted work finish. True when all finished."""
    services: Services = app.state.services
    services.pool.close_admission()
    return await services.lifecycle.drain(services.settings.shutdown.drain_timeout_s)


def build_middleware(app: FastAPI, settings: Settings, lifecycle: Lifecycle, metrics: Metrics,
                     tracer: Tracer, state: State, gate: EdgeGate) -> None:
    """Middleware, outermost first (Starlette wraps in reverse order of `add_middleware`):

    1. request_id  - every response, errors included, carries X-Request-Id
    2. observe     - HTTP metrics, the access-log line, the root span: sees every response, 401/413/503 included
    3. auth        - API key -> principal, 401 before anything else is spent on the request
    4. rate_limit  - requests/min and in flight per key (requests/min per client IP without a key,
                     X-Forwarded-For from trusted proxies only): 429
    5. drain       - counts requests in flight; 503 for new ones once draining
    6. admission_gate (no body) - 503 for a full queue when the body cannot change the answer (one model
                     of the kind, no alias, no cache): before the body is read
    7. body_limit  - oversized bodies get 413 before anything parses them
    8. admission_gate (body) - 503/404 for a request admission would certainly refuse (full queue, unknown
                     model), from the body's model name (json.loads), before FastAPI parses it
    """
    app.add_middleware(AdmissionGateMiddleware, gate=gate, metrics=metrics, with_body=True)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes,
                       max_headers=settings.http.max_headers)
    app.add_middleware(AdmissionGateMiddleware, gate=gate, metrics=metrics, with_body=False)
    app.add_middleware(DrainMiddleware, lifecycle=lifecycle, metrics=metrics)
    limits = settings.rate_limits
    app.add_middleware(RateLimitMiddleware, counters=state.counters, anonymous_rpm=limits.anonymous_rpm,
                       trusted_proxies=limits.trusted_proxies, metrics=metrics)
    app.add_middleware(AuthMiddleware, store=state.keys, metrics_require_key=settings.auth.metrics_require_key,
                       metrics=metrics, refresh_s=settings.auth.key_refresh_s)
    app.add_middleware(ObserveMiddleware, metrics=metrics, tracer=tracer)
    app.add_middleware(RequestIdMiddleware)




def _validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors: list[Any] = list(exc.errors())
    if not errors:
        return InvalidRequest("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"request body is not valid JSON: {first.get('msg', '')}")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return InvalidRequest(f"missing required parameter '{param}'", param=param)
    return InvalidRequest(f"invalid value for '{param}': {first.get('msg', 'invalid')}", param=param)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error becomes the OpenAI envelope, or under /v2 the Open Inference Protocol's
    (http_edge.error_response); every refusal not counted where it happened is counted here, so each 429 and
    503 is in llmops_rejections_total once."""
    async def on_llmops(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LLMOpsError)
        metrics.reject(str(log_fields(request.scope).get("model", UNKNOWN_MODEL)), exc)
        return error_response(exc, fmt=error_format(request.url.path))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(_validation_error(exc), fmt=error_format(request.url.path))

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
