"""Every Prometheus metric, defined in this one module, on a registry owned by the app (nothing global).

The guide's four keep their names: inference_requests_total{model,status}, inference_latency_seconds{model}
(its buckets, 0.5-60 s), gpu_utilization_percent{gpu} (NVML, where a GPU exists) and
inference_queue_size{model}. The rest are named like vLLM's where they overlap, with an `llmops_` prefix
instead of `vllm:`.

Label values come from closed sets, so no request can create series: a `model` label outside the served
models becomes "unknown" (every metric with a model label, whoever calls it); the HTTP metrics' method and
route are normalised by middleware/observe.py ("OTHER", "unmatched").

One process per container is the design (models are loaded once per process; scale out with replicas),
so the default registry is process-local and there is no multiprocess mode to configure.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmops.errors import LLMOpsError, kind_of

GUIDE_LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class ModelLoad:
    running: int
    waiting: int
    state: str


class _LiveCollector(Collector):
    """Gauges read at scrape time: queue depth, running requests, model readiness, GPU utilisation."""

    def __init__(self, loads: Callable[[], dict[str, ModelLoad]], gpus: Callable[[], dict[str, float]]) -> None:
        self._loads, self._gpus = loads, gpus

    def collect(self) -> Iterator[Metric]:
        loads = self._loads()
        queue = GaugeMetricFamily("inference_queue_size", "Requests waiting for a slot (the guide's)", labels=["model"])
        waiting = GaugeMetricFamily("llmops_num_requests_waiting", "Requests waiting for a slot", labels=["model"])
        running = GaugeMetricFamily("llmops_num_requests_running", "Requests on the engine", labels=["model"])
        ready = GaugeMetricFamily("llmops_model_ready", "1 when the model is loaded and serving", labels=["model"])
        for model, load in loads.items():
            queue.add_metric([model], load.waiting)
            waiting.add_metric([model], load.waiting)
            running.add_metric([model], load.running)
            ready.add_metric([model], 1.0 if load.state == "ready" else 0.0)
        yield from (queue, waiting, running, ready)
        gpu = GaugeMetricFamily("gpu_utilization_percent", "GPU utilisation from NVML (the guide's)", labels=["gpu"])
        for index, percent in self._gpus().items():
            gpu.add_metric([index], percent)
        yield gpu


class _LoopCollector(Collector):
    """asyncio tasks alive in the server's event loop, read at scrape time (a leak shows as growth)."""

    def collect(self) -> Iterator[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the loop (tests): nothing to report
            return
        yield GaugeMetricFamily("llmops_event_loop_tasks", "asyncio tasks alive in the event loop", value=tasks)


UNKNOWN_MODEL = "unknown"


class ModelNames:
    """The closed set of `model` label values: the served models, once known (until then, any)."""

    def __init__(self) -> None:
        self._source: Callable[[], Collection[str]] | None = None
        self._names: frozenset[str] | None = None

    def watch(self, source: Callable[[], Collection[str]]) -> None:
        self._source, self._names = source, None

    def label(self, value: str) -> str:
        if self._names is None and self._source is not None:
            self._names = frozenset(self._source())
        if self._names is None or value in self._names or value == "-":
            return value
        return UNKNOWN_MODEL


class _ClosedModel:
    """labels() with the `model` value mapped through the owner's ModelNames, and each child kept once found:
    prometheus_client's own lookup (label checks under a lock) cost a request several of its microseconds.
    The cache is keyed by the mapped values, so it holds no more entries than the metric has series, and
    mapping is idempotent, so values found in it as given are already mapped: a served model's name is
    one dict lookup, an unknown one is mapped first. No code removes a series, which would leave a cached
    child orphaned; `forget_children` empties the cache when the set of names changes."""

    model_names: ModelNames | None = None
    _labelnames: tuple[str, ...]
    _children: dict[Any, Any] | None = None

    def labels(self, *values: Any, **named: Any) -> Any:
        key = _child_key(values, named)
        children = self._children
        if children is None:
            children = self._children = {}
        child = children.get(key)
        if child is None:
            child = self._mapped_child(children, values, named)
        return child

    def _mapped_child(self, children: dict[Any, Any], values: tuple[Any, ...], named: dict[str, Any]) -> Any:
        names = self.model_names
        if names is not None and "model" in self._labelnames:
            if "model" in named:
                named["model"] = names.label(str(named["model"]))
            elif values:
                i = self._labelnames.index("model")
                values = (*values[:i], names.label(str(values[i])), *values[i + 1:])
        key = _child_key(values, named)
        child = children.get(key)
        if child is None:
            child = children[key] = super().labels(*values, **named)  # type: ignore[misc]
        return child

    def forget_children(self) -> None:
        self._children = None


def _child_key(values: tuple[Any, ...], named: dict[str, Any]) -> Any:
    return (values, tuple(named.items())) if named else values


_MUTEX_VALUES = values.ValueClass is values.MutexValue  # the process-local value (no multiprocess directory)


class _Counter(_ClosedModel, Counter):
    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        """prometheus_client's, without its checks' calls for a labelled child (a dozen calls a request), and
        with `MutexValue.inc` inlined: the same addition under the same lock, one Python call fewer (a
        request makes 16 of these additions)."""
        if self._labelvalues and exemplar is None and amount >= 0:
            value = self._value
            if _MUTEX_VALUES:
                with value._lock:
                    value._value += amount
            else:  # pragma: no cover - multiprocess values
                value.inc(amount)
            return
        super().inc(amount, exemplar)


class _Histogram(_ClosedModel, Histogram):
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """prometheus_client's, the bucket found by bisection (the first bound >= amount, as its scan) and
        without its checks' calls for a labelled child; the sum's and the bucket's additions inlined, each
        under its own value's lock, as `MutexValue.inc` makes them."""
        if self._labelvalues and exemplar is None and amount == amount:  # NaN (in no bucket): its own path
            total, bucket = self._sum, self._buckets[bisect_left(self._upper_bounds, amount)]
            if _MUTEX_VALUES:
                with total._lock:
                    total._value += amount
                with bucket._lock:
                    bucket._value += 1
            else:  # pragma: no cover - multiprocess values
                total.inc(amount)
                bucket.inc(1)
            return
        super().observe(amount, exemplar)


class _Gauge(_ClosedModel, Gauge):
    def set(self, value: float) -> None:
        """prometheus_client's, without its check's call for a labelled child, and with `MutexValue.set`
        inlined: the same assignment under the same lock (a keyed request with a budget sets one)."""
        if self._labelvalues and _MUTEX_VALUES and not self._is_most_recent:
            current = self._value
            with current._lock:
                current._value = float(value)
            return
        super().set(value)


class ModelSeries:
    """One model's series of the metrics every inference request touches, looked up once per model, not
    once per request and metric (eight lookups a request). Built through `labels`, so the model's name is
    mapped as there (an unknown one to "unknown")."""

    __slots__ = ("_by_status", "_requests", "e2e", "generation_tokens", "itl", "latency", "prompt_tokens",
                 "queue_time", "ttft")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.queue_time, self.ttft = metrics.queue_time.labels(model), metrics.ttft.labels(model)
        self.itl, self.latency, self.e2e = metrics.itl.labels(model), metrics.latency.labels(model), \
            metrics.e2e.labels(model)
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.generation_tokens = metrics.generation_tokens.labels(model)
        self._requests: Callable[[str], Any] = lambda status: metrics.requests.labels(model, status)
        self._by_status: dict[str, Any] = {}

    def requests(self, status: str) -> Any:
        """inference_requests_total's child for `status` (a closed set: outcomes and refusal reasons)."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests(status)
        return child


MAX_MODEL_SERIES = 1024  # ModelSeries kept; past it the cache starts over (names are a closed set anyway)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[str, ModelSeries] = {}
        self.model_names = ModelNames()
        r = self.registry
        Counter, Histogram = _Counter, _Histogram  # every model-labelled metric maps unknown models
        self.requests = Counter("inference_requests", "Inference requests by outcome (the guide's)",
                                ["model", "status"], registry=r)
        self.latency = Histogram("inference_latency_seconds", "Inference latency (the guide's buckets)", ["model"],
                                 buckets=GUIDE_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmops_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("llmops_inter_token_latency_seconds", "Time between streamed tokens", ["model"],
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("llmops_e2e_request_latency_seconds", "End-to-end request latency", ["model"],
                             buckets=E2E_BUCKETS, registry=r)
        self.queue_time = Histogram("llmops_request_queue_time_seconds", "Time spent waiting for a slot", ["model"],
                                    buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llmops_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("llmops_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.batch_size = Histogram("llmops_batch_size", "Requests per engine call (image batches)", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.embedding_inputs = Counter("llmops_embedding_inputs", "Texts (or token-id lists) embedded", ["model"],
                                        registry=r)
        self.images = Counter("llmops_images_generated", "Images generated", ["model"], registry=r)
        self.images_classified = Counter("llmops_images_classified",
                                         "Images classified by a model (cache hits are not)", ["model"], registry=r)
        self.rejections = Counter("llmops_rejections", "Requests refused, by reason", ["model", "reason"], registry=r)
        self.spend = Counter("llmops_spend_usd", "Spend recorded from the price table, by model and API key",
                             ["model", "key"], registry=r)
        self.budget_used = _Gauge("llmops_budget_used_ratio", "Share of the key's budget spent in this period, "
                                 "as of its last request", ["key"], registry=r)
        self.store_errors = Counter("llmops_state_store_errors", "Calls to the state store that failed or timed "
                                    "out (Redis), or batches of spend SQLite could not write (op spend_record), "
                                    "by operation", ["op"], registry=r)
        self.guardrail_actions = Counter("llmops_guardrail_actions", "Guardrail findings, by rule, hook point "
                                         "and the rule's action", ["rule", "stage", "action"], registry=r)
        self.cache_requests = Counter("llmops_cache_requests", "Response cache lookups, one per request: hit (exact), "
                                      "semantic_hit, miss or bypass (not cacheable, or opted out)",
                                      ["model", "result"], registry=r)
        self.variant_requests = Counter("llmops_route_requests", "Requests to a routed alias, by the variant "
                                        "that served them (role: primary, fallback, shadow)",
                                        ["route", "variant", "role"], registry=r)
        self.prompt_requests = Counter("llmops_prompt_requests", "Requests that used a versioned prompt",
                                       ["prompt", "version"], registry=r)
        self.eval_score = Gauge("llmops_eval_score", "Mean score (0-1) of the last sampled answers of a route's "
                                "variant or shadow, by scorer (online evaluation)", ["route", "variant", "scorer"],
                                registry=r)
        self.eval_samples = Counter("llmops_eval_samples", "Answers scored online, by route, variant and scorer",
                                    ["route", "variant", "scorer"], registry=r)
        self.eval_errors = Counter("llmops_eval_errors", "Online scorings that failed (a judge or embedding "
                                   "endpoint error), by route, variant and scorer", ["route", "variant", "scorer"],
                                   registry=r)
        self.http_requests = Counter("llmops_http_requests", "HTTP requests", ["route", "method", "status"],
                                     registry=r)
        self.http_latency = Histogram("llmops_http_request_duration_seconds", "HTTP request latency",
                                      ["route", "method"], buckets=HTTP_BUCKETS, registry=r)

        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds...
        r.register(_LoopCollector())
        for metric in vars(self).values():
            if isinstance(metric, _ClosedModel):
                metric.model_names = self.model_names

    def watch(self, loads: Callable[[], dict[str, ModelLoad]], gpus: Callable[[], dict[str, float]]) -> None:
        self.model_names.watch(lambda: loads().keys())
        for metric in vars(self).values():
            if isinstance(metric, _ClosedModel):
                metric.forget_children()  # keyed by the names known before
        self._series = {}
        self.registry.register(_LiveCollector(loads, gpus))

    def of_model(self, model: str) -> ModelSeries:
        """`model`'s series of the per-request inference metrics (ModelSeries)."""
        series = self._series.get(model)
        if series is None:
            if len(self._series) >= MAX_MODEL_SERIES:
                self._series = {}
            series = self._series[model] = ModelSeries(self, model)
        return series

    def reject(self, model: str, error: LLMOpsError, reason: str | None = None) -> str | None:
        """Count a refusal in llmops_rejections_total once (the first site that sees it names the model):
        every 429 and 503, plus deadlines and guardrail blocks. The reason, or None when `error` is not a
        refusal."""
        reason = reason or rejection_reason(error.code, kind_of(error).status)
        if reason is None or error.counted:
            return reason
        self.rejections.labels(model, reason).inc()
        error.counted = True
        return reason


REJECTION_REASONS: dict[str, str] = {
    "overloaded": "overload", "deadline_exceeded": "deadline", "shutting_down": "draining",
    "rate_limit_exceeded": "rate_limit", "insufficient_quota": "budget", "content_filter": "guardrail",
    "spend_limit_reached": "spend_breaker", "store_unavailable": "store_unavailable",
    "model_failed": "model_failed", "service_unavailable": "not_ready", "upstream_unavailable": "upstream",
}


def rejection_reason(code: str | None, status: int | None = None) -> str | None:
    """The rejections label for an error code; any other 429/503 counts as `rate_limit`/`unavailable`."""
    reason = REJECTION_REASONS.get(code or "")
    if reason is None and status in (429, 503):
        return "rate_limit" if status == 429 else "unavailable"
    return reason
