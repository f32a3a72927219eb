"""Spend totals read from the store at most once per `refresh_s` each (a key's spend in its budget period,
the last hour's for the spend circuit breaker), with this process's own spend added as it settles.

A total that is due is re-read by one query, whichever request finds it due first (`tasks.SingleFlight`);
requests that come meanwhile go by the last total and do not wait. Only a total not read yet (a key's first
request, a new budget period) is waited for, by every request that needs it, on that one query. Before,
every request that found a busy key's total due sent its own query, each one waited for the spend writer
and for the queries before it behind the store's lock: under 16-way load on one key, requests stalled for
160-600 ms once a second.

What this process spends while a re-read is in flight is added to the re-read's result. Spend written to
the store between the query's start and its read may so be counted twice until the next re-read: a budget
errs towards refusing, never towards overshooting. A failed re-read keeps the last total (logged); it is
tried again `refresh_s` later."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llmops.tasks import SingleFlight

log = logging.getLogger("llmops.accounting")


@dataclass
class _Total:
    period: float  # where the total starts (a budget period's start; 0 for a rolling window)
    usd: float
    read_at: float  # time.monotonic() when its query started


class SpendTotals:
    def __init__(self, what: str, refresh_s: float) -> None:
        self.what, self.refresh_s = what, refresh_s
        self._totals: dict[str, _Total] = {}
        self._reads: SingleFlight[tuple[str, float], float] = SingleFlight()
        self._added_during_read: dict[tuple[str, float], float] = {}  # by the (name, period) being read

    async def get(self, name: str, period: float, read: Callable[[], Awaitable[float | None]]) -> float:
        """`name`'s total from `period`: the last one read plus this process's spend since, or, when none
        was read for this period yet, the one `read()` returns."""
        known = self.known(name, period, read)
        if known is not None:
            return known
        return await asyncio.shield(self._reads.start((name, period), lambda: self._read(name, period, read)))

    def known(self, name: str, period: float, read: Callable[[], Awaitable[float | None]]) -> float | None:
        """`get`'s answer when it needs no waiting (a total of this period was read: the last one, its
        re-read started when due), without a coroutine; None: none is known yet, await `get`."""
        total = self._totals.get(name)
        if total is None or total.period != period:
            return None
        if time.monotonic() - total.read_at >= self.refresh_s:  # due: re-read, and go by this one meanwhile
            self._reads.start((name, period), lambda: self._read(name, period, read))
        return total.usd

    def observed(self, name: str, period: float, usd: float) -> None:
        """A total read elsewhere just now (a shared budget check's answer: every replica's spend), kept as
        if read here: should the store then become unreachable and fail open, this is the last total to go
        by, not none (which started every spent key from zero again)."""
        if (name, period) in self._added_during_read:
            return  # a read of this total is in flight: it keeps what this process adds meanwhile
        self._totals[name] = _Total(period, usd, time.monotonic())

    def add(self, name: str, usd: float) -> None:
        """This process's spend, counted at once."""
        total = self._totals.get(name)
        if total is not None:
            total.usd += usd
        for reading in self._added_during_read:  # the reads in flight: usually none, at most one a name
            if reading[0] == name:
                self._added_during_read[reading] += usd

    async def _read(self, name: str, period: float, read: Callable[[], Awaitable[float | None]]) -> float:
        started = time.monotonic()
        self._added_during_read[(name, period)] = 0.0
        try:
            usd = await read()
        except Exception as error:
            last = self._last(name, period, started, f"{type(error).__name__}: {error}")
            if last is None:
                raise  # nothing to go by: the requests waiting for this read get its error
            return last
        finally:
            added = self._added_during_read.pop((name, period), 0.0)
        if usd is None:  # the store could not be read and fails open: the last total, else none known yet
            last = self._last(name, period, started, "the store is unreachable and fails open")
            if last is not None:
                return last
            usd = 0.0  # failing open with nothing known: counted from this process's own spend meanwhile
        self._totals[name] = _Total(period, usd + added, started)
        return usd + added

    def _last(self, name: str, period: float, started: float, why: str) -> float | None:
        """After a failed re-read: the last total of this period, said and kept for another `refresh_s`, or
        None when there is none. Never a reading of 0: with Redis away, that reset every budget each second."""
        last = self._totals.get(name)
        if last is None or last.period != period:
            return None
        last.read_at = started
        log.warning("could not re-read the spend of %s %s (%s); going by the last total, $%.6f", self.what, name,
                    why, last.usd)
        return last.usd
