"""The admin API, guarded by the admin key (`auth.admin_key`; `Authorization: Bearer` or `X-Admin-Key`),
never open: without an admin key configured it answers 403. Keys: create (the secret is in this response
only), list, show, revoke. Spend: reports by key, model and day.

The edge (middleware/auth.py) sees a wrong admin key first: it counts it against the client's address and
refuses it, and refuses an address locked out for its failures with 429 before its key is looked at. The
guard here checks the key again, so the router is never open whatever is in front of it."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from llmops.api import deps
from llmops.api.usage import DayRange, report_rows
from llmops.errors import InvalidRequest, PermissionDenied
from llmops.http_edge import presented_admin_key
from llmops.protocol.wire import WireModel
from llmops.settings import admin_key_matches
from llmops.stores.keys import KeyLimits, KeyStore, new_key, unserved

router = APIRouter(prefix="/admin")
GROUPS = ("key", "model", "day")


class KeyCreate(WireModel):
    """A new key's fields and their bounds; `llmops keys create` applies the same ones (tests/unit/test_key_bounds
    checks that the two agree). Numbers must be finite: 1e309 in JSON reads as infinity. JSON types are strict, as
    in every request body: `"rpm": "10"` is a 400. A field it does not declare is a 400 naming it (`extra`
    "forbid"): `{"secret": ...}` or `{"id": ...}` silently ignored would let an admin believe they had chosen
    them. `models` must name what this server serves (`stores.keys.unserved`), checked by the handler, which knows
    that."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(default_factory=list, description="models this key may use; empty: all")
    priority: Literal["interactive", "batch"] = "interactive"
    rpm: int | None = Field(None, ge=1, description="requests per minute; unset: no limit")
    tpm: int | None = Field(None, ge=1, description="tokens per minute; unset: no limit")
    max_concurrent: int | None = Field(None, ge=1, description="requests in flight at once; unset: no limit")
    budget_usd: float | None = Field(None, ge=0, description="spend allowed per budget period; unset: none")
    budget_period: Literal["day", "week", "month", "total"] = "month"

    def limits(self) -> KeyLimits:
        return KeyLimits(self.rpm, self.tpm, self.max_concurrent, self.budget_usd, self.budget_period)


def _guard(request: Request) -> KeyStore:
    admin = deps.settings(request).auth.admin_key
    if admin is None or not admin.get_secret_value():  # settings refuse an empty key; never trust one here
        raise PermissionDenied("the admin API is disabled: set auth.admin_key (LLMOPS_AUTH__ADMIN_KEY)")
    if not admin_key_matches(admin, presented_admin_key(request.scope)):
        raise PermissionDenied("a valid admin key is required")
    store: KeyStore = deps.state(request).keys
    return store


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> JSONResponse:
    store = _guard(request)
    unknown = unserved(body.models, deps.pool(request).names() + deps.router(request).names())
    if unknown:
        raise InvalidRequest(f"this server serves no model named {', '.join(map(repr, unknown))}: models must "
                             "name served models or routes (an empty list, the default, allows every model)",
                             param="models")
    key, secret = new_key(body.name, tuple(dict.fromkeys(body.models)), body.priority, body.limits())
    await store.add(key)
    return JSONResponse({**key.public(), "secret": secret}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    return {"data": [k.public() for k in await _guard(request).all()]}


@router.get("/keys/{key_id}")
async def show_key(key_id: str, request: Request) -> dict[str, Any]:
    return (await _guard(request).get(key_id)).public()


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    return (await _guard(request).revoke(key_id)).public()


@router.get("/usage")
async def spend_report(request: Request, group_by: str = Query("key,model,day"), start: str | None = None,
                       end: str | None = None, key_id: str | None = None) -> dict[str, Any]:
    """Spend and usage summed over the chosen dimensions (`group_by`: any of key, model, day)."""
    _guard(request)
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InvalidRequest(f"group_by accepts key, model and day; not {', '.join(unknown)}", param="group_by")
    days = DayRange.parse(start, end)
    return {"object": "list", "start": days.first, "end": days.last, "group_by": list(groups),
            "data": await report_rows(request, days, key_id, groups)}
