"""Any OpenAI-compatible server as an engine: vLLM, TGI, llama.cpp's server, another llmops, OpenAI.

Requests stream from the upstream and are re-streamed here, so admission, deadlines, cancellation,
metrics and (later) keys and limits apply in front of it. Before the first token, a connection error,
timeout, 429 or 5xx is retried with exponential backoff (honouring Retry-After); consecutive failures open
a circuit breaker, and while it is open requests fail fast with 503 instead of waiting on a dead upstream.
An answer that is not the OpenAI stream's shape (a data line that is not JSON, choices that are not objects,
content that is not a string, ...) is an upstream failure too: counted by the breaker, retried before the
first token, and then a 502 (BadGateway, code upstream_malformed) saying so, never an internal error.

What the client is answered once the retries are spent, as a gateway does (errors.py has the table):
an upstream that cannot be reached (connection refused, connect timeout) is 503 upstream_unavailable with
Retry-After, the same answer the breaker gives once it opens on those failures; one that took the request
and then said nothing for `read_timeout_s` is 504 upstream_timeout; one whose connection broke off without
an answer (reset, closed, not HTTP) is 502 upstream_broken; its own 429 and 503 are 503
upstream_unavailable, its own 502 a 502 upstream_bad_gateway and 504 a 504 upstream_timeout (it is a gateway
whose upstream failed it), its other 5xx a 500 with what it said.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmops.engines.base import EngineHealth, TextChunk, TextRequest, TokenUsage
from llmops.engines.breaker import CircuitBreaker
from llmops.errors import (
    BadGateway,
    ContextLengthExceeded,
    EngineError,
    GatewayTimeout,
    InvalidRequest,
    LLMOpsError,
    ServiceUnavailable,
    UnsupportedParameter,
    echoed_message,
    shown_message,
)

MAX_RETRY_WAIT_S = 10.0  # an upstream asking for a longer wait (Retry-After) is not retried: its client is told
MAX_ERROR_BODY = 64 * 1024  # bytes of an upstream's error answer read (what it said is cut to 300 characters)
MAX_LINE = 1024 * 1024  # characters of one server-sent-events line (an OpenAI chunk is a few hundred)


class UpstreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the upstream's OpenAI base URL, e.g. http://vllm:8000/v1")
    model: str | None = Field(None, description="model name upstream; default: this model's name")
    api_key_env: str | None = Field(None, description="environment variable holding the upstream's key")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0, description="longest silence between two streamed chunks")
    max_retries: int = Field(2, ge=0, le=10, description="retries before the first token")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles each retry")
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    breaker_reset_s: float = Field(30.0, gt=0, description="how long the circuit stays open")
    capacity: int = Field(64, ge=1, description="requests in flight upstream at once (admission's default)")
    context_length: int = Field(1_000_000, ge=1, description="only for budgets; the upstream checks its own")

    @model_validator(mode="after")
    def _one_credential(self) -> UpstreamOptions:
        problem = credentials_conflict(self.base_url, self.api_key_env)
        if problem:
            raise ValueError(problem)
        return self


def credentials_conflict(base_url: str, api_key_env: str | None) -> str | None:
    """Why `base_url` and `api_key_env` cannot be used together, or None. A user or password in the URL is
    sent as HTTP Basic, which replaces the `Authorization: Bearer` the key would be sent as (httpx and the
    openai client alike): the key would silently never reach the upstream."""
    try:
        parts = urlsplit(base_url)
        has_user = bool(parts.username or parts.password)
    except ValueError:
        return None  # the URL's own problem, reported where it is used
    if api_key_env and has_user:
        return (f"base_url ({shown_url(base_url)}) carries a user name or password, sent as HTTP Basic, and "
                f"api_key_env ({api_key_env}) a key sent as Bearer: one request has one Authorization header, "
                "so the key would never be sent. Keep one of them")
    return None


class _Retryable(Exception):
    def __init__(self, error: LLMOpsError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error, self.retry_after = error, retry_after


def shown_url(url: str) -> str:
    """`url` with scheme, host, port and path only: without a user name, password or query (where
    credentials ride)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(unparsable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _error_from(status: int, body: bytes) -> LLMOpsError:
    try:
        err = json.loads(body).get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):  # {"error": "a plain string"}
        err = {"message": str(err)}
    said = str(err.get("message") or body[:4096].decode(errors="replace") or status)
    # redacted, then cut. A client error (400, 404, 422: it may quote what the client sent, a model name)
    # gets the client errors' filter: credentials' shapes masked, never a comparison with the server's own
    # secrets, which would answer [REDACTED] exactly when a client guessed one (errors.filter_messages).
    client_error = 400 <= status < 500 and status not in (401, 403, 429)
    message = f"upstream: {(echoed_message if client_error else shown_message)(said)[:300]}"
    if status == 400 and err.get("code") == "context_length_exceeded":
        return ContextLengthExceeded(message, param=err.get("param"))
    if status in (401, 403):  # the upstream refused this server's credentials: the operator's to fix
        return _final(BadGateway(f"{message} (the upstream refused this server's credentials: see the model's "
                                 "api_key_env)", code="upstream_auth"))
    if status < 400:  # a redirect (an http:// base_url of an https server), a 204: not an answer of the API
        return _final(BadGateway(f"upstream answered HTTP {status}, not the OpenAI API's answer (is base_url "
                                 "right?)", code="upstream_malformed"))
    if 400 <= status < 500 and status != 429:
        return InvalidRequest(message, param=err.get("param"))
    if status in (429, 503):
        return ServiceUnavailable(message, retry_after=2, code="upstream_unavailable")
    if status == 502:  # the upstream is a gateway too, failed by its own upstream: so is this one
        return BadGateway(message, code="upstream_bad_gateway")
    if status == 504:
        return GatewayTimeout(message)
    return EngineError(message)


