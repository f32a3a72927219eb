"""Routing: a model name can be an alias over weighted variants (A/B, e.g. 90/10). The variant is picked
from a point in [0, 1) that is a hash of the alias and the sticky subject (the API key, or the request's
`user`), so one caller keeps one variant while the weights stay put; without a subject the point is random.
After the chosen variant come the route's fallbacks, tried in order when it fails or is overloaded before
answering. A shadow model gets a copy of a sample of the traffic; its answers are logged, never returned.
Prompt experiments (A/B over prompt versions) pick with the same function."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmops.settings import RouteConfig


def point(name: str, subject: str) -> float:
    digest = hashlib.sha256(f"{name}\0{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(options: Sequence[tuple[str, float]], at: float) -> str:
    """The option whose share of the total weight covers `at`."""
    total = sum(weight for _, weight in options)
    edge = 0.0
    for name, weight in options:
        edge += weight / total
        if at < edge:
            return name
    return options[-1][0]


@dataclass(frozen=True)
class Plan:
    requested: str
    route: str | None  # the alias, when the requested name is one
    chain: tuple[str, ...]  # the chosen model first, then the fallbacks
    shadow: str | None = None


class Router:
    def __init__(self, routes: Sequence[RouteConfig], rng: Callable[[], float] = random.random) -> None:
        self._routes = {r.name: r for r in routes}
        self._rng = rng

    def names(self) -> list[str]:
        return list(self._routes)

    def choose(self, name: str, options: Sequence[tuple[str, float]], subject: str | None) -> str:
        return pick(options, point(name, subject) if subject else self._rng())

    def members(self, model: str) -> tuple[str, ...]:
        """Every model a request for `model` may reach: an alias's variants and fallbacks, else itself."""
        route = self._routes.get(model)
        if route is None:
            return (model,)
        return tuple(dict.fromkeys([*(v.model for v in route.variants), *route.fallbacks]))

    def plan(self, model: str, key_id: str | None, user: str | None) -> Plan:
        route = self._routes.get(model)
        if route is None:
            return Plan(model, None, (model,))
        subject = {"key": key_id or user, "user": user, "none": None}[route.sticky]
        chosen = self.choose(route.name, [(v.model, v.weight) for v in route.variants], subject)
        chain = (chosen, *[f for f in route.fallbacks if f != chosen])
        shadow = route.shadow.model if route.shadow and self._rng() < route.shadow.sample else None
        return Plan(model, route.name, chain, shadow)
