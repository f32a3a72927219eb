"""One SQLite connection shared by the SQLite-backed stores (keys, spend): autocommit (or one explicit
transaction for a batch of rows), WAL so the CLI and the server can use the file at once, and statements run
in a worker thread under a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from llmops.errors import ConfigError


class SqliteDb:
    def __init__(self, path: str | Path) -> None:
        target = str(path)
        try:
            if target != ":memory:":
                file = Path(target).expanduser()
                file.parent.mkdir(parents=True, exist_ok=True)
                target = str(file)
            self._db = sqlite3.connect(target, timeout=5, check_same_thread=False, isolation_level=None)
            if target != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:  # a read-only filesystem (a container), a missing permission
            raise ConfigError(
                f"state.sqlite_path {target}: cannot open it for writing ({exc}). Keys and spend live there: "
                "mount a writable volume at its folder, point LLMOPS_STATE__SQLITE_PATH at a writable path, or "
                "use state.backend memory (nothing kept) or redis") from None
        self._lock = threading.Lock()

    def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """`sql` once per row, all in one transaction: every row is written, or none."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (the file busy) leaves it open too
                    self._db.execute("ROLLBACK")
                raise

    async def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self.run, sql, args)

    def close(self) -> None:
        with self._lock:
            self._db.close()
