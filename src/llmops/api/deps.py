"""Typed access to what the lifespan put on the app."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from llmops.scheduling.pool import ModelPool
from llmops.settings import Settings


def pool(request: Request) -> ModelPool:
    return cast(ModelPool, request.app.state.pool)


def settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)
