"""API keys. Only a SHA-256 hash of each secret is stored (secrets are 256-bit random, so a fast hash is the
right tool, as for GitHub or Stripe tokens); the secret is shown once, at creation. Lookups compare hashes
in constant time. The key stores are async: the Redis one talks to the network, the others run their
SQLite work in a thread."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmops.errors import NotFound
from llmops.stores.sqlite import SqliteDb
from llmops.tasks import SingleFlight

log = logging.getLogger("llmops.auth")
Priority = Literal["interactive", "batch"]
BudgetPeriod = Literal["day", "week", "month", "total"]
SECRET_PREFIX = "sk-llmops-"


@dataclass(frozen=True)
class KeyLimits:
    """What one key may use. None: no limit."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt up front, completion when the request settles)
    max_concurrent: int | None = None  # requests in flight at once
    budget_usd: float | None = None  # spend allowed per budget period
    budget_period: BudgetPeriod = "month"  # when the budget resets (UTC calendar periods); total: never

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    hash: str
    display: str  # the secret's first characters, to tell keys apart
    models: tuple[str, ...] = ()  # empty: every model
    priority: Priority = "interactive"
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "display": self.display, "models": list(self.models),
                "priority": self.priority, **self.limits.as_dict(), "created_at": int(self.created_at),
                "revoked_at": int(self.revoked_at) if self.revoked_at else None}

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "models": list(self.models)})

    @staticmethod
    def from_json(raw: str | bytes) -> ApiKey:
        data = json.loads(raw)
        return ApiKey(**{**data, "models": tuple(data["models"]), "limits": KeyLimits(**data["limits"])})


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str, models: tuple[str, ...], priority: Priority, limits: KeyLimits | None = None
            ) -> tuple[ApiKey, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(f"key_{secrets.token_hex(6)}", name, hash_secret(secret), secret[:16] + "...", models, priority,
                 limits=limits or KeyLimits())
    return key, secret


def unserved(models: Sequence[str], served: Sequence[str]) -> list[str]:
    """The names in `models` that are none of `served` (the models and routed aliases a request may name, what
    `ApiKey.allows` is asked about), each once: what POST /admin/keys and `llmops keys create` refuse. A key
    restricted to no served name could call nothing; "*" is no wildcard (an empty list is "every model")."""
    known = set(served)
    return list(dict.fromkeys(m for m in models if m not in known))


class KeyStore(Protocol):
    async def add(self, key: ApiKey) -> None: ...
    async def by_hash(self, digest: str, fresh: bool = False) -> ApiKey | None:
        """The key whose hash is `digest`; `fresh`: as the store holds it now, not a copy kept of it (Redis'
        key store keeps each key a second)."""
        ...

    async def get(self, key_id: str) -> ApiKey: ...
    async def all(self) -> list[ApiKey]: ...
    async def revoke(self, key_id: str) -> ApiKey: ...
    async def key_count(self) -> int:
        """Keys ever created, revoked ones included: once there is one, every request needs a key."""
        ...


async def verify(store: KeyStore, secret: str) -> ApiKey | None:
    """The active key whose hash matches `secret`, compared in constant time. A key store that remembers
    keys (`CachedKeys`) is told which secret it was, so the next request with it needs no hash
    (`remembered`)."""
    digest = hash_secret(secret)
    key = await store.by_hash(digest)
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.hash, digest):
        return None
    if isinstance(store, CachedKeys):
        store.remember(secret, key)
    return key


def remembered(store: KeyStore, secret: str) -> ApiKey | None:
    """What `verify` would answer for `secret`, when the store remembers it (`CachedKeys.remembered`):
    without a hash, a store call or a coroutine; None: `verify` it."""
    return store.remembered(secret) if isinstance(store, CachedKeys) else None


def revoked(key: ApiKey) -> ApiKey:
    return key if key.revoked_at else dataclasses.replace(key, revoked_at=time.time())


def missing(key_id: str) -> NotFound:
    return NotFound(f"no API key {key_id!r}", param="id")


@dataclass
class _Found:
    """A key found by hash: when the lookup that found it ended, and whether it is being looked up again."""

    key: ApiKey
    at: float  # time.monotonic() when its lookup ended
    refreshing: bool = False


