"""A circuit breaker: after `failures` consecutive failures it opens, and calls fail fast for `reset_s`;
then one trial call is let through (half-open): success closes it, failure opens it again."""

from __future__ import annotations

import time
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float) -> None:
        self.threshold, self.reset_s = failures, reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_out = False

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_out:
            self._trial_out = True
            return True
        return False

    def retry_after(self) -> int:
        if self.opened_at is None:
            return 1
        return max(1, round(self.reset_s - (time.monotonic() - self.opened_at)))

    def success(self) -> None:
        self.failures, self.opened_at, self._trial_out = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self._trial_out = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = time.monotonic()
