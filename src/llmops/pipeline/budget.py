"""Budget periods: UTC calendar day, ISO week (from Monday), month, or the key's whole life."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llmops.stores.keys import BudgetPeriod


def period_bounds(period: BudgetPeriod, now: float) -> tuple[float, float | None]:
    """(start, end) of the budget period containing `now`; end None: it never resets."""
    if period == "total":
        return 0.0, None
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()
