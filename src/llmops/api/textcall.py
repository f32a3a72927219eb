"""One chat or completions request on its way through the pipeline:

    route (alias → variant + fallbacks) → prompt template → guardrails(in) → budget, breaker, tokens/min
    → cache lookup → [admission → engine, falling back on failure before the first token]
    → guardrails(out, per chunk) → cost + token accounting → cache store

The routes (chat.py, completions.py) only parse and format; everything between is here. The cache is
keyed on the chosen variant, not the alias, so an A/B arm never serves the other arm's answers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from llmops.api import chat_controls, deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.generation import Choices, Collected, check_request, collect, text_requests
from llmops.api.request_meta import RequestMeta, request_meta
from llmops.api.sse import sse_response
from llmops.engines.base import Message, TextChunk, TextRequest
from llmops.errors import EngineError, InvalidRequest, LLMOpsError, ServiceUnavailable
from llmops.middleware.observe import log_fields
from llmops.observability.inference import InferenceObserver
from llmops.pipeline.accounting import Charge
from llmops.pipeline.cache import opted_out
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.routing import Plan
from llmops.pipeline.semantic_cache import Lookup, SemanticCache, namespace, normalise
from llmops.scheduling.admission import Ticket
from llmops.scheduling.runner import admitted_choices
from llmops.settings import ModelConfig

log = logging.getLogger("llmops.api")
Kind = Literal["chat", "completions"]
FALLBACK_ON = (ServiceUnavailable, EngineError)  # overloaded, not ready, upstream down, engine failure


@dataclass
class TextCall:
    request: Request
    kind: Kind
    plan: Plan
    config: ModelConfig  # the chosen variant's
    meta: RequestMeta
    charge: Charge
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    cache_key: str | None = None
    served: str = ""  # the model that answered (a fallback, maybe)
    prompt_version: tuple[str, str] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    semantic: Lookup | None = None  # the semantic cache's lookup, kept to store the answer under
    cache_payload: dict[str, Any] = field(default_factory=dict)  # what the exact cache keys on

    def headers(self) -> dict[str, str]:
        out = {**self.meta.headers(), **self.extra_headers}
        if self.plan.route is not None and self.served:
            out["X-LLMOps-Variant"] = self.served
        if self.prompt_version is not None:
            out["X-LLMOps-Prompt-Version"] = f"{self.prompt_version[0]}/{self.prompt_version[1]}"
        return out


@asynccontextmanager
async def closing(items: Choices) -> AsyncIterator[Choices]:
    """Close the source generator when the consumer stops early (an error, a disconnect), so the engine
    stops now rather than when the generator is garbage-collected."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _subject(request: Request) -> str | None:
    key = deps.api_key(request)
    return key.id if key is not None else None


def _render_prompt(request: Request, body: Any, call_log: dict[str, Any]) -> tuple[list[Message], tuple[str, str]]:
    registry = deps.prompts(request)
    ref = body.prompt
    version = ref.version
    experiment = deps.settings(request).prompts.experiments.get(ref.id)
    if version is None and experiment:
        options = [(v.version, v.weight) for v in experiment]
        version = deps.router(request).choose(f"prompt:{ref.id}", options, _subject(request) or body.user)
    template = registry.get(ref.id, version)
    rendered = [Message(role, text) for role, text in registry.render(template, ref.variables)]
    request.app.state.metrics.prompt_requests.labels(template.id, template.version).inc()
    call_log.update(prompt_id=template.id, prompt_version=template.version)
    return rendered, (template.id, template.version)


async def prepare(request: Request, body: Any, kind: Kind, *, messages: list[Message] | None = None,
                  prompt: str | None = None) -> TextCall:
    """Everything before the engine; raises the request's 4xx/5xx (a block, a budget, a full breaker)."""
    fields = log_fields(request.scope)
    plan = deps.router(request).plan(body.model, _subject(request), body.user)
    deps.authorize(request, plan.requested)
    pool = deps.pool(request)
    config = pool.config(plan.chain[0], "chat")
    check_request(body, config)
    prompt_version = None
    if kind == "chat" and getattr(body, "prompt", None) is not None:
        rendered, prompt_version = _render_prompt(request, body, fields)
        messages = rendered + (messages or [])
    if kind == "chat" and not messages:
        raise InvalidRequest("messages must hold at least one message (or reference a prompt)", param="messages")
    inputs = [m.content for m in messages] if messages is not None else [prompt or ""]
    texts = deps.guardrails(request).check_input(inputs)
    if messages is not None:
        messages = [dataclasses.replace(m, content=t) for m, t in zip(messages, texts, strict=True)]
    else:
        prompt = texts[0]
    if plan.route is not None:
        fields.update(alias=plan.route)
    meta = request_meta(request, config, body.service_tier())
    charge = await deps.accountant(request).admit(deps.api_key(request), config, sum(len(t) for t in texts))
    call = TextCall(request, kind, plan, config, meta, charge, tuple(messages) if messages is not None else None,
                    prompt, prompt_version=prompt_version)
    call.cache_key = deps.cacher(request).key(request, kind, _cache_payload(call, body),
                                              body.temperature == 0 or body.seed is not None)
    return call


