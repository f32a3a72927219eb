"""Requests per minute and requests in flight, per API key (its `rpm`, `max_concurrent`) or, without a key,
requests per minute per client IP (`anonymous_rpm`). The counters live in the state store: in the process
for the embedded default, in Redis for replicas (one shared limit, not one per replica).

The client IP is the TCP peer. `X-Forwarded-For` is believed only when the peer is one of the configured
`trusted_proxies`, and then the address used is the rightmost one that is not itself a trusted proxy: the
guide's limiter took the header from anyone, so any client could rotate it to escape the limit.

Every answer to a limited request says where it stands, as OpenAI does (the openai client's
`with_raw_response`, LiteLLM and proxies read these): x-ratelimit-limit-requests, -remaining-requests and
-reset-requests (a duration in Go's format, "1s", "6m0s", "120ms") for requests/min, from the decision this
module makes; x-ratelimit-limit-tokens, -remaining-tokens and -reset-tokens for the key's tokens/min, from the
decision the pipeline's accounting makes (told to the answer's headers through `listen_for_tokens`, so no
store is asked twice). Only for the limits the request has: an unlimited key, or an open server without
`anonymous_rpm`, gets none. Requests/min also keeps its older X-RateLimit-Limit / -Remaining / -Reset
(seconds). Over a limit: 429 with Retry-After and the same headers."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import Scope

from llmops.errors import LLMOpsError, RateLimited
from llmops.http_edge import ADMIN_PREFIX, OPS, UNKNOWN_MODEL, Refusal, api_key, browser_page
from llmops.ids import unique_hex
from llmops.observability.metrics import Metrics
from llmops.stores.counters import WINDOW_S, Counters, Decision, listen_for_tokens
from llmops.stores.keys import ApiKey

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
HOLD_TTL_S = 600.0  # an in-flight place not released (a replica died) frees itself after this
FULL = "full"  # what `_limits` gives for the in-flight place when the key has every place taken


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str:
    peer = (scope.get("client") or ("unknown", 0))[0]

    def is_trusted(addr: str) -> bool:
        ip = _address(addr)
        return ip is not None and any(ip in net for net in trusted)

    if not trusted or not is_trusted(peer):
        return str(peer)
    raw: bytes = dict(scope["headers"]).get(b"x-forwarded-for", b"")
    hops = [h.strip() for h in raw.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            ip = _address(hop)
            return str(ip) if ip is not None else hop
    return str(peer)


def _address(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A forwarded hop's address in one canonical form, whatever port or spelling the proxy wrote: `1.2.3.4`,
    `1.2.3.4:5678`, `[2001:db8::1]:443`, `2001:DB8:0::1` (each spelling a bucket of its own would let a
    client escape its limit by changing ports); None when it is not an address."""
    text = hop.strip()
    if text.startswith("[") and "]" in text:  # [v6] or [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip


def duration(seconds: float) -> str:
    """`seconds` as OpenAI writes a reset time (Go's duration format) to the millisecond, rounded up so that
    it never says a limit is full again before it is: 0s, 17ms, 1s, 1.5s, 6m0s, 1h0m0s."""
    ms = math.ceil(seconds * 1000 - 1e-3)  # less a microsecond: unix time's floats are that coarse
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    secs, frac = divmod(ms, 1000)
    text = (f"{secs % 60}.{frac:03d}".rstrip("0") if frac else str(secs % 60)) + "s"
    if secs < 60:
        return text
    minutes = secs // 60
    return f"{minutes}m{text}" if minutes < 60 else f"{minutes // 60}h{minutes % 60}m{text}"


def limit_headers(d: Decision, unit: str) -> dict[str, str]:
    """OpenAI's headers for one limit (`unit`: requests or tokens); none for a decision the store could not
    measure (Redis away, failing open)."""
    return _text(_raw_limit(d, unit))


def _headers(d: Decision) -> dict[str, str]:
    """The requests/min headers: OpenAI's, and the older X-RateLimit-* this server sent before them."""
    return _text(_raw_requests(d))


def _text(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in raw}


_NAMES = {unit: tuple(f"x-ratelimit-{part}-{unit}".encode() for part in ("limit", "remaining", "reset"))
          for unit in ("requests", "tokens")}


def _raw_limit(d: Decision, unit: str) -> list[tuple[bytes, bytes]]:
    """`limit_headers` as an answer's raw headers (what every limited answer carries; the dicts are made from
    these for the rare refusal)."""
    if not d.measured:
        return []
    limit, remaining, reset = _NAMES[unit]
    return [(limit, str(d.limit).encode()), (remaining, str(d.remaining).encode()),
            (reset, duration(d.reset_s).encode())]


def _raw_requests(d: Decision) -> list[tuple[bytes, bytes]]:
    """`_headers` as an answer's raw headers (names in lower case): an admitted request's requests/min
    headers."""
    if not d.measured:
        return []
    limit, remaining = str(d.limit).encode(), str(d.remaining).encode()
    names = _NAMES["requests"]
    return [(names[0], limit), (names[1], remaining), (names[2], duration(d.reset_s).encode()),
            (b"x-ratelimit-limit", limit), (b"x-ratelimit-remaining", remaining),
            (b"x-ratelimit-reset", str(math.ceil(d.reset_s)).encode())]


TOKEN_HEADERS = frozenset(_NAMES["tokens"])