def _final(error: LLMOpsError) -> LLMOpsError:
    """`error`, sent with `x-should-retry: false`: retrying cannot help until an operator changes something."""
    error.retryable = False
    return error


class UpstreamEngine:
    Options = UpstreamOptions

    def __init__(self, model_name: str, options: UpstreamOptions) -> None:
        self.model_name, self.options = model_name, options
        self.context_length = options.context_length
        self.capacity = options.capacity
        self.breaker = CircuitBreaker(options.breaker_failures, options.breaker_reset_s)
        self.shown_url = shown_url(options.base_url)  # what /ready and errors show of it
        self._client: httpx.AsyncClient | None = None
        self._state: Literal["loading", "ready", "failed", "closed"] = "loading"

    async def start(self) -> None:
        key = os.environ.get(self.options.api_key_env) if self.options.api_key_env else None
        timeout = httpx.Timeout(self.options.read_timeout_s, connect=self.options.connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=self.options.base_url.rstrip("/"), timeout=timeout,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=self.capacity + 8))
        self._state = "ready"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._state = "closed"

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, {"upstream": self.shown_url, "circuit": self.breaker.state,
                                          "consecutive_failures": self.breaker.failures})

    def _body(self, request: TextRequest) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        if s.max_tokens == 0:  # the prompt alone: upstreams answer it only with their own echo, not sent here
            raise UnsupportedParameter("max_tokens 0 (the prompt alone, with echo) is not supported by this "
                                       "model's upstream engine", param="max_tokens")
        body: dict[str, Any] = {
            "model": self.options.model or self.model_name, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": s.temperature, "top_p": s.top_p,
            "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
            "max_tokens": s.max_tokens or s.default_max_tokens}
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if request.messages is not None:
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            return "/chat/completions", body
        body["prompt"] = request.prompt or ""
        return "/completions", body

    async def generate(self, request: TextRequest) -> AsyncIterator[TextChunk]:
        path, body = self._body(request)
        delay = self.options.backoff_s
        for attempt in range(self.options.max_retries + 1):
            trial = self.breaker.take()
            if trial is None:
                raise ServiceUnavailable(f"upstream {self.shown_url} is failing; circuit open",
                                         retry_after=self.breaker.retry_after(), code="upstream_unavailable")
            try:
                async for chunk in self._stream(path, body):
                    yield chunk
                return
            except _Retryable as exc:
                self.breaker.failure()
                wait = exc.retry_after or 0.0
                if attempt == self.options.max_retries or wait > MAX_RETRY_WAIT_S:
                    raise exc.error from None  # the upstream's own Retry-After goes to the client (_refused)
                await asyncio.sleep(max(delay, wait))
                delay *= 2
            finally:  # cancelled, or an error saying nothing of the upstream's health: the next call tries
                self.breaker.abandon(trial)

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[TextChunk]:
        assert self._client is not None, "the upstream engine is not started"
        started = False
        try:
            async with self._client.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    raise self._refused(r.status_code, await _head(r), r.headers.get("retry-after"))
                async for chunk in self._parse(r):
                    if not started:
                        started = True
                        self.breaker.success()
                    yield chunk
        except (_Malformed, httpx.DecodingError) as exc:  # like a 5xx: counted, retried before the first token
            malformed = BadGateway(f"upstream {self.shown_url} answered something malformed: {_said(exc)}")
            if started:
                self.breaker.failure()
                raise malformed from None
            raise _Retryable(malformed) from None
        except (httpx.TransportError, _Cut) as exc:  # timeouts included
            error = self._transport_error(exc, started)
            if started:
                raise error from exc
            raise _Retryable(error) from exc
        if not started:
            self.breaker.success()

    def _transport_error(self, exc: httpx.TransportError | _Cut, started: bool) -> LLMOpsError:
        """What the client is told of a connection to the upstream that failed: before the first token, an
        upstream that cannot be reached is 503 (what the breaker answers once it opens); one that went silent
        is a gateway timeout (504), one that broke off a bad gateway (502)."""
        name = str(exc) if isinstance(exc, _Cut) else type(exc).__name__
        if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
            said = "stream went silent" if started else "took the request and did not answer"
            return GatewayTimeout(f"upstream {self.shown_url} {said} within {self.options.read_timeout_s:g} s")
        if started:
            return BadGateway(f"upstream stream broke: {name}", code="upstream_broken")
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return ServiceUnavailable(f"upstream {self.shown_url} unreachable ({name})", retry_after=2,
                                      code="upstream_unavailable")
        return BadGateway(f"upstream {self.shown_url} broke off without an answer ({name})", code="upstream_broken")

    def _refused(self, status: int, body: bytes, retry_after: str | None) -> Exception:
        error = _error_from(status, body)
        if status == 429 or status >= 500:
            wait = _seconds(retry_after)
            if wait is not None and isinstance(error, ServiceUnavailable):
                error.retry_after = max(1, min(round(wait), 3600))  # the upstream's own wait, told on
            return _Retryable(error, wait)
        self.breaker.success()  # the upstream answered: a client error is not an outage
        return error

    async def _parse(self, r: httpx.Response) -> AsyncIterator[TextChunk]:
        """The upstream's server-sent events as chunks. Anything that is not the OpenAI stream's shape (a data
        line that is not JSON, an event that is not an object, choices that are not objects, content that is
        not a string, token counts that are not counts, a 200 with no events at all) raises `_Malformed`."""
        finish: Literal["stop", "length"] = "stop"
        usage: TokenUsage | None = None
        pieces = events = 0
        done = ended = False  # [DONE] seen; a finish_reason seen
        async for line in _lines(r):
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            events += 1
            event = _event(line[6:])
            if "error" in event:
                error = _error_event(event["error"])
                if not isinstance(error, _Malformed):  # the upstream answered, with an error of its own
                    self.breaker.success()
                raise error
            if event.get("usage"):
                usage = _usage(event["usage"])
            for choice in _choices(event):
                text = _text(choice)
                if choice.get("finish_reason"):
                    ended = True
                    finish = "length" if choice["finish_reason"] == "length" else finish
                if text:
                    pieces += 1
                    yield TextChunk(text)
        if events == 0:
            raise _Malformed("a response with no server-sent events (is base_url an OpenAI-compatible API?)")
        if not (ended or done):  # the connection closed where the answer had no end
            raise _Cut("the stream ended without a finish_reason or [DONE]")
        yield TextChunk("", finish_reason=finish, usage=usage or TokenUsage(0, pieces))


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After header's wait in seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not retry_after:
        return None
    value = retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class _Malformed(Exception):
    """The upstream answered something that is not the OpenAI API's shape: what it was, in words."""


