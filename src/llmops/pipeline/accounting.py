"""Admission checks that cost something to know, and the bookkeeping after a request:

- the global spend circuit breaker: while the last hour's spend (all keys) is above `spend.max_usd_per_hour`,
  new requests get 503 spend_limit_reached (the guide's "cost circuit breakers");
- the key's budget: spent in the current period >= budget → 429 insufficient_quota;
- the key's tokens/min: the prompt's tokens are counted when the request is admitted (estimated at four
  characters per token, since the engine tokenizes later), and the completion's when it settles, together
  with the correction of the estimate to the engine's exact prompt count;
- the cost from the model's price table, recorded against the key and model.

Spend totals are read from the store at most once a second per key (and for the breaker); this process's own
spend is added to them at once, so one replica is exact and replicas see each other within a second.
Settling runs in a background task so that a cancelled request (client gone) is still accounted."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from llmops.errors import QuotaExceeded, RateLimited, SpendLimitReached
from llmops.observability.metrics import Metrics
from llmops.pipeline.budget import period_bounds
from llmops.settings import ModelConfig, SpendSettings
from llmops.stores import State
from llmops.stores.keys import ApiKey
from llmops.stores.ledger import ANONYMOUS, SpendEntry
from llmops.tasks import TaskSet

log = logging.getLogger("llmops.accounting")
REFRESH_S = 1.0
CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


@dataclass
class Charge:
    """One admitted request's account: who, which model, and the prompt tokens counted up front."""

    key: ApiKey | None
    model: ModelConfig
    estimated_prompt: int = 0
    settled: bool = field(default=False)

    @property
    def key_id(self) -> str:
        return self.key.id if self.key is not None else ANONYMOUS


def cost_usd(model: ModelConfig, prompt_tokens: int, completion_tokens: int, images: int, engine_s: float) -> float:
    p = model.pricing
    return (prompt_tokens * p.prompt_usd_per_1k + completion_tokens * p.completion_usd_per_1k) / 1000 + \
        images * p.image_usd + engine_s * p.gpu_usd_per_hour / 3600


class Accountant:
    def __init__(self, state: State, spend: SpendSettings, metrics: Metrics) -> None:
        self.state, self.spend, self.metrics = state, spend, metrics
        self._key_spend: dict[str, tuple[float, float, float]] = {}  # key -> (period start, usd, read at)
        self._hour: tuple[float, float] = (0.0, -math.inf)  # (usd, read at)
        self._tasks = TaskSet()

    async def admit(self, key: ApiKey | None, model: ModelConfig, prompt_chars: int = 0) -> Charge:
        await self._check_breaker(model.name)
        charge = Charge(key, model, estimate_tokens(prompt_chars) if prompt_chars else 0)
        if key is None:
            return charge
        await self._check_budget(key, model.name)
        if key.limits.tpm is not None and charge.estimated_prompt:
            decision = await self.state.counters.hit_tokens(key.id, key.limits.tpm, charge.estimated_prompt)
            if not decision.allowed:
                self.metrics.rejections.labels(model.name, "token_limit").inc()
                raise RateLimited(f"token limit of {key.limits.tpm} tokens/min exceeded (this prompt: about "
                                  f"{charge.estimated_prompt} tokens)", retry_after=math.ceil(decision.retry_after_s))
        return charge

    async def _check_breaker(self, model: str) -> None:
        ceiling = self.spend.max_usd_per_hour
        if ceiling is None:
            return
        usd, read_at = self._hour
        if time.monotonic() - read_at > REFRESH_S:
            usd = await self.state.ledger.hour_spend()
            self._hour = (usd, time.monotonic())
        if usd >= ceiling:
            self.metrics.rejections.labels(model, "spend_breaker").inc()
            raise SpendLimitReached(f"spend circuit breaker open: ${usd:.2f} in the last hour is above the "
                                    f"${ceiling:.2f} ceiling; new requests are refused until it falls back")

    async def _check_budget(self, key: ApiKey, model: str) -> None:
        budget = key.limits.budget_usd
        if budget is None:
            return
        start, end = period_bounds(key.limits.budget_period, time.time())
        spent = await self.key_spend(key, start)
        self.metrics.budget_used.labels(key.id).set(spent / budget if budget else 1.0)
        if spent >= budget:
            self.metrics.rejections.labels(model, "budget").inc()
            resets = f"; it resets in {math.ceil((end - time.time()) / 3600)} h" if end else ""
            raise QuotaExceeded(f"this API key's budget of ${budget:.2f} per {key.limits.budget_period} is spent "
                                f"(${spent:.4f}){resets}", retry_after=math.ceil(end - time.time()) if end else None)

    async def key_spend(self, key: ApiKey, start: float) -> float:
        cached = self._key_spend.get(key.id)
        if cached is not None and cached[0] == start and time.monotonic() - cached[2] <= REFRESH_S:
            return cached[1]
        spent = await self.state.ledger.key_spend(key.id, start)
        self._key_spend[key.id] = (start, spent, time.monotonic())
        return spent

    def settle(self, charge: Charge, prompt_tokens: int = 0, completion_tokens: int = 0, images: int = 0,
               engine_s: float = 0.0) -> None:
        """Record what the request used; safe to call from a `finally` (it does not await)."""
        if charge.settled:
            return
        charge.settled = True
        self._tasks.spawn(self._settle(charge, prompt_tokens, completion_tokens, images, engine_s))

    async def _settle(self, charge: Charge, prompt: int, completion: int, images: int, engine_s: float) -> None:
        try:
            key, model = charge.key, charge.model
            if key is not None and key.limits.tpm is not None:
                delta = prompt + completion - charge.estimated_prompt
                if delta:
                    await self.state.counters.add_tokens(key.id, delta)
            if not (prompt or completion or images):
                return
            cost = cost_usd(model, prompt, completion, images, engine_s)
            await self.state.ledger.record(SpendEntry(charge.key_id, model.name, cost, prompt, completion, images))
            self.metrics.spend.labels(model.name, charge.key_id).inc(cost)
            self._add_local(charge.key_id, cost)
        except Exception:  # accounting must never take the server down; the store logs its own failures
            log.exception("could not record a request's usage")

    def _add_local(self, key_id: str, cost: float) -> None:
        usd, read_at = self._hour
        self._hour = (usd + cost, read_at)
        cached = self._key_spend.get(key_id)
        if cached is not None:
            self._key_spend[key_id] = (cached[0], cached[1] + cost, cached[2])

    async def close(self) -> None:
        await self._tasks.wait()
