"""Session 18's cuts of the gateway's per-request CPU keep what they replaced: the per-model metric series
count as `labels()` does, guardrails with nothing configured allow as before, the access line is built
only when INFO is written (and then as before), the gate's sole model is the same, and the server's heap
freeze raises only the young generation's threshold."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import generate_latest

from llmops import heap
from llmops.middleware.observe import Observer, Responder
from llmops.observability.logging import configure_logging
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer
from llmops.pipeline.guardrails import Guardrails
from llmops.settings import GuardrailSettings


def test_model_series_are_the_labelled_children() -> None:
    metrics = Metrics()
    series = metrics.of_model("fake")
    assert metrics.of_model("fake") is series
    assert series.ttft is metrics.ttft.labels("fake")
    assert series.requests("success") is metrics.requests.labels("fake", "success")
    series.requests("success").inc()
    series.latency.observe(0.5)
    text = generate_latest(metrics.registry).decode()
    assert 'inference_requests_total{model="fake",status="success"} 1.0' in text
    assert 'inference_latency_seconds_count{model="fake"} 1.0' in text


def test_model_series_map_an_unknown_model_as_labels_does() -> None:
    metrics = Metrics()
    metrics.watch(lambda: {}, lambda: {})  # no model served: every name is unknown
    metrics.of_model("made-up").requests("error").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'inference_requests_total{model="unknown",status="error"} 1.0' in text
    assert "made-up" not in text


def test_guardrails_with_no_rules_allow_everything_as_is() -> None:
    guard = Guardrails(GuardrailSettings(), Metrics())
    assert not guard.active("input")
    assert not guard.active("output")
    verdict = guard.check("input", "my card is 4111 1111 1111 1111")
    assert (verdict.outcome, verdict.text, verdict.findings) == ("allow", "my card is 4111 1111 1111 1111", ())
    texts = ["a", "b"]
    assert guard.check_input(texts) == texts


def _scope() -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
            "state": {"request_id": "r1", "log_fields": {"model": "fake"}}}


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    yield capsys
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


@pytest.mark.parametrize("level", ["info", "warning"])
def test_the_access_line_is_written_only_at_info(level: str, logs: pytest.CaptureFixture[str]) -> None:
    configure_logging(level, "json")
    observer = Observer(Metrics(), Tracer())
    observer._record(_scope(), 200, 0.0012)
    lines = [json.loads(line) for line in logs.readouterr().err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request"]
    if level == "warning":
        assert access == []
        return
    assert len(access) == 1
    assert {k: access[0][k] for k in ("request_id", "method", "path", "status", "latency_ms", "model")} == {
        "request_id": "r1", "method": "POST", "path": "/v1/chat/completions", "status": 200, "latency_ms": 1.2,
        "model": "fake"}


def test_http_metrics_are_counted_whatever_the_log_level(logs: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "json")
    metrics = Metrics()
    Observer(metrics, Tracer())._record(_scope(), 200, 0.01)
    text = generate_latest(metrics.registry).decode()
    assert 'llmops_http_requests_total{method="POST",route="unmatched",status="200"} 1.0' in text


def test_responder_adds_the_edge_headers() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    out = Responder(send, [(b"x-request-id", b"r1")])
    asyncio.run(out({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}))
    assert sent[0]["headers"] == [(b"content-length", b"0"), (b"x-request-id", b"r1")]


def test_freezing_the_heap_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        heap.freeze_loaded_heap()
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
