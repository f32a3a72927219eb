"""Text work (chat, completions) through the stages: the `Work` adapter, and the stages from admission on
as the chunks flow: admission → engine, falling back on failure before the first token → guardrails(out,
per chunk) → token and cost accounting. The cache is keyed on the chosen variant, not the alias, so an A/B
arm never serves the other arm's answers."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from llmops.engines.base import Message, TextChunk, TextRequest, TokenUsage, capabilities
from llmops.errors import EngineError, InvalidRequest, LLMOpsError, ServiceUnavailable, UnsupportedParameter
from llmops.observability.inference import InferenceObserver, TokenTally
from llmops.pipeline import chat_controls
from llmops.pipeline.accounting import PromptBound, parts_bound, worst_case_text_usd
from llmops.pipeline.generation import Choices, check_request, collect, text_requests
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.semantic_cache import namespace, normalise
from llmops.pipeline.services import Services
from llmops.pipeline.stages import Call
from llmops.protocol.completions import MAX_PROMPTS
from llmops.scheduling.admission import Ticket
from llmops.scheduling.runner import admitted_choices
from llmops.settings import ModelConfig

log = logging.getLogger("llmops.pipeline")
TextKind = Literal["chat", "completions"]
FALLBACK_ON = (ServiceUnavailable, EngineError)  # overloaded, not ready, upstream down, engine failure


@dataclass
class TextWork:
    """A chat or completions request as the pipeline sees it. `body` is the parsed request (its sampling
    fields, n, max_tokens, a prompt reference for chat)."""

    kind: TextKind
    body: Any
    messages: tuple[Message, ...] | None = None
    prompts: tuple[str, ...] = ()  # completions': one or several, each answered with n choices
    model_kind: Literal["chat"] = "chat"

    @property
    def prompt_text(self) -> str | None:
        """The first prompt (completions), as online evaluation and the shadow's log see the request."""
        return self.prompts[0] if self.prompts else None

    @property
    def choice_count(self) -> int:
        """The choices the answer holds: n for each prompt (chat: n)."""
        prompts = len(self.prompts)
        return int(self.body.n) * (prompts if prompts > 1 else 1)  # (builtin max parses keywords: it costs more)

    @property
    def model(self) -> str:
        return str(self.body.model)

    @property
    def user(self) -> str | None:
        return self.body.user  # type: ignore[no-any-return]

    @property
    def service_tier(self) -> str | None:
        return self.body.tier()  # type: ignore[no-any-return]

    def check(self, config: ModelConfig) -> None:
        check_request(self.body, config)
        if len(self.prompts) > 1 and self.choice_count > MAX_PROMPTS:
            raise InvalidRequest(f"{len(self.prompts)} prompts with n={self.body.n} make {self.choice_count} "
                                 f"choices; a request makes at most {MAX_PROMPTS}", param="n")

    def prompt(self, call: Call, services: Services) -> None:
        if self.kind == "chat" and getattr(self.body, "prompt", None) is not None:
            rendered, call.prompt_version = _render_prompt(services, call, self.body)
            self.messages = (*rendered, *(self.messages or ()))
        if self.kind == "chat" and not self.messages:
            raise InvalidRequest("messages must hold at least one message (or reference a prompt)", param="messages")

    def texts(self) -> list[str]:
        """The prompts, or the messages' contents followed by what the model reads of tools (tool-call
        arguments, tool definitions' strings: `chat_controls.tool_texts`)."""
        if self.messages is None:
            return list(self.prompts)
        return [m.content for m in self.messages] + chat_controls.tool_texts(self.messages, self.body)

    async def readable(self, call: Call) -> list[str]:
        return self.texts()

    def with_texts(self, texts: list[str]) -> None:
        if self.messages is None:
            self.prompts = tuple(texts)
            return
        count = len(self.messages)
        self.messages = tuple(dataclasses.replace(m, content=t)
                              for m, t in zip(self.messages, texts[:count], strict=True))
        if len(texts) > count:
            self.messages, self.body = chat_controls.with_tool_texts(self.messages, self.body, texts[count:])

    def input_ids(self) -> int:
        return 0

    def prompt_bound(self) -> PromptBound:
        """The prompts', or the messages' contents and tool calls' with their framing; tools as the JSON the
        template shows them in (at most their JSON's bytes, with non-ASCII escaped: longer than UTF-8)."""
        if self.messages is None:
            return parts_bound(self.prompts, len(self.prompts))
        calls = [c for m in self.messages for c in m.tool_calls]
        contents = [m.content if m.tool_call_id is None else m.content + m.tool_call_id for m in self.messages]
        bound = parts_bound([*contents, *(c.arguments + c.name + c.id for c in calls)], len(self.messages) + len(calls))
        tools = getattr(self.body, "tools", None)
        if tools:
            return PromptBound(bound.tokens + len(json.dumps([t.model_dump(exclude_none=True) for t in tools])),
                               bound.parts)
        return bound

    def worst_case_usd(self, config: ModelConfig, prompt_tokens: int, deadline_s: float) -> float:
        return worst_case_text_usd(config, prompt_tokens, self.body.requested_max_tokens(), self.choice_count)

    def max_completion_tokens(self, config: ModelConfig) -> int:
        requested = self.body.requested_max_tokens()  # 0 (echo: the prompt alone) generates nothing
        return int((config.limits.default_max_tokens if requested is None else requested) * self.choice_count)

    def cache_payload(self, call: Call) -> dict[str, Any] | None:
        body = self.body
        if not (body.temperature == 0 or body.seed is not None):
            return None
        return self._payload(call)

    def semantic_query(self, call: Call) -> tuple[str, str] | None:
        """Chat only: the namespace is everything the exact cache keys on but the messages (so the model,
        prompt version, sampling and output controls must match); the text is the normalised messages."""
        if self.kind != "chat" or self.messages is None:
            return None
        space = namespace({**self._payload(call), "messages": None})
        return space, normalise([(m.role, m.content) for m in self.messages])

    def _payload(self, call: Call) -> dict[str, Any]:
        body = self.body
        return {"model": call.config.name, "n": body.n, "max_tokens": body.requested_max_tokens(),
                "sampling": {k: list(v) if isinstance(v, tuple) else v for k, v in body.sampling_fields().items()},
                "messages": [[m.role, m.content] for m in self.messages] if self.messages is not None else None,
                "prompt": self._prompt_key(),
                "prompt_version": list(call.prompt_version) if call.prompt_version else None,
                "controls": chat_controls.cache_part(body), **({"echo": True} if self.echo else {})}

    def _prompt_key(self) -> str | list[str] | None:
        """One prompt keys as itself (as before several were taken); several as their list."""
        if not self.prompts:
            return None
        return self.prompts[0] if len(self.prompts) == 1 else list(self.prompts)

    @property
    def echo(self) -> bool:
        return self.kind == "completions" and bool(self.body.echo)

    def requests(self, config: ModelConfig) -> list[TextRequest]:
        return text_requests(self.body, config, self.body.requested_max_tokens(), prompts=self.prompts,
                             messages=self.messages)


