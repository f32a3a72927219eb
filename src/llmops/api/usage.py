"""GET /v1/usage: the caller's own key, its budget and what it spent, by day and model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from llmops.api import deps
from llmops.errors import InvalidRequest, StoreUnavailable, Unauthorized
from llmops.pipeline.budget import period_bounds
from llmops.stores.ledger import SpendRow, day_of

router = APIRouter()
SUMMED = ("requests", "prompt_tokens", "completion_tokens", "images", "cost_usd")


@dataclass(frozen=True)
class DayRange:
    first: str
    last: str

    @staticmethod
    def parse(start: str | None, end: str | None, default_days: int = 30) -> DayRange:
        today = datetime.now(UTC).date()
        first = _day(start, "start") or (today - timedelta(days=default_days - 1)).isoformat()
        last = _day(end, "end") or today.isoformat()
        if first > last:
            raise InvalidRequest("start must not be after end", param="start")
        return DayRange(first, last)


def _day(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise InvalidRequest(f"{param} must be a date, YYYY-MM-DD", param=param) from None


def group(rows: list[SpendRow], groups: tuple[str, ...]) -> list[dict[str, Any]]:
    """Sum the rows over every dimension not in `groups`."""
    names = {"key": "key_id", "model": "model", "day": "day"}
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        ident = tuple(getattr(row, names[g]) for g in groups)
        cell = out.setdefault(ident, {**{names[g]: v for g, v in zip(groups, ident, strict=True)},
                                      **dict.fromkeys(SUMMED, 0)})
        for name in SUMMED:
            cell[name] += getattr(row, name)
    for cell in out.values():
        cell["cost_usd"] = round(cell["cost_usd"], 8)
    return [out[k] for k in sorted(out)]


async def report_rows(request: Request, days: DayRange, key_id: str | None,
                      groups: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = await deps.state(request).ledger.report(days.first, days.last, key_id)
    return group(rows, groups)


@router.get("/v1/usage")
async def usage(request: Request, start: str | None = None, end: str | None = None) -> dict[str, Any]:
    key = deps.api_key(request)
    if key is None:
        raise Unauthorized("usage is reported per API key: call with the key whose usage you want")
    days = DayRange.parse(start, end)
    limits = key.limits
    budget: dict[str, Any] | None = None
    if limits.budget_usd is not None:
        period_start, period_end = period_bounds(limits.budget_period, time.time())
        spent = await deps.state(request).ledger.key_spend(key.id, period_start)
        if spent is None:  # the shared store is away (failing open): no figure rather than a wrong one
            raise StoreUnavailable("the spend store (Redis) is unreachable; the budget's spend is unknown for now")
        budget = {"limit_usd": limits.budget_usd, "period": limits.budget_period, "spent_usd": round(spent, 8),
                  "remaining_usd": round(max(0.0, limits.budget_usd - spent), 8),
                  "period_start": day_of(period_start) if period_start else None,
                  "resets_at": int(period_end) if period_end else None}
    return {"object": "usage", "key_id": key.id, "name": key.name, "start": days.first, "end": days.last,
            "budget": budget, "limits": limits.as_dict(),
            "data": await report_rows(request, days, key.id, ("day", "model"))}
