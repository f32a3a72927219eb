"""Admission checks that cost something to know, and the bookkeeping after a request:

- the global spend circuit breaker: while the last hour's spend (all keys) is above `spend.max_usd_per_hour`,
  new requests get 503 spend_limit_reached (the guide's "cost circuit breakers");
- the key's budget, reserved: each request reserves its worst-case cost (its prompt's most tokens plus its
  max_tokens, or its images plus its deadline's engine time, at the model's prices) when admitted, and the
  reservation is replaced by the real cost when it settles. The prompt's most tokens are its texts' UTF-8
  bytes (`text_tokens_bound`), what their framing may add (`TOKENS_PER_PART` each) and the template's own text
  (`TEMPLATE_TOKENS`, raised for a model whose prompts have come out longer: `prompt_margin`): an estimate
  there let concurrent requests of dense text (Chinese, base64) each pass on an undercount. A request is
  refused (429 insufficient_quota) while spent + reserved >= budget. With the in-process backends the check
  and the reservation happen without an await between them; with Redis they are one Lua script over every
  replica's spend and reservations (`stores.redis_store.RedisBudgets`; a reservation expires after the model's
  max deadline plus a minute, should its replica die). Either way concurrent requests see each other, and a
  key overshoots its budget by at most one request's worst-case cost, however many replicas serve it;
- the key's tokens/min, reserved as OpenAI counts it: when the request is admitted, its prompt (estimated
  at four characters per token, since the engine tokenizes later) and the most it may generate (max_tokens,
  or the model's default, times n) are counted, and when it settles the count is corrected to what it used
  (the engine's exact prompt and its completion: usually a giving back). Counting only the prompt up front
  let a key's concurrent requests each pass the check with room that their completions then overran. The
  completion reserve is capped at what the limit leaves beside the prompt, so a request that fits the limit
  alone is never refused for its max_tokens. On Redis, a key with a budget has its tokens/min checked in
  the budget's script (one round trip, and a refusal of either holds nothing);
- the cost from the model's price table, recorded against the key and model.

Spend totals are read from the store at most once per `spend.refresh_s` per key (and for the breaker), by one
query that requests do not wait for once a total is known (pipeline/spend_totals.py); this process's own
spend is added to them at once, so one replica is exact and replicas see each other within it.
Settling does not await (a cancelled request, its client gone, is still accounted from its `finally`): the
spend joins the ledger's next batch, and the tokens/min correction, when there is one, joins the store's
next batch of writes (in the process: done at once)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from llmops.errors import QuotaExceeded, RateLimited, SpendLimitReached, StoreUnavailable
from llmops.ids import unique_hex
from llmops.observability.metrics import Metrics
from llmops.pipeline.budget import period_bounds
from llmops.pipeline.spend_totals import SpendTotals
from llmops.settings import ModelConfig, SpendSettings
from llmops.stores import State
from llmops.stores.counters import Decision, window_index
from llmops.stores.keys import ApiKey
from llmops.stores.ledger import ANONYMOUS, Reservation, SpendEntry, TokenHit

log = logging.getLogger("llmops.accounting")
CHARS_PER_TOKEN = 4
TOKENS_PER_PART = 24  # a chat turn's markers and role, an input's special tokens, a tool call's framing (ChatML's
# <tool_call> lines: about 20 tokens); more is learned per model (Accountant.prompt_margin)
TEMPLATE_TOKENS = 64  # a template's own text (a default system prompt, a tools preamble) until a model shows more
FEW_PARTS = 4  # a prompt of at most this many parts that comes out over its bound raises the fixed margin
HOUR = "hour"  # the name of the last hour's total (all keys)
SETTLE_MARGIN_S = 60.0  # a shared reservation outlives its request's longest deadline by this much
RESERVED_EPSILON_USD = 1e-9  # below this, what a key holds in flight is rounding residue: nothing


def estimate_tokens(chars: int) -> int:
    tokens = math.ceil(chars / CHARS_PER_TOKEN)
    return tokens if tokens > 1 else 1  # (not builtin max: it parses keywords, a request's every call)


class PromptBound(NamedTuple):
    """The most tokens a prompt's parts make (`tokens`: their UTF-8 bytes and TOKENS_PER_PART each) and how
    many parts (messages, tool calls, prompts, inputs) it has, for the template's margin."""

    tokens: int
    parts: int


NO_PROMPT = PromptBound(0, 0)


def parts_bound(texts: Iterable[str], parts: int) -> PromptBound:
    return PromptBound(text_tokens_bound(texts) + TOKENS_PER_PART * parts, parts)


