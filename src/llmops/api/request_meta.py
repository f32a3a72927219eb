"""Per-request scheduling inputs from headers: the deadline (`X-Request-Timeout`, seconds, capped by the
model's max_deadline_s) and the priority class (`X-Priority: interactive|batch`, or OpenAI's
`service_tier: flex` for batch)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Request

from llmops.errors import InvalidRequest
from llmops.scheduling.admission import Priority, Ticket
from llmops.settings import ModelConfig


@dataclass
class RequestMeta:
    deadline: float  # time.monotonic()
    priority: Priority
    ticket: Ticket | None = None

    def admitted(self, ticket: Ticket) -> None:
        self.ticket = ticket

    def headers(self) -> dict[str, str]:
        if self.ticket is None:
            return {}
        return {"X-Queue-Position": str(self.ticket.position),
                "X-Queue-Time-Ms": str(round(self.ticket.queued_s * 1000))}


def _timeout(request: Request, cfg: ModelConfig) -> float:
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return cfg.limits.default_deadline_s
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidRequest("X-Request-Timeout must be a positive number of seconds", param="X-Request-Timeout")
    return min(value, cfg.limits.max_deadline_s)


def _priority(request: Request, service_tier: str | None) -> Priority:
    raw = request.headers.get("x-priority")
    if raw is None:
        key = request.scope.get("state", {}).get("api_key")
        default: Priority = key.priority if key is not None else "interactive"
        return "batch" if service_tier == "flex" else default
    if raw not in ("interactive", "batch"):
        raise InvalidRequest("X-Priority must be 'interactive' or 'batch'", param="X-Priority")
    return "batch" if raw == "batch" else "interactive"


def request_meta(request: Request, cfg: ModelConfig, service_tier: str | None = None) -> RequestMeta:
    return RequestMeta(time.monotonic() + _timeout(request, cfg), _priority(request, service_tier))
