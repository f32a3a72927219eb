"""The request path, in one place. Every kind of work (chat, completions, images, embeddings; later
classification) goes through the same stages in this order:

    route → prompt → input guardrails → budget and breaker (reservation) → cache
          → admission → engine (with fallbacks) → output guardrails → accounting → cache store

`prepare` runs the stages up to the cache lookup, the same for every kind. The rest runs where the work's
output flows: `pipeline.text.run` (chunks, fallbacks, output guardrails as text streams, accounting at the
end), `pipeline.images.generate` (a job behind the model's admission, accounting when it finishes) and
`pipeline.embeddings.embed` (a slot at the model's admission, accounting when the vectors come back).

A kind plugs in through a small adapter, `Work`: which models serve it, the texts the guardrails read, its
worst-case cost, its cache payload and semantic-cache query. api/ parses the request into a Work, calls the
pipeline and formats."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from llmops.errors import LLMOpsError, PermissionDenied
from llmops.pipeline.accounting import Charge, PromptBound
from llmops.pipeline.context import RequestContext
from llmops.pipeline.routing import Plan
from llmops.pipeline.semantic_cache import Lookup
from llmops.pipeline.services import Services
from llmops.scheduling.admission import Priority, Ticket
from llmops.settings import ModelConfig
from llmops.stores.keys import ApiKey

log = logging.getLogger("llmops.pipeline")
STAGES = ("route", "prompt", "input_guardrails", "budget", "cache", "admission", "engine", "output_guardrails",
          "accounting", "cache_store")
ModelKind = Literal["chat", "image", "embeddings", "classify"]
USER_LOGGED_CHARS = 128  # of a request's `user`, on its access-log line
INPUT_PARAM = {"completions": "prompt", "embeddings": "input", "images": "prompt"}  # the texts' field (chat's:
# messages), named by an input guardrail's refusal


class Work(Protocol):
    """One kind of work's adapter to the pipeline."""

    @property
    def kind(self) -> str:
        """The cache namespace: "chat", "completions", "images", ..."""

    @property
    def model_kind(self) -> ModelKind:
        """Which configured models serve it."""

    @property
    def model(self) -> str | None:
        """As requested (an alias, maybe); None: the first model of its kind."""

    @property
    def user(self) -> str | None:
        """The request's `user` (sticky routing without a key)."""

    @property
    def service_tier(self) -> str | None: ...

    def check(self, config: ModelConfig) -> None:
        """Refuse (4xx) what the chosen model does not accept."""

    def prompt(self, call: Call, services: Services) -> None:
        """Stage `prompt`: render a referenced prompt template into the work (most kinds: nothing)."""

    def texts(self) -> list[str]:
        """The input's texts: the input limits and the budget count their characters."""

    async def readable(self, call: Call) -> list[str]:
        """What the input guardrails read: `texts()`, and the text of any input given as token ids."""

    def with_texts(self, texts: list[str]) -> None:
        """Take `readable()`'s texts back as the guardrails left them (redacted)."""

    def input_ids(self) -> int:
        """Token ids the input holds as ids (embeddings' token-array inputs), counted as prompt tokens one for
        one, as `texts()` are by their characters: tokens/min and the budget count both."""

    def prompt_bound(self) -> PromptBound:
        """The most prompt tokens the input can make with its framing (texts' UTF-8 bytes, ids one for one,
        `TOKENS_PER_PART` a part: `accounting.parts_bound`), a template's own text aside; NO_PROMPT for work
        not charged by its prompt's tokens."""

    def worst_case_usd(self, config: ModelConfig, prompt_tokens: int, deadline_s: float) -> float:
        """The most this work can cost on `config`: the budget reserves it until the work settles."""

    def max_completion_tokens(self, config: ModelConfig) -> int:
        """The most tokens this work may generate on `config` (0: it generates none): tokens/min reserves
        them, with the prompt, until the work settles."""

    def cache_payload(self, call: Call) -> dict[str, Any] | None:
        """The normalised request the cache keys on, or None when its answer is not deterministic."""

    def semantic_query(self, call: Call) -> tuple[str, str] | None:
        """What the semantic cache (when on) compares: (namespace, normalised text); None: this work does not
        use it."""