def _cache_payload(call: TextCall, body: Any) -> dict[str, Any]:
    payload = {"model": call.config.name, "n": body.n, "max_tokens": body.requested_max_tokens(),
               "sampling": {k: list(v) if isinstance(v, tuple) else v for k, v in body.sampling_fields().items()},
               "messages": [[m.role, m.content] for m in call.messages] if call.messages is not None else None,
               "prompt": call.prompt, "prompt_version": list(call.prompt_version) if call.prompt_version else None,
               "controls": chat_controls.cache_part(body)}
    call.cache_payload = payload  # the semantic cache's namespace is this, less the messages
    return payload


async def cached(call: TextCall) -> dict[str, Any] | None:
    """The stored answer, if there is one (and then the call's accounting is settled: no engine work)."""
    found = await deps.cacher(call.request).get(call.cache_key, call.config.name)
    call.extra_headers["X-Cache"] = "bypass" if call.cache_key is None else "hit" if found else "miss"
    if found is None:
        found = await _semantic_lookup(call)
    log_fields(call.request.scope)["cache"] = call.extra_headers["X-Cache"]
    if found is not None:
        call.served = call.config.name
        deps.accountant(call.request).settle(call.charge)
    return found


async def store(call: TextCall, body: dict[str, Any]) -> None:
    await deps.cacher(call.request).put(call.cache_key, body)
    semantic = call.request.app.state.semantic_cache
    if semantic is not None and call.semantic is not None:
        await semantic.store(call.semantic, body)


async def _semantic_lookup(call: TextCall) -> dict[str, Any] | None:
    """The semantic cache (opt-in), for chat requests not opted out: X-Cache says hit as for an exact one."""
    semantic: SemanticCache | None = call.request.app.state.semantic_cache
    if semantic is None or call.kind != "chat" or call.messages is None or opted_out(call.request):
        return None
    payload = {**call.cache_payload, "messages": None}
    try:
        call.semantic = await semantic.lookup(namespace(payload), normalise([(m.role, m.content)
                                                                              for m in call.messages]))
    except LLMOpsError as exc:  # the embeddings model not ready or overloaded: a miss, never a failure
        log.info("semantic cache skipped: %s", exc.code)
        return None
    if call.semantic.body is None:
        call.extra_headers.setdefault("X-Cache", "miss")
        return None
    call.extra_headers["X-Cache"] = "hit"
    call.request.app.state.metrics.cache_requests.labels(call.config.name, "semantic_hit").inc()
    return call.semantic.body


async def respond(call: TextCall, body: Any, *, replay: Callable[[dict[str, Any]], AsyncIterator[bytes]],
                  events: Callable[[Choices], AsyncIterator[bytes]],
                  complete: Callable[[Collected], BaseModel]) -> Response:
    """The answer as JSON or SSE: from the cache when it has it, else from the engine (and then cached).
    The route gives the formats: `replay` a cached body as events, `events` for live chunks, `complete`
    for the whole answer."""
    hit = await cached(call)
    if hit is not None:
        if body.stream:
            return await sse_response(replay(hit), call.headers)
        return JSONResponse(hit, headers=call.headers())
    choices = run(call, body)
    if body.stream:
        return await sse_response(events(choices), call.headers)
    done = await cancel_on_disconnect(call.request, collect(choices, body.n))
    result = complete(done).model_dump()
    await store(call, result)
    return JSONResponse(result, headers=call.headers())


def run(call: TextCall, body: Any) -> Choices:
    """The answer's chunks: the chain of models tried in order, output guardrails applied as text flows,
    tokens and cost settled at the end however it ends; a shadow copy started if the route has one."""
    if call.plan.shadow is not None:
        _start_shadow(call, body, call.plan.shadow)
    guard = deps.guardrails(call.request)
    chunks = _fallback(call, body)
    if guard.active("output"):
        chunks = _guarded(chunks, guard)
    return _settled(call, chunks)