def _render_prompt(services: Services, call: Call, body: Any) -> tuple[list[Message], tuple[str, str]]:
    registry = services.prompts
    ref = body.prompt
    version = ref.version
    experiment = services.settings.prompts.experiments.get(ref.id)
    if version is None and experiment:
        options = [(v.version, v.weight) for v in experiment]
        version = services.router.choose(f"prompt:{ref.id}", options, call.ctx.subject or body.user)
    template = registry.get(ref.id, version)
    rendered = [Message(role, text) for role, text in registry.render(template, ref.variables)]
    services.metrics.prompt_requests.labels(template.id, template.version).inc()
    call.ctx.log.update(prompt_id=template.id, prompt_version=template.version)
    return rendered, (template.id, template.version)


class closing:  # lower case: used like contextlib.aclosing
    """Close the source generator when the consumer stops early (an error, a disconnect), so the engine
    stops now rather than when the generator is garbage-collected. A class, not an @asynccontextmanager:
    that would be one more async generator per layer per request."""

    __slots__ = ("items",)

    def __init__(self, items: Choices) -> None:
        self.items = items

    async def __aenter__(self) -> Choices:
        return self.items

    async def __aexit__(self, *exc: object) -> None:
        aclose = getattr(self.items, "aclose", None)
        if aclose is not None:
            await aclose()


def run(services: Services, call: Call, work: TextWork) -> Choices:
    """The answer's chunks: the chain of models tried in order, output guardrails applied as text flows,
    tokens and cost settled at the end however it ends; a shadow copy started if the route has one. An echoed
    prompt is part of the answer the output rules read (a rule's match may begin in the prompt and end in the
    answer); online evaluation then reads it too."""
    if call.plan.shadow is not None:
        _start_shadow(services, call, work, call.plan.shadow)
    guard = services.guardrails
    assert call.charge is not None
    tally = TokenTally(call.charge.estimated_prompt)  # counted from the engine's chunks, before the guard
    if guard.active("output"):
        answer = _fallback(services, call, work, tally)
        if work.echo:
            answer = _echoed(answer, work.prompts, work.body.n)
        return _settled(services, call, _guarded(answer, guard), tally)
    chunks = _served(services, call, work, tally)
    return _echoed(chunks, work.prompts, work.body.n) if work.echo else chunks


