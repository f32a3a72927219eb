"""OpenTelemetry spans for HTTP -> admission -> engine. With no `tracing.otlp_endpoint` configured the
tracer is a no-op costing one function call per span; with one, spans are batched and exported over OTLP
(install `llmops[otel]`). Attribute values pass the log redaction (observability/redaction.py): a secret
never reaches the trace backend either."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from llmops.observability.redaction import redact_value


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def end(self) -> None:
        return None


def _clean(attributes: dict[str, Any] | None) -> dict[str, Any]:
    return {k: redact_value(v) for k, v in (attributes or {}).items()}


class _RedactedSpan:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set_attribute(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, redact_value(value))


class _OnceSpan(_RedactedSpan):
    """A span that may be ended more than once (the second time does nothing)."""

    def __init__(self, span: Any) -> None:
        super().__init__(span)
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()


class Tracer:
    def __init__(self, otel_tracer: Any = None, provider: Any = None) -> None:
        self._tracer, self._provider = otel_tracer, provider

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
        if self._tracer is None:
            yield _NoSpan()
            return
        with self._tracer.start_as_current_span(name, attributes=_clean(attributes)) as span:
            yield _RedactedSpan(span)

    def start(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        """A span that the caller ends (for work that spans several awaits or generator steps)."""
        if self._tracer is None:
            return _NoSpan()
        return _OnceSpan(self._tracer.start_span(name, attributes=_clean(attributes)))

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def build_tracer(otlp_endpoint: str | None, service_name: str, exporter: Any = None) -> Tracer:
    """A tracer exporting to `otlp_endpoint` (or to `exporter`, for tests); a no-op when neither is set."""
    if otlp_endpoint is None and exporter is None:
        return Tracer()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return Tracer(provider.get_tracer("llmops"), provider)
