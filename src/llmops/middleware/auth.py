"""API-key authentication: `Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key`.
Missing or unknown → 401 in the OpenAI envelope. The key found is put in `scope["state"]["api_key"]` for
the handlers (allowed models, priority) and its id in the access log, never the secret. Once a key has
been created the server stays keyed: revoking every key does not reopen it, and once this process has
seen a key exist it stays keyed for its lifetime whatever the store says later (a Redis flushed, or
restarted without persistence, has no keys and would otherwise open the server to anyone). A server bound
beyond loopback (`Settings.exposed`) is never open: with no key in the store it refuses every request.

/health and /ready are always open, and so are the console and docs pages and signed image URLs (the
handler checks the signature; which paths these are is http_edge's); /metrics is open unless
`auth.metrics_require_key`; /admin is guarded by the admin key in its own router, and here a wrong one is
refused (403, as the router would) and counted. With no key in the store, the server is open (a
loopback-only embedded default: `llmops serve` refuses a non-loopback bind without keys) unless
`auth.require_keys` (`Settings.keys_required`).

Before all of it, the Host header (`HostCheck`, `Settings.allowed_hosts`): a server bound to loopback answers
only requests that name it by a loopback name or address (localhost, *.localhost, 127.x.x.x, [::1]), so a
page a browser loaded from another site, whose name its DNS then re-points at 127.0.0.1 (DNS rebinding), gets
403 for everything it asks a keyless server; a server bound elsewhere checks nothing unless the operator
lists hosts. The probes are exempt (a Kubernetes or Compose probe names the pod's address, and they tell
nothing), and so is a request with no Host at all (HTTP/1.0: no browser sends one).

Wrong admin keys are throttled per client address (auth_throttle.py): an address that presented too many
gets 429 on /admin before its key is looked at. API keys are not: they are 256 random bits, which no rate
of guessing finds, and a lockout of the API would let one client lock out every client that shares its
address (all of them, behind a proxy not in `rate_limits.trusted_proxies`). The admin key is chosen by an
operator, so guessing it is worth slowing, and a lockout closes only the admin API. The presented key is
never logged."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterable

from pydantic import SecretStr
from starlette.types import Scope

from llmops.errors import AuthLockedOut, HostNotAllowed, LLMOpsError, PermissionDenied, Unauthorized
from llmops.http_edge import (
    ADMIN_PREFIX,
    PROBES,
    UNKNOWN_MODEL,
    Refusal,
    browser_page,
    presented_admin_key,
    presented_key,
    set_api_key,
    signed_image_request,
)
from llmops.middleware.auth_throttle import FailureThrottle
from llmops.observability.metrics import Metrics
from llmops.settings import Settings, admin_key_matches
from llmops.stores.keys import KeyStore, remembered, verify
from llmops.tasks import SingleFlight

log = logging.getLogger("llmops.auth")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_HOST_REFUSED = ("the Host header names no host this server answers to (it refuses other names: DNS rebinding "
                 "protection); its operator lists the names it is reached by in allowed_hosts")


class HostCheck:
    """Which Host headers a server answers, decided once at start from the bind and `allowed_hosts`.

    `allowed(host)` takes the raw header value: a set lookup on those bytes answers what clients send (the
    names with and without the bound port); only a miss is parsed (port stripped, IPv6 in brackets, lower
    case, a trailing dot dropped) and compared by name, `*.domain` suffix, or, in the automatic mode, as a
    loopback address (127.0.0.0/8, ::1) or a name under .localhost (RFC 6761: it never leaves the host).

    `loopback_only` (the automatic mode) applies to requests that reached a loopback socket: a request with
    no such address (an in-process ASGI transport, a test client, a Unix socket) came from no browser and is
    not checked. An explicit list applies to every request."""

    def __init__(self, names: Iterable[str], *, loopback: bool, loopback_only: bool = False, port: int = 0) -> None:
        listed = tuple(names)
        self.loopback, self.loopback_only = loopback, loopback_only
        exact = [n for n in listed if not n.startswith("*.")]
        self._suffixes = tuple("." + n[2:] for n in listed if n.startswith("*."))
        self._names = frozenset(exact)
        ports = [b""] + ([f":{port}".encode()] if port else [])
        self._raw = frozenset(n.encode() + p for n in exact for p in ports)

    @classmethod
    def from_settings(cls, settings: Settings) -> HostCheck | None:
        """None when nothing is checked: bound beyond loopback with no list, or a list holding `*`."""
        hosts = settings.allowed_hosts
        if hosts is None:
            if not settings.loopback_bind():
                return None
            return cls(LOOPBACK_NAMES, loopback=True, loopback_only=True, port=settings.port)
        if "*" in hosts:
            return None
        return cls(hosts, loopback=False, port=settings.port)

    def allowed(self, host: bytes) -> bool:
        if host in self._raw:
            return True
        if not host.strip():  # an empty Host is no name, as a missing one (no browser sends either)
            return True
        name = _host_name(host)
        if name is None:
            return False
        if name in self._names or (self._suffixes and name.endswith(self._suffixes)):
            return True
        if not self.loopback:
            return False
        if name.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(name[1:-1] if name.startswith("[") else name).is_loopback
        except ValueError:
            return False

    def refusal(self, scope: Scope) -> Refusal | None:
        """The 403 for a request whose Host is not allowed (every Host header, when it has several); None
        otherwise, and for a request without one."""
        for header, value in scope["headers"]:
            if header == b"host" and not self.allowed(value):
                if self.loopback_only and not _reached_loopback(scope):
                    return None
                return Refusal(HostNotAllowed(_HOST_REFUSED))
        return None


def _host_name(host: bytes) -> str | None:
    """A Host value's name, as `allowed_hosts` entries are written (settings.allowed_host_entry): lower case,
    no port, no trailing dot, an IPv6 address in brackets; None when it is no host at all."""
    try:
        text = host.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        try:
            return f"[{ipaddress.IPv6Address(text[1:end])}]"
        except ValueError:
            return None
    name, _, port = text.partition(":")
    if (port and not port.isdigit()) or not name:
        return None
    return name.rstrip(".")


def _reached_loopback(scope: Scope) -> bool:
    """Whether the request arrived at a loopback socket address (the ASGI scope's `server`)."""
    server = scope.get("server")
    if not server:
        return False
    try:
        return ipaddress.ip_address(str(server[0])).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, store: KeyStore, metrics_require_key: bool, metrics: Metrics, refresh_s: float = 1.0,
                 require_keys: bool = False, throttle: FailureThrottle | None = None,
                 admin_key: SecretStr | None = None, hosts: HostCheck | None = None) -> None:
        self.store, self.metrics, self.refresh_s, self.admin_key = store, metrics, refresh_s, admin_key
        self.hosts = hosts  # None: every Host is answered
        self.open_paths = PROBES if metrics_require_key else (*PROBES, "/metrics")
        self._keyed = require_keys  # once true, for the process's lifetime
        self._counted_at = 0.0  # time.monotonic() of the last count of the keys in the store (0: none yet)
        self._recount: SingleFlight[str, int] = SingleFlight()
        self.throttle = throttle or FailureThrottle(0, 60.0)  # none given: nothing is counted
        self._lockouts = self.throttle.locked  # /admin's first test: empty while nobody is locked out

    @classmethod
    def from_settings(cls, store: KeyStore, settings: Settings, metrics: Metrics) -> Authenticator:
        auth = settings.auth
        throttle = FailureThrottle(auth.max_failures, auth.failure_window_s, settings.rate_limits.trusted_proxies)
        return cls(store, auth.metrics_require_key, metrics, auth.key_refresh_s,
                   require_keys=settings.keys_required(), throttle=throttle, admin_key=auth.admin_key,
                   hosts=HostCheck.from_settings(settings))

    async def _any_keys(self) -> bool:
        """Whether requests need a key. Once they do, they always will, and the store is not asked again.
        Until then its key count is re-read every `refresh_s` (keys created by the CLI, another replica or
        the admin API show up this soon), one re-read at a time. Requests go by the last count while a
        re-read runs (else, under load, every one of them would wait for a store busy writing spend), but
        never by a count older than twice `refresh_s`: the first request after a quiet spell, and every
        request arriving with it, waits for the re-read, so a key created while the server was idle is
        required from the next request on."""
        if self._keyed:
            return True
        age = time.monotonic() - self._counted_at
        if age >= self.refresh_s:
            recount = self._recount.start("keys", self._count)
            if age >= 2 * self.refresh_s:
                await asyncio.shield(recount)
        return self._keyed

    async def _count(self) -> int:
        """The store's key count (any at all makes the process keyed for good); when a re-read fails, the
        last count, none (logged; tried again `refresh_s` later). The first count has no last one: its
        error goes to the requests waiting for it."""
        try:
            count = await self.store.key_count()
        except Exception as error:
            if not self._counted_at:
                raise
            log.warning("could not re-read whether any API key exists (%s: %s); going by the last count",
                        type(error).__name__, error)
            self._counted_at = time.monotonic()  # tried again `refresh_s` from now, not by every request
            return 0
        self._counted_at = time.monotonic()
        if count > 0:
            self._keyed = True
        return count

    def exempt(self, scope: Scope) -> bool:
        path: str = scope["path"]
        return (path in self.open_paths or path.startswith(ADMIN_PREFIX) or browser_page(path)
                or signed_image_request(path, scope.get("query_string", b"")))

    async def check(self, scope: Scope) -> Refusal | None:
        """None when the request may go on (its key, if any, put in the scope); else the 401 (or the
        store's error when it cannot vouch for a key), or on /admin the 403 of a wrong admin key or the 429
        of an address locked out for them; first of all, the 403 of a Host this server does not answer
        (the probes excepted)."""
        if self.hosts is not None and scope["path"] not in PROBES:
            refused = self.hosts.refusal(scope)
            if refused is not None:
                return refused
        if self.exempt(scope):
            return self._check_admin(scope) if scope["path"].startswith(ADMIN_PREFIX) else None
        try:
            keyed = self._keyed or await self._any_keys()  # once keyed, no coroutine to ask
            if not keyed:
                return None
            secret = presented_key(scope)
            key = (remembered(self.store, secret) or await verify(self.store, secret)) if secret else None
        except LLMOpsError as exc:  # the store is unreachable and cannot vouch for the key
            self.metrics.reject(UNKNOWN_MODEL, exc)
            return Refusal(exc)
        if key is None:
            # worded so that the redaction of error messages leaves it whole ("Bearer <key>" is a credential)
            message = "invalid API key" if secret else \
                "missing API key: send it in the Authorization header, after the word Bearer"
            return Refusal(Unauthorized(message), {"WWW-Authenticate": "Bearer"})
        set_api_key(scope, key)
        return None

    def _check_admin(self, scope: Scope) -> Refusal | None:
        """/admin: a locked-out address is refused before its key is looked at; a wrong admin key is counted
        and refused (403, as the router would refuse it). The router checks the key again, and answers a
        missing one, or a disabled admin API, itself."""
        if self._lockouts:
            locked_out = self._locked_out(scope)
            if locked_out is not None:
                return locked_out
        given = presented_admin_key(scope)
        if self.admin_key is None or not given or admin_key_matches(self.admin_key, given):
            return None
        self.throttle.failed(scope)
        return Refusal(PermissionDenied("a valid admin key is required"))

    def _locked_out(self, scope: Scope) -> Refusal | None:
        """The 429 of an address locked out for its failures (counted in llmops_rejections_total), or None."""
        retry_after = self.throttle.retry_after(scope)
        if retry_after is None:
            return None
        error = AuthLockedOut(f"too many wrong admin keys from this address: try again in {retry_after} s",
                              retry_after=retry_after)
        self.metrics.reject(UNKNOWN_MODEL, error, "auth_lockout")
        return Refusal(error)
