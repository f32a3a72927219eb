"""The admin API, guarded by the admin key (`auth.admin_key`; `Authorization: Bearer` or `X-Admin-Key`),
never open: without an admin key configured it answers 403. Keys: create (the secret is in this response
only), list, show, revoke."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from llmops.api import deps
from llmops.errors import PermissionDenied
from llmops.middleware.auth import presented_key
from llmops.stores.keys import KeyStore, new_key

router = APIRouter(prefix="/admin")


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(default_factory=list, description="models this key may use; empty: all")
    priority: Literal["interactive", "batch"] = "interactive"
    rpm: int | None = Field(None, ge=1, description="requests per minute; unset: no limit")


def _guard(request: Request) -> KeyStore:
    admin = deps.settings(request).auth.admin_key
    if admin is None:
        raise PermissionDenied("the admin API is disabled: set auth.admin_key (LLMOPS_AUTH__ADMIN_KEY)")
    given = request.headers.get("x-admin-key") or presented_key(request.scope) or ""
    if not hmac.compare_digest(given.encode(), admin.get_secret_value().encode()):
        raise PermissionDenied("a valid admin key is required")
    store: KeyStore = request.app.state.keys
    return store


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> JSONResponse:
    store = _guard(request)
    key, secret = new_key(body.name, tuple(body.models), body.priority, body.rpm)
    await asyncio.to_thread(store.add, key)
    return JSONResponse({**key.public(), "secret": secret}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    store = _guard(request)
    return {"data": [k.public() for k in await asyncio.to_thread(store.all)]}


@router.get("/keys/{key_id}")
async def show_key(key_id: str, request: Request) -> dict[str, Any]:
    return (await asyncio.to_thread(_guard(request).get, key_id)).public()


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    return (await asyncio.to_thread(_guard(request).revoke, key_id)).public()
