"""The OpenAPI schema describes the errors the server really sends: every error is the OpenAI envelope
(protocol/errors.py; under /v2 the Open Inference Protocol's `{"error": "..."}`) with status 400 (invalid
input, FastAPI's validation included: never 422), 401, 403, 404, 413, 429 (Retry-After), 431, 500, 502 (an
upstream engine failed this server), 503 (Retry-After) or 504. FastAPI's default 422 "HTTPValidationError" is
removed. `install_error_schema(app)` wraps `app.openapi` once; the schema is built on first request, as FastAPI
does."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from llmops.errors import error_format
from llmops.protocol.errors import ErrorEnvelope
from llmops.protocol.inference_v2 import ErrorResponse as InferenceErrorResponse

ERRORS: dict[str, str] = {
    "400": "Invalid request: a parameter is missing, malformed or out of range (`param` names it), or a "
           "guardrail refused the content (code content_filter)",
    "401": "Missing or unknown API key",
    "403": "This key may not use this model, or the admin key is required",
    "404": "Unknown model, job, file or route",
    "413": "Request body larger than limits.max_body_bytes",
    "429": "Rate limit, concurrency limit or budget reached (see Retry-After)",
    "431": "Too many request headers, or too large",
    "500": "The engine failed on this request (the server keeps serving)",
    "502": "An upstream engine answered something that is not the OpenAI API (code upstream_malformed), its "
           "connection broke off (code upstream_broken), it answered 502 itself (code upstream_bad_gateway), or it "
           "refused this server's credentials (code upstream_auth)",
    "503": "Not ready, draining, overloaded (the queue is full), the spend breaker is open, or an upstream engine "
           "cannot be reached (code upstream_unavailable) (see Retry-After)",
    "504": "The request's deadline passed while queued or running, or an upstream engine went silent past its "
           "read_timeout_s or answered 504 itself (code upstream_timeout)",
}
OPEN_PATHS = {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _error_response(status: str, envelope: str = "ErrorEnvelope") -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{envelope}"}}},
    }
    if status in ("429", "503"):
        response["headers"] = RETRY_AFTER
    return response


def with_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every operation's 422 replaced by the real error responses."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        components.pop(name, None)
    envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(envelope.pop("$defs", {}))
    components["ErrorEnvelope"] = envelope
    components["InferenceErrorResponse"] = InferenceErrorResponse.model_json_schema()
    for path, operations in schema.get("paths", {}).items():
        kind = "InferenceErrorResponse" if error_format(path) == "v2" else "ErrorEnvelope"
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            statuses = ("503",) if path in OPEN_PATHS else tuple(ERRORS)
            for status in statuses:
                responses.setdefault(status, _error_response(status, kind))
    return schema


def install_error_schema(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_error_responses(get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
