"""The fast refusal path's decisions. The HTTP edge (`middleware/admission_gate.py`) asks them before FastAPI
reads and parses a request's body, so that under overload a refusal costs a dictionary lookup, not a
request's parse, guardrails and budget checks.

A request is refused early only when the pipeline would certainly refuse it at the same point for the same
reason: every model its name may reach (an alias's variants and fallbacks) is unknown (404), failed or
loading, or has a full queue or is closing (503). What could be answered without admission is never refused
here: a request a cache might answer (no `Cache-Control: no-cache`, and: the exact cache on and the request
deterministic, temperature 0 or a seed; or the semantic cache on, for chat), or one its key may not send to
that model (the pipeline's 403 comes first).

The body is not read at all when its content cannot change the answer: one model of the kind, no aliases,
and no cache that could answer it. Then every request of the kind goes to that model (or names an unknown
one, and is refused either way: 503 while the model is full, instead of 404)."""

from __future__ import annotations

from typing import Any, Literal

from llmops.errors import LLMOpsError
from llmops.pipeline.cache import opted_out
from llmops.pipeline.services import Services
from llmops.pipeline.stages import ModelKind
from llmops.stores.keys import ApiKey

Cached = Literal["none", "exact", "semantic"]  # which caches may answer a path's requests


class EdgeGate:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._sole: dict[str, str | None] = {}  # kind -> sole_model's answer: the models and routes are fixed

    def sole_model(self, kind: ModelKind) -> str | None:
        """The one model every `kind` request reaches whatever its body says, when there is one (worked out
        once per kind: the configured models and routes do not change while the app runs)."""
        if kind not in self._sole:
            names = self.services.pool.names_of(kind)
            self._sole[kind] = names[0] if len(names) == 1 and not self.services.router.names() else None
        return self._sole[kind]

    def _semantic(self, cached: Cached) -> bool:
        return cached == "semantic" and self.services.semantic_cache is not None

    def may_be_cached(self, cached: Cached, cache_control: str | None) -> bool:
        """Whether a request on this path could be answered from a cache at all."""
        on = self.services.settings.cache.enabled or self._semantic(cached)
        return cached != "none" and on and not opted_out(cache_control)

    def needs_body(self, kind: ModelKind, cached: Cached, cache_control: str | None) -> bool:
        return self.sole_model(kind) is None or self.may_be_cached(cached, cache_control)

    def refusal(self, kind: ModelKind, body: dict[str, Any] | None, cached: Cached, cache_control: str | None,
                key: ApiKey | None) -> tuple[str, LLMOpsError] | None:
        """(model, error) when the request is certainly refused; `body` None: not read (see `needs_body`)."""
        if body is None:
            model: Any = self.sole_model(kind)
        else:
            if self.may_be_cached(cached, cache_control) and (self._semantic(cached) or _deterministic(body)):
                return None
            model = body.get("model")
            if model is None and kind == "image":
                model = self.services.pool.default_image_model()
        if not isinstance(model, str) or not model or (key is not None and not key.allows(model)):
            return None  # the pipeline answers: 400 for a missing or malformed name, 403 for a forbidden one
        refusals = [self.services.pool.refusal(m, kind) for m in self.services.router.members(model)]
        if any(r is None for r in refusals):
            return None
        first = refusals[0]
        assert first is not None
        return model, first


def _deterministic(body: dict[str, Any]) -> bool:
    return body.get("temperature") == 0 or body.get("seed") is not None
