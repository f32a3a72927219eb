"""What the pipeline knows about one HTTP request, read once at the edge (api/deps.context) into plain
values: who calls, which scheduling hints they sent, whether they opted out of the cache, and the
access-log fields the stages add to. No framework types: a stage never sees a Request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from llmops.errors import InvalidRequest
from llmops.scheduling.admission import Priority
from llmops.settings import ModelConfig
from llmops.stores.keys import ApiKey


@dataclass
class RequestContext:
    key: ApiKey | None  # None on an open server
    request_id: str = "-"
    timeout_s: float | None = None  # X-Request-Timeout, capped later by the model's max_deadline_s
    priority: Priority | None = None  # X-Priority; None: the key's class (or service_tier flex); never above the key's
    cache_opt_out: bool = False  # Cache-Control: no-cache / no-store
    log: dict[str, Any] = field(default_factory=dict)  # the access-log line's fields (shared with the edge)
    received: float = field(default_factory=time.monotonic)

    @property
    def subject(self) -> str | None:
        return self.key.id if self.key is not None else None

    def deadline(self, cfg: ModelConfig) -> float:
        """The request's deadline (`time.monotonic()`): its own timeout capped by the model's, else the default."""
        timeout = cfg.limits.default_deadline_s if self.timeout_s is None else min(self.timeout_s,
                                                                                  cfg.limits.max_deadline_s)
        return self.received + timeout

    def priority_for(self, service_tier: str | None) -> Priority:
        """The request's admission class: what it asked for (X-Priority, else `service_tier` flex: batch),
        within its key's class, which is the ceiling: a batch key's requests are batch whatever they send
        (a header may lower a request's priority, never raise it above what its key was given). Without a
        key (an open server), what it asked for, else interactive."""
        asked = self.priority if self.priority is not None else "batch" if service_tier == "flex" else None
        if self.key is None:
            return asked or "interactive"
        if self.key.priority == "batch":
            return "batch"
        return asked or self.key.priority


def parse_timeout(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidRequest("X-Request-Timeout must be a positive number of seconds", param="X-Request-Timeout")
    return value


def parse_priority(raw: str | None) -> Priority | None:
    if raw is None:
        return None
    if raw not in ("interactive", "batch"):
        raise InvalidRequest("X-Priority must be 'interactive' or 'batch'", param="X-Priority")
    return "batch" if raw == "batch" else "interactive"