class TokenHeaders:
    """Puts a tokens/min decision's headers in an answer's headers (replacing any earlier one's), until the
    answer starts; what comes later changes nothing sent. The answer's headers hold none before the first
    decision (a request makes one): only a later one has earlier ones to take out."""

    __slots__ = ("_added", "_into")

    def __init__(self, into: list[tuple[bytes, bytes]]) -> None:
        self._into = into
        self._added = False

    def __call__(self, decision: Decision) -> None:
        if self._added:
            self._into[:] = [h for h in self._into if h[0] not in TOKEN_HEADERS]
        raw = _raw_limit(decision, "tokens")
        self._into.extend(raw)
        self._added = self._added or bool(raw)


@dataclass
class Admission:
    """A request let through: the headers its answer carries, the in-flight place it holds, and whether
    its key has a tokens/min limit to report."""

    headers: list[tuple[bytes, bytes]]
    key_id: str | None = None
    holder: str | None = None
    tokens_limited: bool = False
    listening: bool = False


class RateLimiter:
    def __init__(self, counters: Counters, anonymous_rpm: int | None, trusted_proxies: Sequence[str],
                 metrics: Metrics) -> None:
        self.counters, self.anonymous_rpm, self.metrics = counters, anonymous_rpm, metrics
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    @staticmethod
    def exempt(path: str) -> bool:
        return path in OPS or path.startswith(ADMIN_PREFIX) or browser_page(path)

    def unlimited(self, scope: Scope) -> Admission | None:
        """`admit`'s answer where no limit applies (the probes and admin paths, an open server's requests),
        made without a coroutine; None: call `admit`."""
        if self.exempt(scope["path"]) or (self.anonymous_rpm is None and api_key(scope) is None):
            return Admission([])
        return None

    async def admit(self, scope: Scope) -> Admission | Refusal:
        """The request's place under its limits, or the 429 (counted here)."""
        return self.unlimited(scope) or await self.limited(scope)

    async def limited(self, scope: Scope) -> Admission | Refusal:
        """`admit` for a request `unlimited` found limits apply to (the edge asks that first, then this:
        the path and the key are not looked at twice)."""
        key = api_key(scope)
        try:
            decision, holder = await self._limits(scope, key)
        except LLMOpsError as exc:
            self.metrics.reject(UNKNOWN_MODEL, exc)
            return Refusal(exc)
        if decision is not None and not decision.allowed:  # refused: it took no in-flight place
            error = RateLimited(f"rate limit of {decision.limit} requests/min exceeded",
                                retry_after=math.ceil(decision.retry_after_s))
            self.metrics.reject(UNKNOWN_MODEL, error, "rate_limit")
            return Refusal(error, _headers(decision))
        if holder == FULL:
            assert key is not None
            error = RateLimited(f"this API key may have {key.limits.max_concurrent} requests in flight at once")
            self.metrics.reject(UNKNOWN_MODEL, error, "concurrency")
            return Refusal(error, _headers(decision) if decision is not None else None)
        headers = [] if decision is None else _raw_requests(decision)
        tpm = key.limits.tpm if key is not None else None
        return Admission(headers, key.id if key is not None else None, holder, tpm is not None and tpm >= 1)

    def report_tokens(self, admission: Admission, answer_headers: list[tuple[bytes, bytes]]) -> None:
        """For a key with a tokens/min limit: its decision (made later, by the accounting) goes into
        `answer_headers` (the answer's, sent when it starts), until `release`."""
        if admission.tokens_limited:
            listen_for_tokens(TokenHeaders(answer_headers))
            admission.listening = True

    def release(self, admission: Admission) -> None:
        """Give the in-flight place back. It does not await, so a cancelled request (client gone) gives its
        place back too; a shared store sends it with its next batch of writes."""
        if admission.listening:
            listen_for_tokens(None)
            admission.listening = False
        if admission.holder is not None and admission.key_id is not None:
            self.counters.release(admission.key_id, admission.holder)

    async def _limits(self, scope: Scope, key: ApiKey | None) -> tuple[Decision | None, str | None]:
        """The requests/min decision (None: no such limit) and the in-flight place taken (its holder; None:
        no such limit; FULL: all taken). A request the rate refuses never takes a place; with both limits
        the two are one step (one round trip on Redis)."""
        limit = key.limits.max_concurrent if key is not None else None
        if key is None or limit is None:
            return await self._requests(scope, key), None
        holder = unique_hex()
        if key.limits.rpm is not None and key.limits.rpm < 1:
            return await self._requests(scope, key), None
        if key.limits.rpm is None:
            return None, holder if await self.counters.acquire(key.id, limit, holder, HOLD_TTL_S) else FULL
        decision, placed = await self.counters.hit_and_acquire(f"key:{key.id}", key.limits.rpm, key.id, limit,
                                                               holder, HOLD_TTL_S)
        return decision, holder if placed else FULL

    async def _requests(self, scope: Scope, key: ApiKey | None) -> Decision | None:
        rpm = key.limits.rpm if key is not None else self.anonymous_rpm
        if rpm is None:
            return None
        if rpm < 1:  # a key stored before its bounds were checked: no request allowed (0 was a 500, -5 none)
            return Decision(False, max(rpm, 0), 0, WINDOW_S, WINDOW_S)
        subject = f"key:{key.id}" if key is not None else f"ip:{client_ip(scope, self.trusted)}"
        return await self.counters.hit_requests(subject, rpm)