def _requests(call: TextCall, body: Any, config: ModelConfig) -> list[TextRequest]:
    return text_requests(body, config, body.requested_max_tokens(), prompt=call.prompt, messages=call.messages)


def _attempt(call: TextCall, body: Any, name: str) -> Choices:
    served, engine = deps.pool(call.request).text_engine(name)
    reqs = _requests(call, body, served.config)
    chat_controls.check_capabilities(engine, reqs)
    obs = InferenceObserver(call.request.app.state.metrics, call.request.app.state.tracer, name,
                            log_fields(call.request.scope))

    def on_admit(ticket: Ticket) -> None:
        call.meta.admitted(ticket)
        obs.admitted(ticket)

    return obs.text(admitted_choices(served.admission, engine, reqs, call.meta.deadline, call.meta.priority,
                                     on_admit))


async def _fallback(call: TextCall, body: Any) -> Choices:
    """Try each model of the chain until one produces its first chunk; after that, errors are the answer's."""
    metrics, chain = call.request.app.state.metrics, call.plan.chain
    for i, name in enumerate(chain):
        try:
            choices = _attempt(call, body, name)
            first = await anext(choices)
        except StopAsyncIteration:
            return
        except FALLBACK_ON as exc:
            if i == len(chain) - 1:
                raise
            log.warning("model %s failed before answering (%s): falling back to %s", name, exc.code, chain[i + 1])
            continue
        call.served = name
        call.charge.model = deps.pool(call.request).config(name, "chat")
        log_fields(call.request.scope).update(variant=name)
        if call.plan.route is not None:
            metrics.variant_requests.labels(call.plan.route, name, "primary" if i == 0 else "fallback").inc()
        async with closing(choices):
            yield first
            async for item in choices:
                yield item
        return


async def _guarded(choices: Choices, guard: Guardrails) -> Choices:
    """Output rules per choice as chunks arrive; a finish flushes that choice's held-back tail."""
    guards: dict[int, Any] = {}
    async with closing(choices):  # a block stops the engine at once, not when the generator is collected
        async for index, chunk in choices:
            stream = guards.setdefault(index, guard.stream())
            text = stream.feed(chunk.text) if chunk.text else ""
            if chunk.finish_reason is not None:
                text += stream.flush()
                if text:  # the held-back tail goes out before the finish
                    yield index, TextChunk(text)
                    text = ""
            if text or chunk.finish_reason is not None or chunk.usage is not None or chunk.tool_calls:
                yield index, TextChunk(text, chunk.finish_reason, chunk.usage, chunk.tool_calls)


async def _settled(call: TextCall, choices: Choices) -> Choices:
    """Pass the chunks through; at the end settle the tokens. A choice cut short (cancelled, failed) has no
    usage chunk: its streamed chunks are counted as tokens, and the prompt as estimated."""
    prompt, completion = 0, 0
    chunks: dict[int, int] = {}
    reported: set[int] = set()
    try:
        async with closing(choices):
            async for index, chunk in choices:
                chunks[index] = chunks.get(index, 0) + (1 if chunk.text else 0)
                if chunk.usage:
                    prompt = max(prompt, chunk.usage.prompt_tokens)
                    completion += chunk.usage.completion_tokens
                    reported.add(index)
                yield index, chunk
    finally:
        completion += sum(n for i, n in chunks.items() if i not in reported)
        if chunks and not prompt:
            prompt = call.charge.estimated_prompt
        deps.accountant(call.request).settle(call.charge, prompt, completion)


def _start_shadow(call: TextCall, body: Any, model: str) -> None:
    """Mirror the request to the shadow model as batch work; its answer is logged and counted, never sent."""
    request, route = call.request, call.plan.route or ""
    request_id = log_fields(request.scope).get("request_id", "-")
    content = deps.settings(request).observability.log_content

    async def mirror() -> None:
        try:
            served, engine = deps.pool(request).text_engine(model)
            reqs = _requests(call, body, served.config)
            done = await collect(admitted_choices(served.admission, engine, reqs, call.meta.deadline, "batch",
                                                  lambda _: None), len(reqs))
            request.app.state.metrics.variant_requests.labels(route, model, "shadow").inc()
            log.info("shadow %s answered request %s: %d completion tokens%s", model, request_id,
                     done.completion_tokens, f": {done.texts!r}" if content else "")
        except LLMOpsError as exc:
            log.info("shadow %s did not answer request %s: %s", model, request_id, exc.code)
        except Exception:
            log.exception("shadow %s failed on request %s", model, request_id)

    request.app.state.background.spawn(mirror())

