"""Observing one inference request as its output flows: time to first token, inter-token latency,
end-to-end latency, token counts, queue time, outcome; into metrics, the access-log line and spans."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from llmops.engines.base import TextChunk
from llmops.errors import LLMOpsError
from llmops.observability.metrics import Metrics, rejection_reason
from llmops.observability.tracing import Tracer
from llmops.scheduling.admission import Ticket


class InferenceObserver:
    def __init__(self, metrics: Metrics, tracer: Tracer, model: str, log: dict[str, Any]) -> None:
        self.metrics, self.tracer, self.model, self.log = metrics, tracer, model, log
        self.started = time.perf_counter()
        self._admission = tracer.start("admission", {"llmops.model": model})
        self._engine: Any = None
        log["model"] = model

    def admitted(self, ticket: Ticket) -> None:
        self.metrics.queue_time.labels(self.model).observe(ticket.queued_s)
        self.log.update(queue_position=ticket.position, queue_ms=round(ticket.queued_s * 1000, 1))
        self._admission.end()
        self._engine = self.tracer.start("engine.generate", {"llmops.model": self.model})

    async def text(self, choices: AsyncIterator[tuple[int, TextChunk]]) -> AsyncIterator[tuple[int, TextChunk]]:
        first: float | None = None
        last = self.started
        prompt = completion = 0
        status = "error"
        try:
            async for index, chunk in choices:
                now = time.perf_counter()
                if chunk.text:
                    if first is None:
                        first = now
                        self.metrics.ttft.labels(self.model).observe(now - self.started)
                    else:
                        self.metrics.itl.labels(self.model).observe(now - last)
                    last = now
                if chunk.usage:
                    prompt = max(prompt, chunk.usage.prompt_tokens)
                    completion += chunk.usage.completion_tokens
                yield index, chunk
            status = "success"
        except LLMOpsError as exc:
            status = self._rejected(exc)
            raise
        finally:
            self._finish(status, prompt, completion)

    def _rejected(self, exc: LLMOpsError) -> str:
        reason = rejection_reason(exc.code)
        if reason is not None:
            self.metrics.rejections.labels(self.model, reason).inc()
            return reason
        return "error"

    def _finish(self, status: str, prompt: int, completion: int) -> None:
        elapsed = time.perf_counter() - self.started
        m = self.metrics
        m.requests.labels(self.model, status).inc()
        if status == "success":
            m.latency.labels(self.model).observe(elapsed)
            m.e2e.labels(self.model).observe(elapsed)
        m.prompt_tokens.labels(self.model).inc(prompt)
        m.generation_tokens.labels(self.model).inc(completion)
        self.log.update(outcome=status, prompt_tokens=prompt, completion_tokens=completion)
        for span in (self._admission, self._engine):
            if span is not None:
                span.end()

    def images(self, status: str, count: int) -> None:
        elapsed = time.perf_counter() - self.started
        self.metrics.requests.labels(self.model, status).inc()
        if status == "success":
            self.metrics.latency.labels(self.model).observe(elapsed)
            self.metrics.e2e.labels(self.model).observe(elapsed)
            self.metrics.images.labels(self.model).inc(count)
        self.log.update(outcome=status, images=count)
        self._admission.end()

    def classified(self, status: str, count: int) -> None:
        elapsed = time.perf_counter() - self.started
        self.metrics.requests.labels(self.model, status).inc()
        if status == "success":
            self.metrics.latency.labels(self.model).observe(elapsed)
            self.metrics.e2e.labels(self.model).observe(elapsed)
            self.metrics.images_classified.labels(self.model).inc(count)
        self.log.update(outcome=status, images=count)
        for span in (self._admission, self._engine):
            if span is not None:
                span.end()
