"""Budget periods: UTC calendar day, ISO week (from Monday), month, or the key's whole life."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from llmops.stores.keys import BudgetPeriod

DAY_S = 86400  # a UTC day in unix time (which has no leap seconds)


def period_bounds(period: BudgetPeriod, now: float) -> tuple[float, float | None]:
    """(start, end) of the budget period containing `now`; end None: it never resets. Worked out once per
    period and UTC day (every keyed request with a budget asks)."""
    if period == "total":
        return 0.0, None
    return _bounds(period, int(now // DAY_S))


@lru_cache(maxsize=16)
def _bounds(period: BudgetPeriod, day_number: int) -> tuple[float, float]:
    """The bounds of the day, week or month holding the UTC day `day_number` (days since the epoch)."""
    day = datetime.fromtimestamp(day_number * DAY_S, UTC)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()
