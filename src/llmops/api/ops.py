"""GET /health (liveness: the process answers) and GET /ready (readiness: every model loaded)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmops.api import deps
from llmops.errors import ModelNotReady

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = deps.services(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    pool = deps.pool(request)
    models: dict[str, Any] = {
        name: {"state": h.state, **h.detail} for name, h in pool.states().items()
    }
    draining = deps.services(request).lifecycle.draining
    is_ready = deps.serving_ready(request)
    status = "draining" if draining else ("ready" if is_ready else "not_ready")
    state = deps.state(request)
    body = {"status": status, "models": models,
            # informative only: with on_error open the server serves without Redis, and with closed it
            # answers 503 per request; restarting pods would not bring Redis back
            "state": {"backend": state.backend, "reachable": await state.reachable()}}
    headers = {} if is_ready else {"Retry-After": str(ModelNotReady.retry_after)}
    return JSONResponse(body, status_code=200 if is_ready else 503, headers=headers)
