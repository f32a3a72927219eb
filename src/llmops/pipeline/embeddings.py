"""Embeddings work through the stages: the `Work` adapter, and the stages from admission on: a slot at the
embeddings model's admission (the engine coalesces concurrent requests into one forward batch), the
engine within the request's deadline, metrics, and the prompt tokens settled however it ends. Not cached:
an embedding costs about what a cache lookup does."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from llmops.engines.base import EmbeddingResult
from llmops.errors import DeadlineExceeded
from llmops.observability.inference import InferenceObserver
from llmops.pipeline.accounting import PromptBound, cost_usd, parts_bound
from llmops.pipeline.services import Services
from llmops.pipeline.stages import Call
from llmops.settings import ModelConfig

Input = str | list[int]  # a text, or token ids of the model's own vocabulary


class EmbeddingsWork:
    """An embeddings request as the pipeline sees it: its items (texts, token-id lists) and dimensions.
    The guardrails read the texts and the token ids decoded; ids a rule did not change pass as they are."""

    kind = "embeddings"
    model_kind: Literal["embeddings"] = "embeddings"
    service_tier = None

    def __init__(self, model: str, inputs: list[Input], dimensions: int | None, user: str | None) -> None:
        self.model, self.inputs, self.dimensions, self.user = model, inputs, dimensions, user
        self._read: list[str] | None = None  # readable()'s texts, one per item

    def check(self, config: ModelConfig) -> None:
        return None  # dimensions are the engine's to check (it knows its sizes)

    def prompt(self, call: Call, services: Services) -> None:
        return None

    def texts(self) -> list[str]:
        return [x for x in self.inputs if isinstance(x, str)]

    async def readable(self, call: Call) -> list[str]:
        """Every item as text: token ids decoded by the model's own tokenizer (a rule must not be passed by
        sending its words as ids)."""
        ids = [x for x in self.inputs if not isinstance(x, str)]
        if not ids:
            self._read = self.texts()
            return list(self._read)
        _, engine = call.services.pool.embedding_engine(call.config.name)
        decoded = iter(await engine.decode(ids))
        self._read = [x if isinstance(x, str) else next(decoded) for x in self.inputs]
        return list(self._read)

    def with_texts(self, texts: list[str]) -> None:
        """Texts take the guardrails' version; token ids stay ids unless a rule changed their text (then the
        redacted text is embedded in their place)."""
        read = self._read if self._read is not None else self.texts()
        self.inputs = [t if isinstance(x, str) or t != r else x
                       for x, r, t in zip(self.inputs, read, texts, strict=True)]

    def input_ids(self) -> int:
        return sum(len(x) for x in self.inputs if isinstance(x, list))

    def prompt_bound(self) -> PromptBound:
        """The texts' bound and the ids given as ids, one for one, with each input's special tokens."""
        bound = parts_bound(self.texts(), len(self.inputs))
        return PromptBound(bound.tokens + self.input_ids(), bound.parts)

    def worst_case_usd(self, config: ModelConfig, prompt_tokens: int, deadline_s: float) -> float:
        return cost_usd(config, prompt_tokens, 0, 0, 0.0)

    def max_completion_tokens(self, config: ModelConfig) -> int:
        return 0

    def cache_payload(self, call: Call) -> dict[str, Any] | None:
        return None

    def semantic_query(self, call: Call) -> tuple[str, str] | None:
        return None


async def embed(services: Services, call: Call, work: EmbeddingsWork) -> EmbeddingResult:
    """Stages admission, engine and accounting: a slot at the model's admission until the deadline, the
    vectors, requests/latency/tokens observed; the prompt tokens settle the budget reservation."""
    served, engine = services.pool.embedding_engine(call.config.name)
    obs = InferenceObserver(services.metrics, services.tracer, served.config.name, call.ctx.log)
    status, tokens = "error", 0
    try:
        async with served.admission.slot(call.deadline, call.priority) as ticket:
            call.ticket = ticket
            obs.admitted(ticket)
            result = await _within(engine.embed(work.inputs, work.dimensions), call.deadline)
        tokens, status = result.prompt_tokens, "success"
        call.served = served.config.name
        return result
    except BaseException as exc:
        status = obs.outcome(exc)
        raise
    finally:
        obs.embedded(status, tokens, len(work.inputs))
        assert call.charge is not None
        services.accountant.settle(call.charge, tokens)


async def _within(work: Any, deadline: float) -> EmbeddingResult:
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await work  # type: ignore[no-any-return]
    except TimeoutError:
        raise DeadlineExceeded("the request ran past its deadline") from None
