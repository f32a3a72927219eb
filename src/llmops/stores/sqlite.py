"""One SQLite connection shared by the SQLite-backed stores (keys, spend): autocommit (or one explicit
transaction for a batch of rows), WAL so the CLI and the server can use the file at once, and statements run
in a worker thread under a lock.

The worker threads are the store's own (`THREADS` of them, made on first use and shut when the state closes,
with the app), not asyncio's default executor: that one also runs the guardrails' and the embeddings' work
(`asyncio.to_thread`), and a key lookup queued behind them there waited as long as they took. Statements take
the connection's lock in turn anyway, so a few threads are all it can use."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from llmops.errors import ConfigError

T = TypeVar("T")
ROWS_PER_STATEMENT = 2048  # rows in one INSERT at most (and within SQLite's limit on a statement's variables)
THREADS = 2  # the store's own worker threads: one statement runs at a time (the lock), the next one is ready


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
        self._max_vars = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._pool_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None  # made on first use (`call`), shut by `close`

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="llmops-sqlite")
            return self._executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a method of this connection: `run`, `insert_many`) on one of the store's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def insert_many(self, insert: str, rows: list[tuple[Any, ...]]) -> None:
        """`insert` ("INSERT INTO t VALUES", without the values) for every row, atomically: every row is
        written, or none. The rows go in one multi-row statement (its own transaction), or, past SQLite's
        limit on a statement's variables, in several inside one transaction. Each statement is one hop of
        the GIL: the sqlite3 module releases it around every step, so a statement per row (executemany)
        made this thread and the event loop trade the GIL once per row, which on a busy server cost more
        CPU than the writing."""
        if not rows:
            return
        width = len(rows[0])
        per = max(1, min(ROWS_PER_STATEMENT, self._max_vars // width))
        parts = [rows[i:i + per] for i in range(0, len(rows), per)]
        with self._lock:
            if len(parts) == 1:
                self._insert(insert, width, parts[0])
                return
            self._db.execute("BEGIN")
            try:
                for part in parts:
                    self._insert(insert, width, part)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (the file busy) leaves it open too
                    self._db.execute("ROLLBACK")
                raise

    def _insert(self, insert: str, width: int, rows: list[tuple[Any, ...]]) -> None:
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(rows))
        self._db.execute(f"{insert} {values}", [v for row in rows for v in row])

    async def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self.call(self.run, sql, args)

    def close(self) -> None:
        """Shut the threads (statements still queued are dropped, a running one finishes) and the connection."""
        with self._pool_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._db.close()
