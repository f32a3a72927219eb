"""The exception tree, and the one table from exception to HTTP status and OpenAI error type.

    LLMOpsError                      every error this project raises on purpose
    ├── ConfigError                  invalid settings; the server refuses to start
    ├── EngineUnavailable            an engine's optional backend is not installed
    ├── InvalidRequest               400 invalid_request_error, names the `param`
    │   ├── ContextLengthExceeded    400, code context_length_exceeded
    │   ├── UnsupportedParameter     400, a parameter this model or engine does not support
    │   └── ContentFiltered          400, code content_filter (a safety checker or guardrail blocked it)
    ├── Unauthorized                 401, code invalid_api_key (missing or unknown key)
    ├── PermissionDenied             403 (this key may not use this model; admin API without the admin key)
    │   └── HostNotAllowed           403, code host_not_allowed (a Host header the server does not answer:
    │                                DNS rebinding protection, settings.allowed_hosts)
    ├── RateLimited                  429 + Retry-After, code rate_limit_exceeded
    │   ├── QuotaExceeded            429, code insufficient_quota (the key's budget is spent)
    │   └── AuthLockedOut            429, code too_many_auth_failures, x-should-retry: false (this client
    │                                address sent too many wrong admin keys; its admin keys go unchecked
    │                                for a while)
    ├── NotFound                     404 (unknown route, unknown job)
    │   └── ModelNotFound            404, code model_not_found
    ├── MethodNotAllowed             405
    ├── PayloadTooLarge              413
    ├── HeadersTooLarge              431 (too many header fields)
    ├── RequestCancelled             499 (the client cancelled; recorded on jobs, rarely sent)
    ├── ServiceUnavailable           503 + Retry-After (not ready)
    │   ├── ModelNotReady            503 + Retry-After: 5 (the model is still loading)
    │   ├── Overloaded               503, code overloaded (the model's queue is full: refused at once)
    │   ├── ShuttingDown             503, code shutting_down (draining after SIGTERM)
    │   ├── SpendLimitReached        503, code spend_limit_reached (the global spend circuit breaker is open)
    │   ├── ModelFailed              503, code model_failed, no Retry-After, x-should-retry: false (failed to load)
    │   └── StoreUnavailable         503, code store_unavailable (Redis unreachable and the policy fails closed)
    ├── DeadlineExceeded             504, code deadline_exceeded (queued or ran past the request's deadline)
    └── EngineError                  500 for that request only; the server keeps serving
        ├── BadGateway               502, type server_error: an upstream engine answered something that is not
        │                            the OpenAI API (code upstream_malformed), broke off its answer
        │                            (code upstream_broken), answered 502 itself (upstream_bad_gateway) or
        │                            refused this server's credentials (upstream_auth, x-should-retry: false)
        └── GatewayTimeout           504, type timeout_error, code upstream_timeout: an upstream engine took
                                     the request and then said nothing for its read_timeout_s, or answered 504

An upstream that cannot be reached at all (connection refused, connect timeout) is ServiceUnavailable, code
upstream_unavailable (503 + Retry-After), on purpose: it is the answer the upstream's circuit breaker gives
once it opens on those failures, so clients see one answer for one outage, told when to retry.

Retry-After values live here, on the classes (Overloaded and RateLimited compute theirs per request).
Code raises; it never returns error values. `error_response_parts` is the only place that turns an
exception into a status code, and `http_status_error` the only place that maps a bare HTTP status
(from the framework's own routing) into this tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ErrorFormat = Literal["openai", "v2"]  # the OpenAI envelope, or the Open Inference Protocol's {"error": "..."}


class LLMOpsError(Exception):
    """Base of every error raised on purpose. `param` names the offending request field, if any."""

    code: str | None = None
    retry_after: int | None = None  # seconds; sent as Retry-After when set
    retryable: bool | None = None  # False: `x-should-retry: false` (the openai SDKs stop retrying)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.counted = False  # already in llmops_rejections_total (observability.metrics.Metrics.reject)
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after


class ConfigError(LLMOpsError):
    """The settings are invalid; raised before the server starts."""


class EngineUnavailable(LLMOpsError):
    """An engine's optional dependency is missing; the message says which extra to install."""


