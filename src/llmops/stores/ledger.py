"""Spend: each request's cost recorded against its key and model, summed for budgets (per key and budget
period), for the global spend circuit breaker (all keys, the last hour) and for reports (by day, key, model).
SQLite here (a file for the embedded default, `:memory:` for the memory backend); Redis in stores/redis.py."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

from llmops.stores.counters import Decision
from llmops.stores.group_commit import GroupCommit
from llmops.stores.sqlite import SqliteDb

log = logging.getLogger("llmops.ledger")
ANONYMOUS = "-"  # the key id spend is recorded under when the server runs without keys


class SpendEntry(NamedTuple):
    """One request's spend (every request that used something makes one: a named tuple is made in one
    call, where a frozen dataclass sets each field through `object.__setattr__`)."""

    key_id: str
    model: str
    cost_usd: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    at: float = 0.0  # unix time; 0: now

    def stamped(self) -> SpendEntry:
        return self if self.at else self._replace(at=time.time())


@dataclass(frozen=True)
class SpendRow:
    day: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int
    cost_usd: float


@dataclass(frozen=True)
class TokenHit:
    """A tokens/min check made in the same step as a budget reservation (`Counters.hit_tokens`'s own)."""

    per_minute: int
    count: int


@dataclass(frozen=True)
class Reservation:
    """What a shared budget check answered: whether the reservation was made, and what it saw."""

    made: bool
    spent: float  # the key's spend in the period, every replica's
    reserved: float  # held by other requests in flight, every replica's (this one's not included)
    tokens: Decision | None = None  # the tokens/min decision, when asked and the budget allowed


class SharedBudgets(Protocol):
    """Budget reservations shared by replicas (the Redis backend): check and reserve in one atomic step, so
    that replicas together overshoot a budget by at most one request's worst case. A reservation expires
    after its `ttl_s` (a replica that died never settles), and is released when its request settles."""

    async def reserve(self, key_id: str, since: float, budget_usd: float, usd: float, holder: str,
                      ttl_s: float, tokens: TokenHit | None = None) -> Reservation | None:
        """None when the store cannot be reached and its policy fails open (no reservation made). With
        `tokens`, the key's tokens/min is checked and counted in the same step once the budget allows: a
        refusal of either makes no reservation and counts no tokens."""
        ...

    def release(self, key_id: str, holder: str) -> None:
        """Give the reservation back; nobody waits for it (it goes with the store's next batch of writes)."""
        ...


class Ledger(Protocol):
    async def record(self, entry: SpendEntry) -> None: ...

    def queue(self, entry: SpendEntry) -> asyncio.Future[None]:
        """Queue `entry` without waiting: the future resolves once it is written (or its batch failed).
        It is shared by the batch: wait on it through `asyncio.shield`, or with a done callback."""
        ...

    async def key_spend(self, key_id: str, since: float) -> float | None:
        """What `key_id` spent from `since` (a UTC day boundary) until now; None when the store cannot be
        read and its policy fails open (no figure, never a made-up 0: pipeline/spend_totals.py keeps the
        last one)."""
        ...

    async def hour_spend(self) -> float | None:
        """What every key together spent in the last 60 minutes (None as for `key_spend`)."""
        ...

    async def report(self, first_day: str, last_day: str, key_id: str | None = None) -> list[SpendRow]:
        """One row per (day, key, model) between the two UTC days (YYYY-MM-DD, inclusive)."""
        ...


def day_of(at: float) -> str:
    return _day(int(at // 86400))  # a UTC day is 86,400 s of unix time (which has no leap seconds)


@lru_cache(maxsize=8)
def _day(number: int) -> str:
    return datetime.fromtimestamp(number * 86400, UTC).strftime("%Y-%m-%d")


def days_between(first_day: str, last_day: str, limit: int = 400) -> list[str]:
    start = datetime.strptime(first_day, "%Y-%m-%d")
    count = min(limit, (datetime.strptime(last_day, "%Y-%m-%d") - start).days + 1)
    return [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(max(0, count))]


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS llmops_spend (at REAL NOT NULL, day TEXT NOT NULL, key_id TEXT NOT NULL,
       model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
       images INTEGER NOT NULL, cost_usd REAL NOT NULL, requests INTEGER NOT NULL DEFAULT 1)""",
    "CREATE INDEX IF NOT EXISTS llmops_spend_key_at ON llmops_spend (key_id, at)",
    "CREATE INDEX IF NOT EXISTS llmops_spend_at ON llmops_spend (at)",
    "CREATE INDEX IF NOT EXISTS llmops_spend_day ON llmops_spend (day)",
)
# a file written before rows held several requests: each of its rows is one request
_ADD_REQUESTS = "ALTER TABLE llmops_spend ADD COLUMN requests INTEGER NOT NULL DEFAULT 1"
_INSERT = ("INSERT INTO llmops_spend (at, day, key_id, model, prompt_tokens, completion_tokens, images, cost_usd, "
           "requests) VALUES")


def _rows(batch: list[SpendEntry]) -> list[tuple[Any, ...]]:
    """One row per (day, key, model) in a batch, with the number of requests it sums and the time of its
    last one. A batch spans up to a tenth of a second (LINGER_S) and never a day boundary (the day is in the
    group), so budgets, which read whole UTC days, read the same sums; the last hour's spend may count an
    entry up to one batch early. Under load that is one row per batch instead of one per request: each
    row costs four B-tree inserts (the table and its three indexes)."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for e in batch:
        day = day_of(e.at)
        row = groups.get((day, e.key_id, e.model))
        if row is None:
            groups[(day, e.key_id, e.model)] = [e.at, day, e.key_id, e.model, e.prompt_tokens,
                                                 e.completion_tokens, e.images, e.cost_usd, 1]
            continue
        row[0] = max(row[0], e.at)
        row[4] += e.prompt_tokens
        row[5] += e.completion_tokens
        row[6] += e.images
        row[7] += e.cost_usd
        row[8] += 1
    return [tuple(row) for row in groups.values()]


# Under load, the shortest time between two batches: a crash can lose this much spend (a graceful stop
# writes everything). Each batch costs the event loop a worker-thread hop and its GIL hand-overs: at
# 0.02 s they cost a request 8 us of the server's CPU under 16-way load (bench/results/issue14.md).
LINGER_S = 0.1


class SqliteLedger:
    """Spend in SQLite, written by group commit (group_commit.py): `record` queues the entry and returns; each
    batch is one statement in one transaction (one worker-thread hop), one row per day, key and model
    (`_rows`). Under load a batch starts at most every LINGER_S, so the thread hops (each a wake-up of a
    worker thread and of the event loop) stay about ten a second however many requests settle. Reads
    first wait until every entry recorded before them is written, so they stay exact; `close` writes what
    is still queued.
    A batch that cannot be written is logged (one line, with what it held) and told to `on_error`."""

    def __init__(self, db: SqliteDb, on_error: Callable[[str], None] | None = None) -> None:
        self._db = db
        self._on_error = on_error or (lambda _: None)
        self._commit: GroupCommit[SpendEntry] = GroupCommit(self._write, LINGER_S)
        for statement in _SCHEMA:
            db.run(statement)
        if "requests" not in {column[1] for column in db.run("PRAGMA table_info(llmops_spend)")}:
            try:
                db.run(_ADD_REQUESTS)
            except sqlite3.OperationalError as exc:  # the CLI or another server added it just now
                if "duplicate column" not in str(exc):
                    raise

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        await self._commit.written()
        return await self._db.query(sql, args)

    async def record(self, entry: SpendEntry) -> None:
        self.queue(entry)

    def queue(self, entry: SpendEntry) -> asyncio.Future[None]:
        return self._commit.add(entry.stamped())

    async def _write(self, batch: list[SpendEntry]) -> None:
        try:
            await self._db.call(self._db.insert_many, _INSERT, _rows(batch))  # the store's own threads
        except Exception as exc:  # never the server's problem; the lost spend is said, once per batch
            self._on_error("spend_record")
            log.error("could not write %d spend entries ($%.6f in all, keys %s) to SQLite: %s: %s; they are lost",
                      len(batch), sum(e.cost_usd for e in batch), sorted({e.key_id for e in batch}),
                      type(exc).__name__, exc)

    async def close(self) -> None:
        """Write every queued entry (the state closes the connection after this)."""
        await self._commit.close()

    async def key_spend(self, key_id: str, since: float) -> float:
        rows = await self._query("SELECT TOTAL(cost_usd) FROM llmops_spend WHERE key_id = ? AND at >= ?",
                                 (key_id, since))
        return float(rows[0][0])

    async def hour_spend(self) -> float:
        rows = await self._query("SELECT TOTAL(cost_usd) FROM llmops_spend WHERE at >= ?", (time.time() - 3600,))
        return float(rows[0][0])

    async def report(self, first_day: str, last_day: str, key_id: str | None = None) -> list[SpendRow]:
        where, args = "day BETWEEN ? AND ?", [first_day, last_day]
        if key_id is not None:
            where, args = where + " AND key_id = ?", [*args, key_id]
        rows = await self._query(
            "SELECT day, key_id, model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(images), "
            f"TOTAL(cost_usd) FROM llmops_spend WHERE {where} GROUP BY day, key_id, model ORDER BY day, key_id, model",
            tuple(args))
        return [SpendRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7])) for r in rows]
