"""The HTTP edge, in one place: which paths skip which middleware (probes, ops, admin, the console and docs
pages, signed image URLs), where the per-request values live in the ASGI scope (the caller's key, the
access-log fields), and how an error becomes a response.

Middleware and the API routers read these; the pipeline never does (it gets a `pipeline.context.RequestContext`
built from them once, by the router)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llmops.errors import ErrorFormat, LLMOpsError, error_format, error_response_parts
from llmops.stores.keys import ApiKey

# always open (Kubernetes probes, and the Open Inference Protocol's)
PROBES = ("/health", "/ready", "/v2/health/live", "/v2/health/ready")  # no key, no rate limit, not counted in flight
OPS = (*PROBES, "/metrics")  # not rate limited, not counted in flight, not logged when they succeed
ADMIN_PREFIX = "/admin"  # guarded by the admin key in its own router
UNKNOWN_MODEL = "-"  # the model label of refusals made before the body (and its model) is read
CONSOLE = "/console"  # the web console's pages and assets (api/console.py)
DOCS_ASSETS = "/docs-assets"  # the API docs' local scripts and styles
# Pages a browser opens before it has a key: no key, no rate limit (they are static or the schema only).
BROWSER_PATHS = ("/", "/docs", "/redoc", "/openapi.json", "/favicon.ico")
BROWSER_PREFIXES = (CONSOLE, DOCS_ASSETS)
IMAGE_FILES = "/v1/images/files/"  # stored images; a signed URL is its own credential (pipeline/signed_urls.py)


@dataclass(frozen=True)
class Refusal:
    """What the edge answers instead of a request: the error, and headers of the answer's own."""

    error: LLMOpsError
    headers: dict[str, str] | None = None


def browser_page(path: str) -> bool:
    """Whether `path` is a console or docs page or asset: open without a key and not rate limited."""
    if path in BROWSER_PATHS:
        return True
    if not path.startswith(BROWSER_PREFIXES):  # every API path: one C-level check
        return False
    return any(path == p or path.startswith(p + "/") for p in BROWSER_PREFIXES)


def signed_image_request(path: str, query_string: bytes) -> bool:
    """A request for a stored image that carries a signature: the auth middleware lets it through without
    a key, and the handler verifies the signature (403 when bad or expired). The query is parsed as
    Starlette parses it for the handler, so a request let through here is one whose `sig` the handler
    sees and checks (an `xsig=` or a `sig=` inside another value is no signature: the key is needed)."""
    if not path.startswith(IMAGE_FILES) or b"sig" not in query_string:
        return False
    return any(name == "sig" for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


UNPARSED: Any = object()  # what `parse_body` gives for a body that is not JSON


def parse_body(raw: bytes) -> Any:
    """The body's JSON, parsed once by the edge for both the admission gate and the route; UNPARSED when
    it is not JSON (or not UTF-8, or nested too deep)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return UNPARSED


def log_fields(scope: Scope) -> dict[str, Any]:
    """The access-log line's extra fields for this request (model, tokens, queue time...)."""
    fields: dict[str, Any] = scope.setdefault("state", {}).setdefault("log_fields", {})
    return fields


def api_key(scope: Scope) -> ApiKey | None:
    """The key the auth middleware verified for this request (None on an open server)."""
    key = scope.get("state", {}).get("api_key")
    return key if isinstance(key, ApiKey) else None


def set_api_key(scope: Scope, key: ApiKey) -> None:
    scope.setdefault("state", {})["api_key"] = key
    log_fields(scope)["key_id"] = key.id


def presented_key(scope: Scope) -> str | None:
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


def presented_admin_key(scope: Scope) -> str:
    """The admin key a request presents (to the edge's check and the admin router alike): the first
    `X-Admin-Key`, else the API key's headers (`presented_key`); "" when none."""
    for name, value in scope["headers"]:
        if name == b"x-admin-key":
            given = value.decode("latin-1")
            break
    else:
        given = ""
    return given or presented_key(scope) or ""


def error_response(exc: LLMOpsError, headers: dict[str, str] | None = None,
                   fmt: ErrorFormat = "openai") -> JSONResponse:
    """The OpenAI envelope for `exc` (or, `fmt` v2, the Open Inference Protocol's), with its status and
    Retry-After / x-should-retry headers."""
    status, body, extra = error_response_parts(exc, fmt)
    return JSONResponse(body, status_code=status, headers={**extra, **(headers or {})})


async def send_error(exc: LLMOpsError, scope: Scope, receive: Receive, send: Send,
                     headers: dict[str, str] | None = None) -> None:
    """Answer from middleware (outside FastAPI's handlers) in the path's envelope (OpenAI; V2 under /v2)."""
    await error_response(exc, headers, error_format(scope.get("path", "")))(scope, receive, send)