@dataclass
class Call:
    """One request on its way through the stages; what each stage decided."""

    services: Services
    ctx: RequestContext
    work: Work
    plan: Plan
    config: ModelConfig  # the chosen model's (a fallback's, once one answered)
    deadline: float  # time.monotonic()
    priority: Priority
    charge: Charge | None = None
    cache_key: str | None = None
    hit: dict[str, Any] | None = None  # the stored answer, when the cache had it
    served: str = ""  # the model that answered
    ticket: Ticket | None = None  # what admission said (position, time queued)
    prompt_version: tuple[str, str] | None = None
    semantic: Lookup | None = None  # the semantic cache's lookup, kept to store the answer under
    extra_headers: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        out = dict(self.extra_headers)
        if self.ticket is not None:
            out.update({"X-Queue-Position": str(self.ticket.position),
                        "X-Queue-Time-Ms": str(round(self.ticket.queued_s * 1000))})
        if self.plan.route is not None and self.served:
            out["X-LLMOps-Variant"] = self.served
        if self.prompt_version is not None:
            out["X-LLMOps-Prompt-Version"] = f"{self.prompt_version[0]}/{self.prompt_version[1]}"
        return out


async def prepare(services: Services, ctx: RequestContext, work: Work) -> Call:
    """The stages before the engine, in order; raises the request's refusal (4xx, 503). On return the
    budget holds a reservation (`call.charge`) and `call.hit` is the cached answer, if any (then settled)."""
    call = route(services, ctx, work)
    work.prompt(call, services)
    if services.guardrails.active("input"):
        await input_guardrails(services, call)
    else:
        input_limits(services, call)
    await budget(services, call)
    try:
        await cache_lookup(services, call)
    except BaseException:
        settle_unused(services, call)
        raise
    return call


def route(services: Services, ctx: RequestContext, work: Work) -> Call:
    """Alias → variant and fallbacks; the key may use the requested model; the model accepts the work."""
    pool = services.pool
    requested = work.model or (pool.default_model(work.model_kind) if work.model_kind != "chat" else "")
    plan = services.router.plan(requested, ctx.subject, work.user) if work.model_kind == "chat" else \
        Plan(requested, None, (requested,))
    authorize(ctx.key, plan.requested)
    config = pool.config(plan.chain[0], work.model_kind)
    work.check(config)
    if plan.route is not None:
        ctx.log.update(alias=plan.route)
    if work.user:  # the caller's end-user id, as OpenAI's `user` is meant for: on the access-log line
        ctx.log["user"] = work.user[:USER_LOGGED_CHARS]
    return Call(services, ctx, work, plan, config, ctx.deadline(config), ctx.priority_for(work.service_tier))


def authorize(key: ApiKey | None, model: str) -> None:
    """403 when the caller's key may not use `model` (anonymous callers reach here only on an open server)."""
    if key is not None and not key.allows(model):
        raise PermissionDenied(f"this API key may not use model {model!r}", param="model", code="model_not_allowed")


async def input_guardrails(services: Services, call: Call) -> None:
    """The input limits, then the input rules over what the work reads as text (token ids decoded); a large
    input is checked in a worker thread, off the event loop. The work's texts are replaced only when a rule
    changed one (a redaction)."""
    input_limits(services, call)
    param = INPUT_PARAM.get(call.work.kind, "messages")
    texts = await call.work.readable(call)
    checked = await services.guardrails.check_rules_async(texts, param)
    if checked != texts:
        call.work.with_texts(checked)


def input_limits(services: Services, call: Call) -> None:
    """The input limits alone (where no input rule is configured, most servers, the whole stage): characters
    of text, and tokens, counting ids given as ids one for one."""
    services.guardrails.check_limits(call.work.texts(), INPUT_PARAM.get(call.work.kind, "messages"),
                                     call.work.input_ids())


