"""Rate limiting with GCRA (the generic cell rate algorithm): one timestamp per subject, no bursts beyond
the allowance, exact Retry-After. In memory for one process; a shared store for replicas comes with the
Redis backend."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    reset_s: float  # when the allowance is full again


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}  # subject -> theoretical arrival time

    def hit(self, subject: str, per_minute: int, now: float | None = None) -> Decision:
        """Count one request for `subject` against `per_minute` (bursts up to the whole minute's allowance)."""
        now = time.monotonic() if now is None else now
        interval = 60.0 / per_minute
        burst = 60.0  # allowance window: per_minute requests at once, then one every `interval`
        tat = max(self._tat.get(subject, now), now)
        allow_at = tat - burst + interval
        if now < allow_at:
            return Decision(False, per_minute, 0, allow_at - now, tat - now)
        self._tat[subject] = tat + interval
        remaining = int((burst - (tat + interval - now)) / interval)
        return Decision(True, per_minute, max(0, remaining), 0.0, tat + interval - now)
