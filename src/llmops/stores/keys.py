"""API keys. Only a SHA-256 hash of each secret is stored (secrets are 256-bit random, so a fast hash is the
right tool, as for GitHub or Stripe tokens); the secret is shown once, at creation. Lookups compare hashes
in constant time."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from llmops.errors import NotFound

Priority = Literal["interactive", "batch"]
SECRET_PREFIX = "sk-llmops-"


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
    rpm: int | None = None  # requests per minute; None: no limit

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "display": self.display, "models": list(self.models),
                "priority": self.priority, "rpm": self.rpm, "created_at": int(self.created_at),
                "revoked_at": int(self.revoked_at) if self.revoked_at else None}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str, models: tuple[str, ...], priority: Priority, rpm: int | None = None) -> tuple[ApiKey, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(f"key_{secrets.token_hex(6)}", name, hash_secret(secret), secret[:16] + "...", models, priority,
                 rpm=rpm)
    return key, secret


class KeyStore(Protocol):
    def add(self, key: ApiKey) -> None: ...
    def by_hash(self, digest: str) -> ApiKey | None: ...
    def get(self, key_id: str) -> ApiKey: ...
    def all(self) -> list[ApiKey]: ...
    def revoke(self, key_id: str) -> ApiKey: ...
    def key_count(self) -> int:
        """Keys ever created, revoked ones included: once there is one, every request needs a key."""
        ...


def verify(store: KeyStore, secret: str) -> ApiKey | None:
    """The active key whose hash matches `secret`, compared in constant time."""
    digest = hash_secret(secret)
    key = store.by_hash(digest)
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.hash, digest):
        return None
    return key


class MemoryKeyStore:
    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}

    def add(self, key: ApiKey) -> None:
        self._keys[key.id] = key

    def by_hash(self, digest: str) -> ApiKey | None:
        return next((k for k in self._keys.values() if hmac.compare_digest(k.hash, digest)), None)

    def get(self, key_id: str) -> ApiKey:
        if key_id not in self._keys:
            raise NotFound(f"no API key {key_id!r}", param="id")
        return self._keys[key_id]

    def all(self) -> list[ApiKey]:
        return list(self._keys.values())

    def revoke(self, key_id: str) -> ApiKey:
        key = self.get(key_id)
        self._keys[key_id] = revoked = ApiKey(**{**key.__dict__, "revoked_at": time.time()})
        return revoked

    def key_count(self) -> int:
        return len(self._keys)


_SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, display TEXT NOT NULL,
    models TEXT NOT NULL, priority TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, rpm INTEGER)"""
_COLUMNS = "id, name, hash, display, models, priority, created_at, revoked_at, rpm"


class SqliteKeyStore:
    """Keys in a SQLite file: they survive restarts, and the CLI and the server share them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5)

    def _rows(self, where: str = "", args: tuple[object, ...] = ()) -> list[ApiKey]:
        with self._lock, self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM api_keys {where}", args).fetchall()
        return [ApiKey(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], r[7], r[8]) for r in rows]

    def add(self, key: ApiKey) -> None:
        with self._lock, self._connect() as db:
            db.execute(f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (key.id, key.name, key.hash, key.display, json.dumps(list(key.models)), key.priority,
                        key.created_at, key.revoked_at, key.rpm))

    def by_hash(self, digest: str) -> ApiKey | None:
        found = self._rows("WHERE hash = ?", (digest,))
        return found[0] if found else None

    def get(self, key_id: str) -> ApiKey:
        found = self._rows("WHERE id = ?", (key_id,))
        if not found:
            raise NotFound(f"no API key {key_id!r}", param="id")
        return found[0]

    def all(self) -> list[ApiKey]:
        return self._rows("ORDER BY created_at")

    def revoke(self, key_id: str) -> ApiKey:
        self.get(key_id)
        with self._lock, self._connect() as db:
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                       (time.time(), key_id))
        return self.get(key_id)

    def key_count(self) -> int:
        with self._lock, self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])


def build_key_store(kind: str, sqlite_path: str) -> KeyStore:
    return SqliteKeyStore(sqlite_path) if kind == "sqlite" else MemoryKeyStore()