async def budget(services: Services, call: Call) -> None:
    """The spend breaker, the key's budget (reserving the worst case) and tokens/min (reserving the prompt and
    the most the request may generate). The worst case is the
    dearest of the models that may serve the request (a route's fallbacks too): the reservation must
    cover whichever one answers, since the answer is charged at its own prices."""
    chars = sum(map(len, call.work.texts()))
    accountant = services.accountant
    text = call.work.model_kind != "image"
    charge = accountant.admit_now(call.ctx.key, call.config, chars if text else 0, call.work.input_ids() if text else 0)
    if charge is not None:  # nothing to check or reserve (no key, no breaker): no worst case to work out
        call.charge = charge
        return
    bound, engine_s = call.work.prompt_bound(), call.deadline - call.ctx.received
    tokens = bound.tokens + accountant.prompt_margin(call.config.name, bound.parts) if bound.tokens else 0
    estimate = call.work.worst_case_usd(call.config, tokens, engine_s)
    completion = call.work.max_completion_tokens(call.config)
    for name in call.plan.chain[1:]:
        fallback = services.pool.config(name, call.work.model_kind)
        tokens = bound.tokens + accountant.prompt_margin(name, bound.parts) if bound.tokens else 0
        estimate = max(estimate, call.work.worst_case_usd(fallback, tokens, engine_s))
        completion = max(completion, call.work.max_completion_tokens(fallback))
    call.charge = await accountant.admit(call.ctx.key, call.config, chars if text else 0, estimate, completion,
                                         call.work.input_ids() if text else 0)
    call.charge.prompt_bound = bound


async def cache_lookup(services: Services, call: Call) -> None:
    """The exact cache, then (when it is on and the exact one has no answer) the semantic cache: a hit of
    either says X-Cache: hit."""
    cacher = services.cacher
    call.cache_key = cacher.key(call.work.kind, lambda: call.work.cache_payload(call), opt_out=call.ctx.cache_opt_out,
                                key_id=call.ctx.subject)
    call.hit = await cacher.get(call.cache_key) if call.cache_key is not None else None
    result = "bypass" if call.cache_key is None else "hit" if call.hit is not None else "miss"
    counted = result  # llmops_cache_requests_total{result}: once a request, a semantic hit as its own
    if call.hit is None and services.semantic_cache is not None and \
            (semantic := await semantic_lookup(services, call)) is not None:
        call.hit, result, counted = semantic, "hit", "semantic_hit"
    elif result == "bypass" and call.semantic is not None:
        result = counted = "miss"
    services.metrics.cache_requests.labels(call.config.name, counted).inc()
    call.extra_headers["X-Cache"] = call.ctx.log["cache"] = result
    if call.hit is not None:
        call.served = call.config.name
        services.metrics.requests.labels(call.served, "cached").inc()  # answered without the engine
        settle_unused(services, call)


def settle_unused(services: Services, call: Call) -> None:
    """The work will not run (a cache hit, a refusal after the budget stage): give its reservation back."""
    if call.charge is not None:
        services.accountant.settle(call.charge)


async def semantic_lookup(services: Services, call: Call) -> dict[str, Any] | None:
    """The semantic cache (opt-in), for work that offers a query and requests not opted out; the embedding
    waits at the embeddings model's admission within the request's deadline. It never fails a request: the
    embeddings model not ready or overloaded is a miss."""
    semantic = services.semantic_cache
    query = call.work.semantic_query(call) if semantic is not None and not call.ctx.cache_opt_out else None
    if semantic is None or query is None:
        return None
    space, text = query
    try:
        call.semantic = await semantic.lookup(services.cacher.scoped(space, call.ctx.subject), text,
                                              deadline=call.deadline, priority=call.priority)
    except LLMOpsError as exc:
        log.info("semantic cache skipped: %s", exc.code)
        return None
    return call.semantic.body


def keeps_answer(services: Services, call: Call) -> bool:
    """Whether `cache_store` keeps this request's answer (the exact cache has a key for it, or the semantic
    cache a lookup): only then does the answer need to exist as a model."""
    return call.cache_key is not None or (services.semantic_cache is not None and call.semantic is not None)


async def cache_store(services: Services, call: Call, body: dict[str, Any] | BaseModel) -> None:
    """Keep the answer for the next identical (or similar) request; a model is dumped to a dict only when a
    cache keeps it (most answers are sent and forgotten)."""
    if not keeps_answer(services, call):
        return
    semantic, lookup = services.semantic_cache, call.semantic
    data = body.model_dump() if isinstance(body, BaseModel) else body
    await services.cacher.put(call.cache_key, data)
    if semantic is not None and lookup is not None:
        await semantic.store(lookup, data)

