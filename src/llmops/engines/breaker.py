"""A circuit breaker: after `failures` consecutive failures it opens, and calls fail fast for `reset_s`;
then one trial call is let through (half-open): success closes it, failure opens it again. A trial whose
outcome never comes (its client went away, its deadline passed, it ended in an error that says nothing of the
upstream's health) is given back (`abandon`), so the next call can be the trial: a trial held forever kept
the circuit open for good, every call refused without the upstream ever being asked again."""

from __future__ import annotations

import time
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float) -> None:
        self.threshold, self.reset_s = failures, reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = 0  # the trial out (its number), 0 when none
        self._trials = 0

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def take(self) -> int | None:
        """None: refused (open, or the half-open trial is out); 0: let through (closed); else the number of
        the trial this call is, to `abandon` if it ends with neither `success` nor `failure`."""
        state = self.state
        if state == "closed":
            return 0
        if state == "half_open" and not self._trial:
            self._trials += 1
            self._trial = self._trials
            return self._trial
        return None

    def abandon(self, trial: int) -> None:
        """The trial `trial` ended without a verdict: the next call may be the trial (no-op once reported, or
        when it is not the trial out)."""
        if trial and self._trial == trial:
            self._trial = 0

    def retry_after(self) -> int:
        if self.opened_at is None:
            return 1
        return max(1, round(self.reset_s - (time.monotonic() - self.opened_at)))

    def success(self) -> None:
        self.failures, self.opened_at, self._trial = 0, None, 0

    def failure(self) -> None:
        self.failures += 1
        self._trial = 0
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = time.monotonic()