def text_tokens_bound(texts: Iterable[str]) -> int:
    """The most tokens `texts` can make in any tokenizer in use: their UTF-8 bytes. Byte-level BPE and
    SentencePiece with byte fallback make at most one token per byte; WordPiece at most one per character.
    (The budget's worst case counts this, where tokens/min counts the four-characters-a-token estimate.)"""
    total = 0
    for text in texts:
        total += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return total


@dataclass
class Charge:
    """One admitted request's account: who, which model, the prompt's estimated tokens, and the tokens
    counted against the key's tokens/min up front (the prompt and the completion reserved)."""

    key: ApiKey | None
    model: ModelConfig
    estimated_prompt: int = 0
    counted_tokens: int = 0
    counted_window: int = 0  # the tokens/min window they were counted in (stores.counters.window_index)
    reserved_usd: float = 0.0  # held against the key's budget until the request settles
    prompt_bound: PromptBound = NO_PROMPT  # what the prompt's parts make at most (the reservation adds the margin)
    holder: str | None = None  # the reservation's id in the shared store (Redis), when there is one
    settled: bool = field(default=False)

    @property
    def key_id(self) -> str:
        return self.key.id if self.key is not None else ANONYMOUS


def worst_case_text_usd(model: ModelConfig, prompt_tokens: int, max_tokens: int | None, n: int) -> float:
    """A text request's most expensive outcome: its prompt, and every choice using all its max_tokens."""
    completion = (max_tokens if max_tokens is not None else model.limits.default_max_tokens) * n
    return cost_usd(model, prompt_tokens, completion, 0, 0.0)


def worst_case_image_usd(model: ModelConfig, images: int, engine_s: float) -> float:
    """An image request's most expensive outcome: its n images and engine time up to its deadline."""
    return cost_usd(model, 0, 0, images, engine_s)


def cost_usd(model: ModelConfig, prompt_tokens: int, completion_tokens: int, images: int, engine_s: float) -> float:
    p = model.pricing
    return (prompt_tokens * p.prompt_usd_per_1k + completion_tokens * p.completion_usd_per_1k) / 1000 + \
        images * p.image_usd + engine_s * p.gpu_usd_per_hour / 3600