class CachedKeys:
    """A key store whose keys found by hash are remembered for `ttl_s`, so a request with a valid key costs
    no store round trip (on SQLite, a worker-thread hop; on Redis, a network one). A key revoked through
    this store is forgotten at once; one revoked elsewhere (the CLI, another replica) stops working within
    `ttl_s` of the lookup that last found it (which reads the store itself: `by_hash(fresh=True)`, never a
    copy the store keeps), as a key created elsewhere starts working within `auth.key_refresh_s`. Only hashes
    of stored keys are remembered: a client sending made-up keys cannot grow the cache.

    A key in use is looked up again once half its `ttl_s` has passed, by one lookup the requests do not
    wait for (they go by the key remembered, which is still within `ttl_s` of its own lookup); only a key
    not used for half its `ttl_s` is waited for. Before, every request of a busy key that came
    once its `ttl_s` ran out waited for the store, once per `ttl_s` (SpendTotals' reads were the same).

    The secrets `verify` found a stored key for are remembered too, each with its hash (`remember`), so a
    request with a remembered key costs no SHA-256 (`remembered`: two dict lookups, under the same `ttl_s`
    and revocation as by hash). They are the secrets of stored keys only, in this process's memory (as the
    requests bringing them are) until a lookup finds their key revoked or gone; the lookup compares a
    presented secret to them by its str hash, which is keyed by the process's random hash seed, so its
    timing tells a client nothing of a stored secret.

    A failed lookup ahead is logged (requests are not told: they go by the key remembered); `close` cancels
    those in flight before the store closes."""

    def __init__(self, store: KeyStore, ttl_s: float) -> None:
        self.store, self.ttl_s = store, ttl_s
        self._found: dict[str, _Found] = {}
        self._looking: SingleFlight[str, ApiKey | None] = SingleFlight()  # lookups in flight, by hash
        self._digests: dict[str, str] = {}  # secret -> its hash, for the secrets of stored keys
        self._revocations = 0  # revocations through this store: a lookup across one is not kept

    def remember(self, secret: str, key: ApiKey) -> None:
        """`secret` is `key`'s (`verify` found it by the secret's hash)."""
        self._digests[secret] = key.hash

    def remembered(self, secret: str) -> ApiKey | None:
        """The active key of a remembered `secret`, found by hash less than `ttl_s` ago; None: not known
        now (never verified, expired, revoked through this store, or revoked when last looked up)."""
        digest = self._digests.get(secret)
        key = self._fresh(digest) if digest is not None else None
        return key if key is not None and key.revoked_at is None else None

    def _fresh(self, digest: str) -> ApiKey | None:
        """The key remembered for `digest` while within `ttl_s` of its lookup (past half of it, its next
        lookup started); None when there is none."""
        hit = self._found.get(digest)
        if hit is None:
            return None
        age = time.monotonic() - hit.at
        if age >= self.ttl_s:
            return None
        if age >= self.ttl_s / 2 and not hit.refreshing:
            hit.refreshing = True
            self._looking.start(digest, lambda: self._look_up(digest, ahead=True))
        return hit.key

    async def add(self, key: ApiKey) -> None:
        await self.store.add(key)

    async def by_hash(self, digest: str, fresh: bool = False) -> ApiKey | None:
        """The key, remembered (unless `fresh`) or looked up. Requests with the same key that arrive while it
        is being looked up wait for that one lookup instead of each sending its own (every request of a busy
        client would otherwise query the store once per `ttl_s`, all at once, and queue behind each other)."""
        key = None if fresh else self._fresh(digest)
        if key is not None:
            return key
        return await asyncio.shield(self._looking.start(digest, lambda: self._look_up(digest)))

    async def _look_up(self, digest: str, ahead: bool = False) -> ApiKey | None:
        """One lookup of the store itself (its error goes to whoever waits for it; a failed lookup ahead of
        time is logged and not tried again before the key's `ttl_s` runs out, when requests wait for the next
        one). A key found revoked or gone takes its remembered secrets with it."""
        revocations = self._revocations
        try:
            key = await self.store.by_hash(digest, fresh=True)
        except Exception as exc:
            if ahead:
                log.warning("looking API key %s... up ahead of its expiry failed (requests wait for the store "
                            "once it expires): %s", digest[:8], type(exc).__name__)
            raise
        if key is None or key.revoked_at is not None:
            self._forget_secrets(digest)
        if key is None:
            self._found.pop(digest, None)
        elif revocations == self._revocations:
            self._found[digest] = _Found(key, time.monotonic())  # (across a revocation here: not kept)
        return key

    def _forget_secrets(self, digest: str) -> None:
        for secret in [s for s, d in self._digests.items() if d == digest]:
            del self._digests[secret]

    async def close(self) -> None:
        """Cancel the lookups ahead in flight (before the store they read closes)."""
        await self._looking.cancel()

    async def get(self, key_id: str) -> ApiKey:
        return await self.store.get(key_id)

    async def all(self) -> list[ApiKey]:
        return await self.store.all()

    async def revoke(self, key_id: str) -> ApiKey:
        key = await self.store.revoke(key_id)
        self._revocations += 1
        self._found.pop(key.hash, None)
        self._forget_secrets(key.hash)
        return key

    async def key_count(self) -> int:
        return await self.store.key_count()


_SCHEMA = """CREATE TABLE IF NOT EXISTS llmops_keys (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, body TEXT NOT NULL)"""


class SqliteKeyStore:
    """Keys in SQLite: in a file they survive restarts and the CLI and the server share them; `:memory:`
    for tests."""

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        db.run(_SCHEMA)

    async def _one(self, column: str, value: str) -> ApiKey | None:
        rows = await self._db.query(f"SELECT body FROM llmops_keys WHERE {column} = ?", (value,))
        return ApiKey.from_json(rows[0][0]) if rows else None

    async def add(self, key: ApiKey) -> None:
        await self._db.query("INSERT INTO llmops_keys VALUES (?, ?, ?, ?)",
                             (key.id, key.hash, key.created_at, key.to_json()))

    async def by_hash(self, digest: str, fresh: bool = False) -> ApiKey | None:
        return await self._one("hash", digest)  # (no copy kept: always fresh)

    async def get(self, key_id: str) -> ApiKey:
        key = await self._one("id", key_id)
        if key is None:
            raise missing(key_id)
        return key

    async def all(self) -> list[ApiKey]:
        rows = await self._db.query("SELECT body FROM llmops_keys ORDER BY created_at")
        return [ApiKey.from_json(r[0]) for r in rows]

    async def revoke(self, key_id: str) -> ApiKey:
        key = revoked(await self.get(key_id))
        await self._db.query("UPDATE llmops_keys SET body = ? WHERE id = ?", (key.to_json(), key_id))
        return key

    async def key_count(self) -> int:
        return int((await self._db.query("SELECT COUNT(*) FROM llmops_keys"))[0][0])
