"""Signed, expiring image URLs: `/v1/images/files/<name>?expires=<unix s>&sig=<hex>`, where `sig` is
HMAC-SHA256 over "<name>:<expires>" with a server secret. Like OpenAI's image URLs they can be fetched
without the API key (an `<img src>`, a download), until they expire; a bad or expired signature gets 403.
The auth middleware lets a signed request through (`http_edge.signed_image_request`); `api/images.py`
verifies it with the app's one `UrlSigner` (`Services.url_signer`, loaded in the lifespan).

The secret is `images.url_secret` when set. Unset, it is generated once: kept in the process with the
sqlite and memory backends (one process), and shared through Redis with the redis backend, so any replica
can serve a URL another one signed (the first replica to start writes it; the others read it). Two replicas
starting in the same instant can each keep their own (the store has no set-if-absent here); deployments
with several replicas that must never disagree set `images.url_secret` (the Kubernetes manifests' Secret)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from urllib.parse import urlencode

from llmops.errors import PermissionDenied
from llmops.settings import ImageSettings
from llmops.stores.cache import ResponseCache

_SHARED = "signed-url-secret"
_SHARED_TTL_S = 10 * 365 * 86400.0
# what `query` writes, and nothing else: unix seconds as str(int) writes them (no sign, no leading zero, no
# underscore, no space, ASCII digits only; at most 20 of them), and a SHA-256 hexdigest
_EXPIRES = re.compile(r"0|[1-9][0-9]{0,19}")
_SIG = re.compile(r"[0-9a-f]{64}")


class UrlSigner:
    def __init__(self, images: ImageSettings, shared: ResponseCache | None) -> None:
        """`shared`: where replicas share a generated secret (the Redis cache); None: this process only."""
        self.ttl_s = images.url_ttl_s
        self._secret = images.url_secret.get_secret_value().encode() if images.url_secret else None
        self._shared = shared

    async def load(self) -> None:
        """Settle the secret (at start: with Redis this reads or writes the shared one)."""
        if self._secret is None:
            self._secret = await self._shared_secret() if self._shared is not None else _new_secret()

    def secret(self) -> bytes:
        if self._secret is None:  # not loaded (an app without its lifespan): this process's own
            self._secret = _new_secret()
        return self._secret

    async def _shared_secret(self) -> bytes:
        assert self._shared is not None
        found = await self._shared.get(_SHARED)
        if found is None:
            await self._shared.put(_SHARED, _new_secret().decode(), _SHARED_TTL_S)
            found = await self._shared.get(_SHARED)  # a replica that wrote at the same time: one value wins
        return (found or _new_secret().decode()).encode()  # Redis away: this process's own, until restart

    def query(self, name: str, now: float | None = None) -> str:
        """The query string that makes the file `name` fetchable without a key for `ttl_s`."""
        expires = int((now or time.time()) + self.ttl_s)
        return urlencode({"expires": expires, "sig": _sign(self.secret(), name, expires)})

    def verify(self, name: str, expires: str | None, sig: str | None, now: float | None = None) -> None:
        """403 unless `sig` signs `name` until `expires` and that has not passed. Only the forms `query` writes
        are read: `expires` in plain ASCII decimal digits (int() would also take "+1", " 1", "01", "1_0" or other
        scripts' digits), `sig` in 64 lowercase hex digits, compared as bytes (compare_digest raises TypeError on
        a str that is not ASCII, which was a 500 for `sig=%C3%A9`)."""
        if expires is None or not _EXPIRES.fullmatch(expires) or sig is None or not _SIG.fullmatch(sig):
            raise PermissionDenied("this image URL is not validly signed")
        until = int(expires)
        good = _sign(self.secret(), name, until)
        if not hmac.compare_digest(good.encode(), sig.encode()):
            raise PermissionDenied("this image URL is not validly signed")
        if until < (now or time.time()):
            raise PermissionDenied("this image URL has expired: request the image again for a new one")


def _new_secret() -> bytes:
    return secrets.token_hex(32).encode()


def _sign(secret: bytes, name: str, expires: int) -> str:
    return hmac.new(secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()