class Accountant:
    def __init__(self, state: State, spend: SpendSettings, metrics: Metrics) -> None:
        self.state, self.spend, self.metrics = state, spend, metrics
        self._key_spend = SpendTotals("key", spend.refresh_s)  # by key id, from its budget period's start
        self._hour = SpendTotals("the last", spend.refresh_s)
        self._reserved: dict[str, float] = {}  # key id -> worst-case cost of its requests not settled yet
        self._budget_gauges: dict[str, Any] = {}  # key id -> its llmops_budget_used_ratio series
        self._margins: dict[str, tuple[int, int]] = {}  # model -> (fixed, per part), where prompts showed more

    def prompt_margin(self, model: str, parts: int) -> int:
        """What `model`'s template adds to a prompt of `parts` parts beyond their bound: TEMPLATE_TOKENS, or a
        line in the number of parts that settled prompts showed it needs (`_learn_margin`)."""
        fixed, per_part = self._margins.get(model, (TEMPLATE_TOKENS, 0))
        return fixed + per_part * parts

    def _budget_gauge(self, key_id: str) -> Any:
        """The key's budget gauge, looked up once (one series per key with a budget, as the metric has)."""
        gauge = self._budget_gauges.get(key_id)
        if gauge is None:
            gauge = self._budget_gauges[key_id] = self.metrics.budget_used.labels(key_id)
        return gauge

    async def admit(self, key: ApiKey | None, model: ModelConfig, prompt_chars: int = 0,
                    worst_case_usd: float = 0.0, max_completion_tokens: int = 0, prompt_ids: int = 0) -> Charge:
        """Breaker, budget (reserving `worst_case_usd`) and tokens/min (reserving the prompt, its text
        estimated from `prompt_chars` plus the `prompt_ids` token ids sent as ids, and
        `max_completion_tokens`); raises the refusal."""
        if self.spend.max_usd_per_hour is not None:  # (no coroutine to make without a breaker)
            await self._check_breaker(model.name)
        charge = Charge(key, model, (estimate_tokens(prompt_chars) if prompt_chars else 0) + prompt_ids)
        if key is None:
            return charge
        tpm = key.limits.tpm
        tokens = None
        if tpm is not None and charge.estimated_prompt:
            room = tpm - charge.estimated_prompt  # what the limit leaves beside the prompt, at least 0
            room = room if room > 0 else 0
            reserve = max_completion_tokens if max_completion_tokens < room else room
            charge.counted_tokens = charge.estimated_prompt + reserve
            charge.counted_window = window_index(time.time())[0]
            tokens = TokenHit(tpm, charge.counted_tokens)
        decision = await self._reserve(key, model.name, charge, worst_case_usd, tokens)
        if tokens is not None and decision is None:  # not counted with the reservation: count it now
            try:
                decision = await self.state.counters.hit_tokens(key.id, tokens.per_minute, tokens.count)
            except BaseException:
                self._release(charge)
                raise
        if decision is not None and not decision.allowed:
            self._release(charge)
            error = RateLimited(f"token limit of {tpm} tokens/min exceeded (this request counts about "
                                f"{charge.estimated_prompt} prompt tokens and up to "
                                f"{charge.counted_tokens - charge.estimated_prompt} completion tokens until it "
                                "ends)", retry_after=math.ceil(decision.retry_after_s))
            self.metrics.reject(model.name, error, "token_limit")
            raise error
        return charge

    def admit_now(self, key: ApiKey | None, model: ModelConfig, prompt_chars: int = 0,
                  prompt_ids: int = 0) -> Charge | None:
        """`admit`'s charge where admitting needs nothing checked or reserved (no key, no spend breaker), made
        without a coroutine; None: call `admit`."""
        if key is not None or self.spend.max_usd_per_hour is not None:
            return None
        return Charge(key, model, (estimate_tokens(prompt_chars) if prompt_chars else 0) + prompt_ids)

    def reserved(self, key_id: str) -> float:
        return self._reserved.get(key_id, 0.0)

    def _release(self, charge: Charge) -> None:
        if charge.reserved_usd:
            key_id = charge.key_id
            left = self._reserved.get(key_id, 0.0) - charge.reserved_usd
            if left > RESERVED_EPSILON_USD:
                self._reserved[key_id] = left
            else:  # the last one out: none left, not a float's rounding residue of the sums
                self._reserved.pop(key_id, None)
            charge.reserved_usd = 0.0
        budgets, holder = self.state.budgets, charge.holder
        if budgets is not None and holder is not None:
            charge.holder = None
            budgets.release(charge.key_id, holder)

    async def _check_breaker(self, model: str) -> None:
        ceiling = self.spend.max_usd_per_hour
        if ceiling is None:
            return
        usd = await self._hour.get(HOUR, 0.0, self.state.ledger.hour_spend)
        if usd >= ceiling:
            error = SpendLimitReached(f"spend circuit breaker open: ${usd:.2f} in the last hour is above the "
                                      f"${ceiling:.2f} ceiling; new requests are refused until it falls back")
            self.metrics.reject(model, error)
            raise error

    async def _reserve(self, key: ApiKey, model: str, charge: Charge, worst_case_usd: float,
                       tokens: TokenHit | None) -> Decision | None:
        """Check the budget and reserve the request's worst case, atomically in this process (no await
        between reading what is reserved and adding to it). With a shared store, `tokens` is checked in
        the same step (one round trip): its decision is returned then, None when it was not checked."""
        budget = key.limits.budget_usd
        if budget is None:
            return None
        start, end = period_bounds(key.limits.budget_period, time.time())
        shared = None
        if self.state.budgets is not None:
            shared = await self._reserve_shared(key, charge, start, budget, worst_case_usd, tokens)
        decision = None
        if shared is not None:
            made, spent, reserved, decision = shared.made, shared.spent, shared.reserved, shared.tokens
            self._key_spend.observed(key.id, start, spent)  # what to go by should Redis fail open later
        else:  # in-process backends, or Redis unreachable and failing open: this process's reservations
            read = self._spend_reader(key.id, start)
            known = self._key_spend.known(key.id, start, read)  # a key's every request but its first
            spent = known if known is not None else await self._key_spend.get(key.id, start, read)
            reserved = self._reserved.get(key.id, 0.0)
            made = spent + reserved < budget
        self._budget_gauge(key.id).set(spent / budget if budget else 1.0)
        if decision is not None and not decision.allowed:  # the budget allowed; tokens/min refused
            return decision
        if not made:
            resets = f"; it resets in {math.ceil((end - time.time()) / 3600)} h" if end else ""
            held = f", ${reserved:.4f} more held by requests in flight" if reserved else ""
            error = QuotaExceeded(f"this API key's budget of ${budget:.2f} per {key.limits.budget_period} is "
                                  f"spent (${spent:.4f}{held}){resets}",
                                  retry_after=math.ceil(end - time.time()) if end else None)
            self.metrics.reject(model, error)
            raise error
        self._reserved[key.id] = self._reserved.get(key.id, 0.0) + worst_case_usd
        charge.reserved_usd = worst_case_usd
        return decision

    async def _reserve_shared(self, key: ApiKey, charge: Charge, start: float, budget: float,
                              worst_case_usd: float, tokens: TokenHit | None) -> Reservation | None:
        """Check and reserve in the shared store, atomically for every replica; None when the store is
        unreachable and fails open (then each replica holds its own reservations, as one process does)."""
        assert self.state.budgets is not None
        holder = unique_hex()
        ttl = charge.model.limits.max_deadline_s + SETTLE_MARGIN_S
        budgets = self.state.budgets
        try:
            answer = await budgets.reserve(key.id, start, budget, worst_case_usd, holder, ttl, tokens)
        except StoreUnavailable:  # timed out and failing closed: Redis may still have run the script
            budgets.release(key.id, holder)
            raise
        if answer is None:  # timed out and failing open: the same, then this process's reservations
            budgets.release(key.id, holder)
            return None
        if answer.made:
            charge.holder = holder
        return answer

    async def key_spend(self, key: ApiKey, start: float) -> float:
        return await self._key_spend.get(key.id, start, self._spend_reader(key.id, start))

    def _spend_reader(self, key_id: str, start: float) -> Callable[[], Awaitable[float | None]]:
        """The store's read of `key_id`'s spend from `start` (made when the total is due)."""
        return lambda: self.state.ledger.key_spend(key_id, start)

    def settle(self, charge: Charge, prompt_tokens: int = 0, completion_tokens: int = 0, images: int = 0,
               engine_s: float = 0.0) -> None:
        """Record what the request used; safe to call from a `finally` (it does not await). The spend is
        queued for the ledger's next batch and counted in this process at once; a shared reservation is
        given back once the spend is written (another replica then sees one or the other), an in-process
        one at once; the tokens/min correction is queued with the store's writes. No task is started."""
        if charge.settled:
            return
        charge.settled = True
        bound, model = charge.prompt_bound, charge.model.name
        if bound.tokens and prompt_tokens - bound.tokens > self.prompt_margin(model, bound.parts):
            self._learn_margin(model, prompt_tokens - bound.tokens, bound.parts)
        key = charge.key
        if key is not None and key.limits.tpm is not None:
            self._correct_tokens(key.id, charge, prompt_tokens + completion_tokens)
        written = None
        try:
            if prompt_tokens or completion_tokens or images:
                written = self._record(charge, prompt_tokens, completion_tokens, images, engine_s)
        except Exception:  # accounting must never take the server down; the store logs its own failures
            log.exception("could not record a request's usage")
        if written is None or charge.holder is None:
            self._release(charge)
        else:
            written.add_done_callback(lambda _: self._release(charge))

    def _learn_margin(self, model: str, excess: int, parts: int) -> None:
        """A prompt of `model` in `parts` parts made `excess` tokens more than its parts' bound, more than the
        margin reserved: the margin, a fixed part and a part per part, is raised to cover it, the fixed part
        from a prompt of few parts (a template's own text), else the part per part (each turn's or call's
        framing). Either stays at what the engine's counts showed: a client cannot raise it past its
        template's real cost."""
        fixed, per_part = self._margins.get(model, (TEMPLATE_TOKENS, 0))
        if parts <= FEW_PARTS:
            fixed = excess - per_part * parts
        else:
            per_part = -(-(excess - fixed) // parts)
        log.info("a prompt of %s in %d parts made %d tokens more than its parts' bound: its template margin is now "
                 "%d tokens and %d a part", model, parts, excess, fixed, per_part)
        self._margins[model] = (fixed, per_part)

    def _record(self, charge: Charge, prompt: int, completion: int, images: int,
                engine_s: float) -> asyncio.Future[None]:
        model, key_id = charge.model, charge.key_id
        cost = cost_usd(model, prompt, completion, images, engine_s)
        written = self.state.ledger.queue(SpendEntry(key_id, model.name, cost, prompt, completion, images,
                                                     time.time()))
        self.metrics.spend.labels(model.name, key_id).inc(cost)
        self._add_local(key_id, cost)  # the real cost replaces the in-process reservation in one step
        return written

    def _correct_tokens(self, key_id: str, charge: Charge, used: int) -> None:
        """Replace what admission counted by what the request used. Within the minute it was counted in, one
        correction there; after it turned, what was counted is taken back from its own window (a give-back
        into the new one would make room the sliding minute still owes to the old one's tokens) and the use
        counted in the new one."""
        current = window_index(time.time())[0]
        if not charge.counted_tokens or charge.counted_window == current:
            self._add_tokens(key_id, used - charge.counted_tokens)
            return
        if charge.counted_window == current - 1:  # older windows no longer weigh on the sliding minute
            self._add_tokens(key_id, -charge.counted_tokens, charge.counted_window)
        self._add_tokens(key_id, used)

    def _add_tokens(self, key_id: str, delta: int, window: int | None = None) -> None:
        if not delta:
            return
        try:
            self.state.counters.add_tokens(key_id, delta, window)
        except Exception:
            log.exception("could not correct a request's tokens/min count")

    def _add_local(self, key_id: str, cost: float) -> None:
        self._hour.add(HOUR, cost)
        self._key_spend.add(key_id, cost)
