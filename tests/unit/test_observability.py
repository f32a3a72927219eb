"""Metrics, the access log and tracing, on the in-process app with the fake engine."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from llmops.app import create_app
from llmops.engines.base import TextChunk
from llmops.errors import Overloaded, RequestCancelled
from llmops.observability import logging as logmod
from llmops.observability.inference import InferenceObserver
from llmops.observability.logging import configure_logging
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import build_tracer
from llmops.settings import load_settings
from tests.helpers import write_config

EXPECTED = {
    "inference_requests", "inference_latency_seconds", "gpu_utilization_percent", "inference_queue_size",
    "llmops_time_to_first_token_seconds", "llmops_inter_token_latency_seconds",
    "llmops_e2e_request_latency_seconds", "llmops_request_queue_time_seconds", "llmops_prompt_tokens",
    "llmops_generation_tokens", "llmops_num_requests_running", "llmops_num_requests_waiting", "llmops_batch_size",
    "llmops_images_generated", "llmops_rejections", "llmops_http_requests", "llmops_http_request_duration_seconds",
    "llmops_model_ready",
}


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    cfg = write_config(tmp_path / "o.yaml", [
        {"name": "fake", "engine": "fake"},
        {"name": "busy", "engine": "fake", "options": {"capacity": 1, "token_delay_s": 0.2, "reply": "a b c d"},
         "limits": {"max_queued": 0}},
        {"name": "fake-emb", "kind": "embeddings", "engine": "fake-embeddings"}])
    exporter = InMemorySpanExporter()
    with TestClient(create_app(load_settings(cfg), tracer=build_tracer(None, "t", exporter)),
                    raise_server_exceptions=False) as c:
        for _ in range(100):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.01)
        yield c, exporter


def samples(c: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = c.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def chat(c: TestClient, model: str = "fake", **extra: object) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "secret prompt words"}], **extra}
    return c.post("/v1/chat/completions", json=body).status_code


def test_every_metric_is_exposed(app_client: tuple[TestClient, InMemorySpanExporter]) -> None:
    c, _ = app_client
    chat(c)
    families = {fam.name for fam in text_string_to_metric_families(c.get("/metrics").text)}
    assert families >= EXPECTED - {"gpu_utilization_percent"}  # no GPU here: the family has no samples


def test_request_outcomes_tokens_and_latency(app_client: tuple[TestClient, InMemorySpanExporter]) -> None:
    c, _ = app_client
    assert chat(c) == 200
    assert chat(c, stream=True) == 200
    s = samples(c)
    assert s[("inference_requests_total", (("model", "fake"), ("status", "success")))] == 2
    assert s[("llmops_generation_tokens_total", (("model", "fake"),))] == 8  # "Echo: secret prompt words" twice
    assert s[("llmops_time_to_first_token_seconds_count", (("model", "fake"),))] == 2
    assert s[("inference_latency_seconds_count", (("model", "fake"),))] == 2
    assert s[("llmops_model_ready", (("model", "fake"),))] == 1
    route = (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200"))
    assert s[("llmops_http_requests_total", route)] == 2


def test_rejections_by_reason(app_client: tuple[TestClient, InMemorySpanExporter]) -> None:
    c, _ = app_client
    import threading

    t = threading.Thread(target=chat, args=(c, "busy"))
    t.start()
    for _ in range(200):
        if samples(c).get(("llmops_num_requests_running", (("model", "busy"),))) == 1:
            break
        time.sleep(0.01)
    assert chat(c, "busy") == 503
    t.join()
    s = samples(c)
    assert s[("llmops_rejections_total", (("model", "busy"), ("reason", "overload")))] == 1
    assert s[("inference_requests_total", (("model", "busy"), ("status", "overload")))] == 1


def test_spans_http_admission_engine(app_client: tuple[TestClient, InMemorySpanExporter]) -> None:
    c, exporter = app_client
    chat(c)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"http POST", "admission", "engine.generate"} <= set(spans)
    root = spans["http POST"]
    assert spans["admission"].parent is not None
    assert spans["admission"].parent.span_id == root.context.span_id
    assert root.attributes is not None
    assert root.attributes["http.status_code"] == 200


def test_access_log_is_one_json_line_without_content(app_client: tuple[TestClient, InMemorySpanExporter],
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    c, _ = app_client
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("info", "json")
        capfd.readouterr()
        c.post("/v1/chat/completions", headers={"X-Request-Id": "req-42"},
               json={"model": "fake", "messages": [{"role": "user", "content": "secret prompt words"}]})
        err = capfd.readouterr().err
        c.post("/v1/embeddings", json={"model": "fake-emb", "input": "x", "user": "end-user-7"})
        embedded = capfd.readouterr().err
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        logmod._handler = None  # structlog's lines went straight to the test's handler
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{") and '"request"' in x]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "req-42"
    assert line["model"] == "fake"
    assert line["status"] == 200
    assert line["completion_tokens"] == 4
    assert "queue_ms" in line
    assert "latency_ms" in line
    assert "secret" not in err
    assert "user" not in line
    logged = [json.loads(x) for x in embedded.splitlines() if x.startswith("{") and '"request"' in x]
    assert [x["user"] for x in logged] == ["end-user-7"]  # the README's fields table says so


def test_a_client_that_goes_away_is_cancelled_not_an_error() -> None:
    """A stream closed by its consumer (Starlette closes it when the client disconnects), and a synchronous
    request cancelled on disconnect, count as status="cancelled" in inference_requests_total."""
    metrics = Metrics()
    tracer = build_tracer(None, "t")

    async def chunks() -> AsyncIterator[tuple[int, TextChunk]]:
        for word in ("a", "b", "c"):
            yield 0, TextChunk(word)

    async def run() -> None:
        stream = InferenceObserver(metrics, tracer, "m", {}).text(chunks())
        await anext(stream)
        await stream.aclose()  # the client left after the first chunk
        InferenceObserver(metrics, tracer, "m", {}).images_failed(RequestCancelled("the client disconnected"))
        overloaded = InferenceObserver(metrics, tracer, "m", {})
        overloaded.images_failed(Overloaded("full"))

    asyncio.run(run())
    assert metrics.requests.labels("m", "cancelled")._value.get() == 2
    assert metrics.requests.labels("m", "error")._value.get() == 0
    assert metrics.rejections.labels("m", "overload")._value.get() == 1


def test_the_fast_counter_and_histogram_count_as_prometheus_client_does() -> None:
    """Metrics' Counter.inc and Histogram.observe skip prometheus_client's per-call checks and find the bucket
    by bisection: the same samples as prometheus_client's own, bounds, NaN and infinity included."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    ours = Metrics()
    theirs = CollectorRegistry()
    reference = Histogram("llmops_time_to_first_token_seconds", "Time to first token", ["model"],
                          buckets=ours.ttft._upper_bounds[:-1], registry=theirs)
    counted = Counter("llmops_generation_tokens", "Tokens generated", ["model"], registry=theirs)
    values = [*ours.ttft._upper_bounds[:-1], 0.0, -1.0, 0.011, 0.3, 29.9, 30.1, 1e9, float("inf"), float("nan")]
    for value in values:
        ours.ttft.labels("m").observe(value)
        reference.labels("m").observe(value)
    for amount in (1, 0, 2.5, 7):
        ours.generation_tokens.labels("m").inc(amount)
        counted.labels("m").inc(amount)
    with pytest.raises(ValueError, match="non-negative"):
        ours.generation_tokens.labels("m").inc(-1)
    with pytest.raises(ValueError, match="missing label values"):  # the labelled parent itself is not observable
        ours.ttft.observe(1.0)

    def samples(text: bytes, name: str) -> list[str]:
        return [line for line in text.decode().splitlines() if line.startswith(name) and "_created" not in line]

    for name in ("llmops_time_to_first_token_seconds", "llmops_generation_tokens"):
        assert samples(generate_latest(ours.registry), name) == samples(generate_latest(theirs), name)