def _open(services: Services, call: Call, work: TextWork, name: str,
          tally: TokenTally) -> tuple[Choices, InferenceObserver]:
    """One model's attempt: its admitted choices (not started yet) and the observer the caller tells of
    each chunk and of the end (`chunk`, `end`), called inline rather than as a generator layer."""
    served, engine = services.pool.text_engine(name)
    reqs = work.requests(served.config)
    # 400 naming a control this model's engine cannot honour, or logprobs that output guardrails would betray
    chat_controls.check_capabilities(engine, reqs, rewritten=services.guardrails.active("output"))
    if reqs[0].sampling.prompt_logprobs is not None and not capabilities(engine).prompt_logprobs:
        raise UnsupportedParameter("'echo' with 'logprobs' is not supported by this model: its engine cannot "
                                   "score a prompt's tokens (echo without logprobs is)", param="echo")
    estimated = call.charge.estimated_prompt if call.charge is not None else 0
    obs = InferenceObserver(services.metrics, services.tracer, name, call.ctx.log, estimated)

    def on_admit(ticket: Ticket) -> None:
        call.ticket = ticket
        tally.admitted = True
        obs.admitted(ticket)

    choices = admitted_choices(served.admission, engine, reqs, call.deadline, call.priority, on_admit)
    if len(work.prompts) > 1:
        choices = _prompts_summed(choices, work.body.n)
    return choices, obs


Opened = tuple[Choices, InferenceObserver, tuple[int, TextChunk]]  # the served attempt: its rest, observer, first


async def _first(services: Services, call: Call, work: TextWork, tally: TokenTally) -> Opened | None:
    """Try each model of the chain until one produces its first chunk (None: the engine ended with none).
    Each attempt's observer is told how it ended, a failure counted once; the served model is recorded,
    and its observer counts into `tally` from the first chunk on (told of it here)."""
    metrics, chain = services.metrics, call.plan.chain
    for i, name in enumerate(chain):
        obs: InferenceObserver | None = None
        try:
            choices, obs = _open(services, call, work, name, tally)
            first = await anext(choices)
        except StopAsyncIteration:
            if obs is not None:
                obs.end()
            return None
        except BaseException as exc:
            if obs is not None:
                obs.end(exc)
            if not isinstance(exc, FALLBACK_ON):
                raise
            if i == len(chain) - 1:
                metrics.reject(name, exc)
                raise
            log.warning("model %s failed before answering (%s): falling back to %s", name, exc.code, chain[i + 1])
            continue
        obs.count_into(tally)  # the served attempt's chunks: counted once, for the metrics and the bill
        obs.chunk(*first)
        call.served = name
        assert call.charge is not None
        call.charge.model = call.config = services.pool.config(name, "chat")
        call.ctx.log.update(variant=name)
        if call.plan.route is not None:
            metrics.variant_requests.labels(call.plan.route, name, "primary" if i == 0 else "fallback").inc()
        return choices, obs, first
    raise AssertionError("a route's chain holds at least one model")  # pragma: no cover


async def _close(items: Choices) -> None:
    """Stop the source now (the engine, the admission slot) rather than when it is garbage-collected."""
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


async def _fallback(services: Services, call: Call, work: TextWork, tally: TokenTally) -> Choices:
    """The served model's chunks (`_first`); after the first, errors are the answer's. Every chunk is told
    to the attempt's observer, which counts it into `tally`."""
    opened = await _first(services, call, work, tally)
    if opened is None:
        return
    choices, obs, (index, chunk) = opened
    try:
        yield index, chunk
        async for index, chunk in choices:
            obs.chunk(index, chunk)  # counted into `tally` (`_first`)
            yield index, chunk
    except BaseException as exc:  # a failure, a cancellation, the reader closing this early
        obs.end(exc)
        await _close(choices)
        raise
    obs.end()


