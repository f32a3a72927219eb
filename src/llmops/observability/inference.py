"""Observing one inference request as its output flows: time to first token, inter-token latency,
end-to-end latency, token counts, queue time, outcome; into metrics, the access-log line and spans.

Outcomes (`inference_requests_total{status}`): success; cached (answered from the response cache, exact or
semantic, without the engine: counted by pipeline/stages.cache_lookup); cancelled (the client went away, or
cancelled the job: not an error); a refusal's reason (overload, deadline, budget...: also in
llmops_rejections_total); error (the engine failed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from llmops.engines.base import TextChunk, TokenUsage
from llmops.errors import LLMOpsError, RequestCancelled
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer


class Admitted(Protocol):
    """What admission told (scheduling.admission.Ticket)."""

    position: int
    queued_s: float


class TokenTally:
    """The tokens one request used, counted the one way both metrics and billing count them, from the
    engine's chunks (before output guardrails, which hold text back): a choice's usage chunk (the engine's
    count) when it came, else its chunks with text (a choice cut short, by a disconnect, a deadline, a
    guardrail's block or a failure, has no usage chunk). The prompt is the usage chunks' count, else
    `estimated_prompt` once any chunk came, or once the engine took the request (`admitted`) and it ended
    other than by the engine failing (`totals(engine_failed=...)`): a request cut by its deadline or its
    client during a long prefill still used the engine."""

    __slots__ = ("admitted", "chunks", "completion", "estimated_prompt", "prompt", "reported")

    def __init__(self, estimated_prompt: int = 0) -> None:
        self.estimated_prompt = estimated_prompt
        self.prompt = self.completion = 0
        self.admitted = False
        self.chunks: dict[int, int] = {}
        self.reported: set[int] = set()

    def add(self, index: int, chunk: TextChunk) -> None:
        """One chunk of choice `index` (InferenceObserver.chunk counts the same way, inline)."""
        self.chunks[index] = self.chunks.get(index, 0) + (1 if chunk.text else 0)
        if chunk.usage:
            self.add_usage(index, chunk.usage)

    def add_usage(self, index: int, usage: TokenUsage) -> None:
        """Choice `index`'s usage chunk: the engine's count replaces its chunks'."""
        self.prompt = max(self.prompt, usage.prompt_tokens)
        self.completion += usage.completion_tokens
        self.reported.add(index)

    def totals(self, *, engine_failed: bool = False) -> tuple[int, int]:
        """(prompt, completion) tokens so far."""
        completion = self.completion + sum(n for i, n in self.chunks.items() if i not in self.reported)
        used = self.chunks or (self.admitted and not engine_failed)
        return self.prompt or (self.estimated_prompt if used else 0), completion


class InferenceObserver:
    def __init__(self, metrics: Metrics, tracer: Tracer, model: str, log: dict[str, Any],
                 estimated_prompt: int = 0) -> None:
        self.metrics, self.tracer, self.model, self.log = metrics, tracer, model, log
        self.series = metrics.of_model(model)
        self.tally = TokenTally(estimated_prompt)
        self.started = time.perf_counter()
        self._admission = tracer.start("admission", {"llmops.model": model})
        self._engine: Any = None
        self._first: float | None = None  # when the first chunk with text came (time to first token)
        self._last = self.started  # when the last one did (inter-token latency)
        log["model"] = model

    def admitted(self, ticket: Admitted) -> None:
        self.series.queue_time.observe(ticket.queued_s)
        self.log.update(queue_position=ticket.position, queue_ms=round(ticket.queued_s * 1000, 1))
        self.tally.admitted = True
        self._admission.end()
        self._engine = self.tracer.start("engine.generate", {"llmops.model": self.model})

    def count_into(self, tally: TokenTally) -> None:
        """Count the chunks from now on into `tally` (the request's, which bills), not into one of this
        attempt's own: once an attempt has answered, the two would count the same chunks (the pipeline's
        fallback ends at the first chunk), so one `add` a chunk instead of two. Call it before the first
        chunk; the tally then also holds this attempt's admission."""
        tally.admitted = tally.admitted or self.tally.admitted
        self.tally = tally

    async def text(self, choices: AsyncIterator[tuple[int, TextChunk]]) -> AsyncIterator[tuple[int, TextChunk]]:
        """`choices` observed as they pass (`chunk` each, `end` however it ends)."""
        try:
            async for index, chunk in choices:
                self.chunk(index, chunk)
                yield index, chunk
        except BaseException as exc:
            self.end(exc)
            raise
        self.end()

    def chunk(self, index: int, chunk: TextChunk) -> None:
        """One chunk from the engine: time to first token or inter-token latency, the token tally. A method
        the pipeline calls as chunks pass (pipeline.text), rather than a generator layer of its own."""
        chunks = self.tally.chunks  # `TokenTally.add`, inline (a call fewer per chunk): the chunks with text...
        if chunk.text:
            now = time.perf_counter()
            if self._first is None:
                self._first = now
                self.series.ttft.observe(now - self.started)
            else:
                self.series.itl.observe(now - self._last)
            self._last = now
            chunks[index] = chunks.get(index, 0) + 1
        elif index not in chunks:
            chunks[index] = 0
        if chunk.usage:  # ...and the engine's count
            self.tally.add_usage(index, chunk.usage)

    def end(self, exc: BaseException | None = None) -> None:
        """The output ended: with no exception a success; cancelled when the client went away (a cancellation,
        or the reader closing the output mid-stream); a refusal's reason (counted once) or error otherwise."""
        if exc is None:
            status = "success"
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            status = "cancelled"
        elif isinstance(exc, LLMOpsError):
            status = self.outcome(exc)
        else:
            status = "error"
        self._finish(status, *self.tally.totals(engine_failed=status == "error"))

    def outcome(self, exc: BaseException) -> str:
        """The status label for a request that ended with `exc` (a refusal is counted as one, once)."""
        if isinstance(exc, (asyncio.CancelledError, RequestCancelled)):
            return "cancelled"
        if isinstance(exc, LLMOpsError):
            return self.metrics.reject(self.model, exc) or "error"
        return "error"

    def _finish(self, status: str, prompt: int, completion: int) -> None:
        elapsed = time.perf_counter() - self.started
        series = self.series
        series.requests(status).inc()
        if status == "success":
            series.latency.observe(elapsed)
            series.e2e.observe(elapsed)
        series.prompt_tokens.inc(prompt)
        series.generation_tokens.inc(completion)
        self.log.update(outcome=status, prompt_tokens=prompt, completion_tokens=completion)
        self._end_spans()

    def embedded(self, status: str, prompt_tokens: int, inputs: int) -> None:
        """An embeddings request ended: requests, latency and prompt tokens as for text; inputs counted."""
        self.metrics.embedding_inputs.labels(self.model).inc(inputs if status == "success" else 0)
        self._finish(status, prompt_tokens, 0)

    def images_failed(self, exc: BaseException) -> None:
        self.images(self.outcome(exc), 0)

    def images(self, status: str, count: int) -> None:
        self._counted(status, count, self.metrics.images)

    def classified(self, status: str, count: int) -> None:
        self._counted(status, count, self.metrics.images_classified)

    def _counted(self, status: str, count: int, counter: Any) -> None:
        """A request for `count` items (images made or classified) ended: requests, latency, the items."""
        elapsed = time.perf_counter() - self.started
        self.metrics.requests.labels(self.model, status).inc()
        if status == "success":
            self.metrics.latency.labels(self.model).observe(elapsed)
            self.metrics.e2e.labels(self.model).observe(elapsed)
            counter.labels(self.model).inc(count)
        self.log.update(outcome=status, images=count)
        self._end_spans()

    def _end_spans(self) -> None:
        for span in (self._admission, self._engine):
            if span is not None:
                span.end()
