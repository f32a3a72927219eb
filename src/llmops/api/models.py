"""GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmops.api import deps
from llmops.errors import ModelNotFound
from llmops.protocol.models import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    created = deps.services(request).started_at
    key = deps.api_key(request)
    every = deps.pool(request).names() + deps.router(request).names()  # models, then routed aliases
    names = [n for n in every if key is None or key.allows(n)]
    return ModelList(data=[ModelCard(id=name, created=created) for name in names])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    key = deps.api_key(request)
    known = model_id in deps.pool(request).names() + deps.router(request).names()
    if not known or (key is not None and not key.allows(model_id)):  # as the list: a key sees only its models
        raise ModelNotFound(f"model {model_id!r} does not exist", param="model")
    return ModelCard(id=model_id, created=deps.services(request).started_at)