class InvalidRequest(LLMOpsError):
    """The request is malformed or a field is out of range."""


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContentFiltered(InvalidRequest):
    code = "content_filter"


class Unauthorized(LLMOpsError):
    code = "invalid_api_key"


class PermissionDenied(LLMOpsError):
    code = "permission_denied"


class HostNotAllowed(PermissionDenied):
    """The request's Host header names no host this server answers to (`allowed_hosts`; automatic on a loopback
    bind: loopback names only). A page a browser loaded from another site, whose name was then re-pointed at
    127.0.0.1 (DNS rebinding), sends its own name: it is refused before anything else is done."""

    code = "host_not_allowed"


class RateLimited(LLMOpsError):
    code = "rate_limit_exceeded"
    retry_after = 1


class QuotaExceeded(RateLimited):
    code = "insufficient_quota"


class AuthLockedOut(RateLimited):
    """Too many wrong admin keys from the client's address (middleware/auth_throttle.py): its admin requests
    are refused without looking at the key, until Retry-After. Sending the same key again will not help, so
    clients are told not to retry (`x-should-retry: false`, which the openai SDKs honour)."""

    code = "too_many_auth_failures"
    retryable = False


class NotFound(LLMOpsError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(LLMOpsError):
    code = "method_not_allowed"


class PayloadTooLarge(LLMOpsError):
    code = "payload_too_large"


class HeadersTooLarge(LLMOpsError):
    """Too many header fields (their size is refused by the HTTP server itself, also 431)."""

    code = "headers_too_large"


class RequestCancelled(LLMOpsError):
    """The work was cancelled before it finished (a DELETE on a job, or the client went away)."""

    code = "cancelled"


class ServiceUnavailable(LLMOpsError):
    """Not ready yet, or draining. Clients should retry after `retry_after` seconds."""

    code = "service_unavailable"
    retry_after: int | None = 1


class ModelNotReady(ServiceUnavailable):
    """The model is still loading (or closed); code stays service_unavailable."""

    retry_after = 5


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"
    retry_after = 5


class SpendLimitReached(ServiceUnavailable):
    code = "spend_limit_reached"
    retry_after = 60


class ModelFailed(ServiceUnavailable):
    """The model failed to load: retrying will not help until an operator fixes it; the message names the cause."""

    code = "model_failed"
    retry_after = None
    retryable = False


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class DeadlineExceeded(LLMOpsError):
    code = "deadline_exceeded"


class EngineError(LLMOpsError):
    """The engine failed on this request. The request fails with 500; the engine keeps serving."""

    code = "engine_error"


class BadGateway(EngineError):
    """An upstream engine (engines/upstream.py) answered something that is not the OpenAI API's shape, or its
    answer broke off: this server is a gateway whose upstream failed it, 502, not an error of its own."""

    code = "upstream_malformed"


class GatewayTimeout(EngineError):
    """An upstream engine took the request and then sent nothing for longer than its `read_timeout_s`."""

    code = "upstream_timeout"


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str


# The one table. Order matters: the first class an exception is an instance of wins.
ERROR_TABLE: tuple[tuple[type[LLMOpsError], ErrorKind], ...] = (
    (InvalidRequest, ErrorKind(400, "invalid_request_error")),
    (Unauthorized, ErrorKind(401, "authentication_error")),
    (PermissionDenied, ErrorKind(403, "permission_error")),
    (RateLimited, ErrorKind(429, "rate_limit_error")),
    (NotFound, ErrorKind(404, "invalid_request_error")),
    (MethodNotAllowed, ErrorKind(405, "invalid_request_error")),
    (PayloadTooLarge, ErrorKind(413, "invalid_request_error")),
    (HeadersTooLarge, ErrorKind(431, "invalid_request_error")),
    (RequestCancelled, ErrorKind(499, "cancelled")),
    (ServiceUnavailable, ErrorKind(503, "service_unavailable_error")),
    (DeadlineExceeded, ErrorKind(504, "timeout_error")),
    (BadGateway, ErrorKind(502, "server_error")),
    (GatewayTimeout, ErrorKind(504, "timeout_error")),
    (EngineError, ErrorKind(500, "server_error")),
    (LLMOpsError, ErrorKind(500, "server_error")),
)

_STATUS_TO_ERROR: dict[int, type[LLMOpsError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    503: ServiceUnavailable,
}


def kind_of(exc: LLMOpsError) -> ErrorKind:
    for cls, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return kind
    raise AssertionError("LLMOpsError is in the table")  # pragma: no cover


def _unfiltered(message: str) -> str:
    return message


_shown: Callable[[str], str] = _unfiltered  # server text: every pattern and the server's literal secrets
_echoed: Callable[[str], str] = _unfiltered  # a client error's message: the patterns only


def filter_messages(shown: Callable[[str], str], echoed: Callable[[str], str] | None = None) -> None:
    """What error messages go through before a client sees them, installed with the logging
    (`configure_logging`): `shown`, observability's whole redaction, for the messages of server errors
    (5xx: an exception's or an upstream's text, where a secret the server holds could be: its key, a URL's
    password), masked as the log lines are; `echoed` (default `shown`), the redaction without the server's
    literal secrets, for client errors (4xx), whose messages quote what the client sent (a model name, a
    parameter's value). Comparing those with the server's secrets would answer `[REDACTED]` exactly when a
    client guessed one (the admin key sent as a model name): an oracle that skips the admin key's throttle.
    Shapes of credentials are still masked there (they depend on the text alone, not on what the server
    holds). Server text put in a client error is redacted whole where it enters (`shown_message`). This
    module imports nothing of the app."""
    global _shown, _echoed
    _shown = shown
    _echoed = echoed or shown


def shown_message(text: str) -> str:
    """`text` (server text: an upstream's, an exception's) as a client may see it, every secret masked: for
    code that puts text it did not write in an error message, redacting it first (and before cutting it, so
    a cut secret cannot slip through a filter that no longer recognises it)."""
    return _shown(text)


def echoed_message(text: str) -> str:
    """`text` as a client error (4xx) shows it: for text that may quote the client (an upstream's 400 that
    names a parameter's value), credentials' shapes masked, never compared with the server's secrets."""
    return _echoed(text)


def client_message(exc: LLMOpsError) -> str:
    """The message of `exc` as its client is sent it: a server error's (5xx) with every secret masked, a
    client error's (4xx) with shapes of credentials masked but never compared with the server's secrets
    (`filter_messages`)."""
    return (_shown if kind_of(exc).status >= 500 else _echoed)(exc.message)


def error_body(exc: LLMOpsError, fmt: ErrorFormat = "openai") -> dict[str, Any]:
    """The OpenAI error envelope for `exc`, or the Open Inference Protocol's (KServe V2) `{"error": msg}`."""
    kind = kind_of(exc)
    message = (_shown if kind.status >= 500 else _echoed)(exc.message)  # client_message's choice
    if fmt == "v2":
        return {"error": message}
    return {"error": {"message": message, "type": kind.type, "param": exc.param, "code": exc.code}}


def error_format(path: str) -> ErrorFormat:
    """Which envelope a path's errors use: the Open Inference Protocol's under /v2, OpenAI's elsewhere."""
    return "v2" if path == "/v2" or path.startswith("/v2/") else "openai"


def error_response_parts(exc: LLMOpsError, fmt: ErrorFormat = "openai") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, extra headers) for an exception."""
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.retryable is not None:
        headers["x-should-retry"] = "true" if exc.retryable else "false"
    return kind_of(exc).status, error_body(exc, fmt), headers


def internal_error(exc: BaseException) -> EngineError:
    """An unexpected exception, as the error the client sees (no internals leak)."""
    return EngineError(f"internal error while serving the request ({type(exc).__name__})")


def http_status_error(status: int, detail: str) -> LLMOpsError:
    """An error for a bare HTTP status raised by routing (unknown path, wrong method)."""
    cls = _STATUS_TO_ERROR.get(status, LLMOpsError)
    return cls(detail)
