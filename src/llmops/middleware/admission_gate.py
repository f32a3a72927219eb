"""The fast refusal path: an inference request that admission would certainly refuse (its model's queue is
full, the model is unknown, failed or loading) is answered here, 503 or 404 in the OpenAI envelope, before
FastAPI and pydantic see its body; when the body cannot change the answer, before it is even read. Draining
(drain.py) and rate limits (rate_limit.py) are refused earlier still, from the headers.

The edge (middleware/edge.py) asks it twice: before the body is read, for what needs no body, and after
the body limit has read and checked it, from the body's model name (parsed once: the route validates the
same parse).

Under a burst most requests are refusals: each costs a few dictionary lookups here instead of a parse, the
guardrails and a budget check, so the event loop stays free for the admitted streams and for the next
caller. The decisions are the pipeline's (`pipeline.gate.EdgeGate`); the refusal is counted here, once, in
llmops_rejections_total, and the request never reaches the pipeline to be counted again."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol

from starlette.types import Scope

from llmops.errors import LLMOpsError, ModelNotFound, Overloaded, ShuttingDown
from llmops.http_edge import UNKNOWN_MODEL, api_key, log_fields
from llmops.observability.metrics import Metrics
from llmops.stores.keys import ApiKey

Kind = Literal["chat", "image"]
Cached = Literal["none", "exact", "semantic"]  # which caches may answer a path's requests
# path -> (the kind of model it needs, which caches may answer it)
GATED: dict[str, tuple[Kind, Cached]] = {
    "/v1/chat/completions": ("chat", "semantic"), "/v1/completions": ("chat", "exact"),
    "/v1/images/generations": ("image", "exact"), "/generate": ("image", "none"), "/v1/images/jobs": ("image", "none"),
}


ADMISSION_REFUSALS = (Overloaded, ShuttingDown)  # inference_requests_total counts these as outcomes


class EdgeRoute(NamedTuple):
    """What a refusal here leaves in `scope["route"]`: the route's template (its path: gated routes have no
    parameters), so the HTTP metrics label it as FastAPI's routing would have."""

    path: str


class Gate(Protocol):
    def needs_body(self, kind: Kind, cached: Cached, cache_control: str | None) -> bool: ...

    def refusal(self, kind: Kind, body: dict[str, Any] | None, cached: Cached, cache_control: str | None,
                key: ApiKey | None) -> tuple[str, LLMOpsError] | None: ...


class AdmissionGate:
    """The fast refusals, counted here. `gated` is `GATED`'s entry for the request's path."""

    def __init__(self, gate: Gate, metrics: Metrics) -> None:
        self.gate, self.metrics = gate, metrics

    def needs_body(self, scope: Scope, gated: tuple[Kind, Cached]) -> bool:
        return self.gate.needs_body(gated[0], gated[1], _header(scope, b"cache-control"))

    def refusal(self, scope: Scope, gated: tuple[Kind, Cached], body: dict[str, Any] | None) -> LLMOpsError | None:
        """The refusal admission would certainly give (counted, and the route labelled for the metrics),
        or None. `body` is the parsed body, or None where the body cannot change the answer."""
        kind, cached = gated
        refused = self.gate.refusal(kind, body, cached, _header(scope, b"cache-control"), api_key(scope))
        if refused is None:
            return None
        model, error = refused
        scope["route"] = EdgeRoute(scope["path"])
        known = not isinstance(error, ModelNotFound)  # a name the caller made up stays out of logs and labels
        if known:
            log_fields(scope)["model"] = model
        reason = self.metrics.reject(model if known else UNKNOWN_MODEL, error)
        if reason is not None and isinstance(error, ADMISSION_REFUSALS):  # as the pipeline's observer counts them
            self.metrics.requests.labels(model, reason).inc()
            log_fields(scope)["outcome"] = reason
        return error


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:  # a loop, not next() over a generator: one object fewer a call
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None