async def _prompts_summed(choices: Choices, n: int) -> Choices:
    """Several prompts: each usage chunk reports as its prompt tokens those of every prompt counted so far (each
    prompt once, from the first of its n choices to report), so what keeps the largest prompt count, as the
    n choices of one prompt are counted (the tally that bills, the metrics, the usage sent), counts every
    prompt once."""
    counted: dict[int, int] = {}
    async with closing(choices):
        async for index, chunk in choices:
            if chunk.usage is not None:
                counted.setdefault(index // n, chunk.usage.prompt_tokens)
                chunk = dataclasses.replace(chunk, usage=TokenUsage(sum(counted.values()),
                                                                    chunk.usage.completion_tokens))
            yield index, chunk


async def _echoed(choices: Choices, prompts: tuple[str, ...], n: int) -> Choices:
    """echo: each choice's first chunk is its prompt (choice i's is prompt i // n), with the prompt's tokens'
    logprobs when the engine scored them (its first chunk carries them); the answer follows."""
    started: set[int] = set()
    async with closing(choices):
        async for index, chunk in choices:
            if index not in started:
                started.add(index)
                yield index, TextChunk(prompts[index // n], logprobs=chunk.prompt_logprobs)
                if chunk.prompt_logprobs:
                    chunk = dataclasses.replace(chunk, prompt_logprobs=())
                    if not (chunk.text or chunk.finish_reason or chunk.usage or chunk.logprobs):
                        continue
            yield index, chunk


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


async def _settled(services: Services, call: Call, choices: Choices, tally: TokenTally) -> Choices:
    """Pass the chunks through; at the end settle the tokens `_fallback` counted from the engine's chunks (as
    the metrics count them: observability.inference.TokenTally), however the request ended: a choice cut
    short is billed for the chunks the engine made, whether or not a guardrail let them through."""
    assert call.charge is not None
    answer: list[str] = []  # choice 0's text, for online evaluation (kept only when the route evaluates)
    evaluate = services.online_eval.wants(call.plan.route)
    engine_failed = False
    try:
        async with closing(choices):
            async for index, chunk in choices:
                if evaluate and index == 0 and chunk.text:
                    answer.append(chunk.text)
                yield index, chunk
        services.online_eval.observe(call.plan.route, call.served, _request_of(call), "".join(answer))
    except FALLBACK_ON:
        engine_failed = True
        raise
    finally:
        services.accountant.settle(call.charge, *tally.totals(engine_failed=engine_failed))


async def _served(services: Services, call: Call, work: TextWork, tally: TokenTally) -> Choices:
    """`_settled(_fallback(...))` in one generator, for output no guardrail reads (most servers), the
    observer called inline: one async-generator frame per chunk where there were three. The same on every
    path: the attempt's observer told of each chunk and of the end, the source closed when the reader stops
    early, the answer sent to online evaluation when it completes, the tokens settled however it ends."""
    assert call.charge is not None
    answer: list[str] = []  # choice 0's text, for online evaluation (kept only when the route evaluates)
    evaluate = services.online_eval.wants(call.plan.route)
    engine_failed = False
    try:
        opened = await _first(services, call, work, tally)
        if opened is not None:
            choices, obs, (index, chunk) = opened
            try:
                if evaluate and index == 0 and chunk.text:
                    answer.append(chunk.text)
                yield index, chunk
                async for index, chunk in choices:
                    obs.chunk(index, chunk)  # counted into `tally` (`_first`)
                    if evaluate and index == 0 and chunk.text:
                        answer.append(chunk.text)
                    yield index, chunk
            except BaseException as exc:  # as `_fallback`
                obs.end(exc)
                await _close(choices)
                raise
            obs.end()
        services.online_eval.observe(call.plan.route, call.served, _request_of(call), "".join(answer))
    except FALLBACK_ON:
        engine_failed = True
        raise
    finally:
        services.accountant.settle(call.charge, *tally.totals(engine_failed=engine_failed))


def _request_of(call: Call) -> tuple[Message, ...] | str | None:
    work = call.work
    return (work.messages or work.prompt_text) if isinstance(work, TextWork) else None


def _start_shadow(services: Services, call: Call, work: TextWork, model: str) -> None:
    """Mirror the request to the shadow model as batch work; its answer is logged and counted, never sent."""
    route, request_id = call.plan.route or "", call.ctx.request_id
    content = services.settings.observability.log_content

    async def mirror() -> None:
        try:
            served, engine = services.pool.text_engine(model)
            reqs = work.requests(served.config)
            done = await collect(admitted_choices(served.admission, engine, reqs, call.deadline, "batch",
                                                  lambda _: None), len(reqs))
            services.metrics.variant_requests.labels(route, model, "shadow").inc()
            services.online_eval.observe(call.plan.route, model, work.messages or work.prompt_text, done.texts[0])
            log.info("shadow %s answered request %s: %d completion tokens%s", model, request_id,
                     done.completion_tokens, f": {done.texts!r}" if content else "")
        except LLMOpsError as exc:
            log.info("shadow %s did not answer request %s: %s", model, request_id, exc.code)
        except Exception:
            log.exception("shadow %s failed on request %s", model, request_id)

    services.background.spawn(mirror())
