"""Typed access to what the lifespan put on the app."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from llmops.errors import PermissionDenied
from llmops.pipeline.accounting import Accountant
from llmops.pipeline.cache import ResponseCacher
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.routing import Router
from llmops.prompts.registry import PromptRegistry
from llmops.scheduling.pool import ModelPool
from llmops.settings import Settings
from llmops.stores import State
from llmops.stores.keys import ApiKey


def pool(request: Request) -> ModelPool:
    return cast(ModelPool, request.app.state.pool)


def settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def accountant(request: Request) -> Accountant:
    return cast(Accountant, request.app.state.accountant)


def router(request: Request) -> Router:
    return cast(Router, request.app.state.router)


def prompts(request: Request) -> PromptRegistry:
    return cast(PromptRegistry, request.app.state.prompts)


def cacher(request: Request) -> ResponseCacher:
    return cast(ResponseCacher, request.app.state.cacher)


def guardrails(request: Request) -> Guardrails:
    return cast(Guardrails, request.app.state.guardrails)


def state(request: Request) -> State:
    return cast(State, request.app.state.state)


def api_key(request: Request) -> ApiKey | None:
    key = request.scope.get("state", {}).get("api_key")
    return key if isinstance(key, ApiKey) else None


def authorize(request: Request, model: str) -> None:
    """403 when the caller's key may not use `model` (anonymous callers reach here only on an open server)."""
    key = api_key(request)
    if key is not None and not key.allows(model):
        raise PermissionDenied(f"this API key may not use model {model!r}", param="model", code="model_not_allowed")
