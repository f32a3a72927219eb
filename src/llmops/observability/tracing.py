"""OpenTelemetry spans for HTTP -> admission -> engine. With no `tracing.otlp_endpoint` configured the
tracer is a no-op costing one function call per span; with one, spans are batched and exported over OTLP
(install `llmops[otel]`). Attribute values pass the log redaction (observability/redaction.py): a secret
never reaches the trace backend either."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from llmops.observability.redaction import redact_value


class _NoSpan:
    """The span, and its context manager, when nothing is traced: one shared object, no generator."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def end(self) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


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

    def span(self, name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
        """A span around a `with` block, current while it runs."""
        if self._tracer is None:
            return _NO_SPAN
        return self._current_span(name, attributes)

    @contextlib.contextmanager
    def _current_span(self, name: str, attributes: dict[str, Any] | None) -> Iterator[Any]:
        with self._tracer.start_as_current_span(name, attributes=_clean(attributes)) as span:
            yield _RedactedSpan(span)

    def start(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        """A span that the caller ends (for work that spans several awaits or generator steps)."""
        if self._tracer is None:
            return _NO_SPAN
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
