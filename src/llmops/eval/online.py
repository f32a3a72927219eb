"""Online evaluation: a sample of a route's answers (its variants' and its shadow's) is scored in the
background with the route's `online_eval` scorers, and `llmops_eval_score{route,variant,scorer}` is the mean of
the last `window` scores. The pipeline holds one OnlineEvaluator (built with the app's services) and hands over
each finished answer with `observe(route, variant, request, answer)`: it samples, schedules the scoring on the
app's background tasks and returns at once, so the user's answer never waits; a scorer that fails counts in
`llmops_eval_errors_total`, never as a zero."""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from llmops.engines.base import Message
from llmops.eval.scorers import Item, Scorer, ScorerError, build
from llmops.observability.metrics import Metrics
from llmops.settings import OnlineEval, RouteConfig

log = logging.getLogger("llmops.eval.online")
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class OnlineEvaluator:
    def __init__(self, routes: Sequence[RouteConfig], metrics: Metrics, spawn: Spawn,
                 rng: Callable[[], float] = random.random) -> None:
        self._configs: dict[str, OnlineEval] = {r.name: r.online_eval for r in routes if r.online_eval}
        self._scorers: dict[str, list[Scorer]] = {name: [build(s, None) for s in c.scorers]
                                                  for name, c in self._configs.items()}
        self._windows: dict[tuple[str, str, str], deque[float]] = {}
        self._metrics, self._spawn, self._rng = metrics, spawn, rng

    def wants(self, route: str | None) -> bool:
        return route is not None and route in self._configs

    def observe(self, route: str | None, variant: str, request: Sequence[Message] | str | None,
                answer: str) -> None:
        """Score this answer later, if the route evaluates online and the sample picks it. Never blocks."""
        if route is None or route not in self._configs or self._rng() >= self._configs[route].sample:
            return
        try:
            self._spawn(self._score(route, variant, Item(question_of(request)), answer))
        except Exception:  # the answer has been given; evaluation must never fail it
            log.exception("online evaluation of route %s could not start", route)

    async def _score(self, route: str, variant: str, item: Item, answer: str) -> None:
        for scorer in self._scorers[route]:
            labels = (route, variant, scorer.label)
            try:
                value = await scorer.score(answer, item)
            except ScorerError as exc:
                self._metrics.eval_errors.labels(*labels).inc()
                log.info("online scorer %s on %s/%s failed: %s", scorer.label, route, variant, exc)
                continue
            except Exception:
                self._metrics.eval_errors.labels(*labels).inc()
                log.exception("online scorer %s on %s/%s failed", scorer.label, route, variant)
                continue
            if value is None:
                continue
            window = self._windows.setdefault(labels, deque(maxlen=self._configs[route].window))
            window.append(value)
            self._metrics.eval_samples.labels(*labels).inc()
            self._metrics.eval_score.labels(*labels).set(sum(window) / len(window))


def question_of(request: Sequence[Message] | str | None) -> str:
    if request is None or isinstance(request, str):
        return request or ""
    users = [m.content for m in request if m.role == "user"]
    return users[-1] if users else ""