class _Cut(Exception):
    """The upstream's answer ended before its end (a close-delimited stream closed early): a broken connection."""


def _said(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _Malformed) else f"a body that does not decode ({type(exc).__name__})"


async def _head(r: httpx.Response) -> bytes:
    """The first MAX_ERROR_BODY bytes of an answer (an error's): what it said is cut to 300 characters anyway,
    and a huge body read whole held the event loop and the memory it took."""
    out = bytearray()
    async for part in r.aiter_bytes():
        out += part
        if len(out) >= MAX_ERROR_BODY:
            break
    return bytes(out[:MAX_ERROR_BODY])


async def _lines(r: httpx.Response) -> AsyncIterator[str]:
    """The answer's lines, none longer than MAX_LINE characters (httpx's `aiter_lines` buffers a line of any
    length: an endless one took the memory it was sent)."""
    pending = ""
    async for text in r.aiter_text():
        pending += text
        if "\n" in text:
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line.removesuffix("\r")
        if len(pending) > MAX_LINE:
            raise _Malformed(f"a line longer than {MAX_LINE} characters")
    if pending:
        yield pending.removesuffix("\r")


def _event(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        raise _Malformed("a data line that is not JSON") from None
    if not isinstance(event, dict):
        raise _Malformed(f"an event that is not a JSON object (a {type(event).__name__})")
    return event


def _error_event(error: Any) -> Exception:
    """An error event: EngineError with what the upstream said (redacted, then cut); one whose `error` is not an
    object (`{"error": "a string"}`) is not the OpenAI shape, so `_Malformed`, what it said included."""
    if not isinstance(error, dict):
        return _Malformed(f"an error event whose error is not an object ({shown_message(str(error))[:300]})")
    return EngineError(f"upstream: {shown_message(str(error.get('message') or 'error'))[:300]}")


def _usage(u: Any) -> TokenUsage:
    if not isinstance(u, dict):
        raise _Malformed("usage that is not an object")
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        n = u.get(name) or 0
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise _Malformed(f"usage.{name} that is not a count of tokens")
        counts.append(n)
    return TokenUsage(counts[0], counts[1])


def _choices(event: dict[str, Any]) -> list[dict[str, Any]]:
    choices = event.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise _Malformed("choices that are not a list of objects")
    return choices


def _text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if delta is not None and not isinstance(delta, dict):
        raise _Malformed("a choice whose delta is not an object")
    for text in (choice.get("text"), (delta or {}).get("content")):
        if text is not None and not isinstance(text, str):
            raise _Malformed("a choice whose text or content is not a string")
        if text:
            return text
    return ""
