"""SQLite spend by group commit: entries recorded together are written in one worker-thread hop, reads see
what is recorded and not yet written, closing writes what is queued, and a failed batch is said and counted."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.errors import ConfigError
from llmops.settings import StateSettings, load_settings
from llmops.stores import build_state
from llmops.stores.ledger import _INSERT, SpendEntry, SqliteLedger, day_of
from llmops.stores.sqlite import SqliteDb
from tests.helpers import write_config


class Batches:
    """Wraps a db's `insert_many` to count the hops, the requests each wrote (`sizes`) and its rows;
    `hold` makes the next call wait."""

    def __init__(self, db: SqliteDb, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.rows: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        insert_many = db.insert_many

        def counted(sql: str, rows: list[tuple[Any, ...]]) -> None:
            self.sizes.append(sum(row[-1] for row in rows))
            self.rows.append(len(rows))
            self.entered.set()
            assert self.release.wait(30)
            insert_many(sql, rows)

        monkeypatch.setattr(db, "insert_many", counted)

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()


class LedgerLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def ledger_log() -> Iterator[LedgerLog]:
    handler, logger = LedgerLog(), logging.getLogger("llmops.ledger")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def requests_in(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT TOTAL(requests) FROM llmops_spend").fetchone()[0])


def entry(key: str, usd: float, **kw: Any) -> SpendEntry:
    return SpendEntry(key, "m", usd, prompt_tokens=1, **kw)


def test_concurrent_records_are_written_in_fewer_hops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        db = SqliteDb(tmp_path / "s.db")
        ledger = SqliteLedger(db)
        batches = Batches(db, monkeypatch)
        await asyncio.gather(*(ledger.record(entry(f"k{i % 3}", 0.01)) for i in range(50)))
        await ledger.record(entry("k0", 0.01))
        assert await ledger.key_spend("k0", 0) == pytest.approx(18 * 0.01)
        batches.hold()  # one batch in the worker thread, then more entries arrive meanwhile
        await ledger.record(entry("k1", 0.5))
        assert await asyncio.to_thread(batches.entered.wait, 30)
        for _ in range(20):
            await ledger.record(entry("k2", 0.25))
        spent = asyncio.ensure_future(ledger.key_spend("k2", 0))
        batches.release.set()
        assert await spent == pytest.approx(16 * 0.01 + 20 * 0.25)
        await ledger.close()
        db.close()
        assert sum(batches.sizes) == 72
        assert len(batches.sizes) < 72
        assert batches.sizes[-2:] == [1, 20]  # what arrived during a write went out together next
        assert batches.rows[-1] == 1  # one key, one model, one day: one row
    asyncio.run(run())
    assert requests_in(tmp_path / "s.db") == 72


def test_reads_see_entries_not_yet_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        db = SqliteDb(tmp_path / "s.db")
        ledger = SqliteLedger(db)
        batches = Batches(db, monkeypatch)
        old = 1_000_000.0  # 1970: outside the last hour
        await ledger.record(entry("a", 1.0))
        await ledger.record(entry("a", 2.0, at=old))
        await ledger.record(entry("b", 4.0))
        assert batches.sizes == []  # queued, nothing written yet
        assert await ledger.key_spend("a", 0) == pytest.approx(3.0)
        await ledger.record(entry("a", 8.0))
        assert await ledger.hour_spend() == pytest.approx(13.0)
        await ledger.record(entry("b", 16.0))
        rows = await ledger.report(day_of(old), "2100-01-01")
        assert [(r.key_id, r.requests, r.cost_usd) for r in rows] == [("a", 1, 2.0), ("a", 2, 9.0), ("b", 2, 20.0)]
        assert batches.sizes == [3, 1, 1]
        await ledger.close()
        db.close()

    asyncio.run(run())


def test_closing_the_state_writes_queued_spend(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"

    async def run() -> None:
        state = build_state(StateSettings(backend="sqlite", sqlite_path=str(path)))
        for i in range(30):
            await state.ledger.record(entry(f"k{i % 4}", 0.1))
        await state.close()  # nothing awaited the writer before this

    asyncio.run(run())
    assert requests_in(path) == 30


def test_a_failed_batch_is_logged_and_counted_and_the_next_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_log: LedgerLog) -> None:
    async def run() -> list[str]:
        errors: list[str] = []
        db = SqliteDb(tmp_path / "s.db")
        ledger = SqliteLedger(db, on_error=errors.append)
        insert_many = db.insert_many
        calls = 0

        def fail_once(sql: str, rows: list[tuple[Any, ...]]) -> None:
            nonlocal calls
            calls += 1  # the first batch fails after its first row: none of it may stay
            insert_many(sql, [*rows[:1], ("too", "few")] if calls == 1 else rows)  # 2 rows: keys a, b

        monkeypatch.setattr(db, "insert_many", fail_once)
        for key in ("a", "b", "a"):
            await ledger.record(entry(key, 0.5))
        assert await ledger.key_spend("a", 0) == 0.0  # that batch is lost, and said so
        await ledger.record(entry("a", 0.25))
        assert await ledger.key_spend("a", 0) == pytest.approx(0.25)
        await ledger.close()
        db.close()
        return errors

    assert asyncio.run(run()) == ["spend_record"]
    assert len(ledger_log.lines) == 1
    assert "3 spend entries ($1.500000 in all, keys ['a', 'b'])" in ledger_log.lines[0]
    assert "ProgrammingError" in ledger_log.lines[0]
    assert requests_in(tmp_path / "s.db") == 1  # the failed batch's first row was rolled back


def test_the_server_keeps_serving_when_spend_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_log: LedgerLog) -> None:
    path = tmp_path / "spend.db"
    cfg = write_config(tmp_path / "c.yaml", [{"name": "fake", "engine": "fake",
                                             "pricing": {"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 1.0}}],
                       state={"backend": "sqlite"})
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(path))  # the tests' session sets it; it wins over the file
    insert_many, calls = SqliteDb.insert_many, []

    def fail_first(self: SqliteDb, sql: str, rows: list[tuple[Any, ...]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        insert_many(self, sql, rows)

    monkeypatch.setattr(SqliteDb, "insert_many", fail_first)
    body = {"model": "fake", "max_tokens": 2, "messages": [{"role": "user", "content": "hello"}]}
    with TestClient(create_app(load_settings(cfg))) as c:
        failed = 'llmops_state_store_errors_total{op="spend_record"} 1.0'
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while failed not in c.get("/metrics").text:  # the request settles, and its write fails, just after
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert failed in c.get("/metrics").text  # once: the second request's write went through
    assert len(ledger_log.lines) == 1
    assert "database is locked" in ledger_log.lines[0]
    assert requests_in(path) == 1  # the second request's spend, written when the server closed


def test_an_unwritable_state_path_is_a_config_error_naming_the_way_out(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: make the folder a file instead
            locked.chmod(0o700)
            locked.rmdir()
            locked.write_text("not a folder")
        with pytest.raises(ConfigError) as raised:
            SqliteDb(locked / "sub" / "llmops.db")
        assert "LLMOPS_STATE__SQLITE_PATH" in raised.value.message
        assert "volume" in raised.value.message
    finally:
        if locked.is_dir():
            locked.chmod(0o700)


def test_a_batch_past_one_statement_is_written_whole_or_not_at_all(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows go in multi-row INSERTs; a batch larger than one statement spans several inside one transaction,
    so a bad row in its last statement leaves none of the batch behind."""
    monkeypatch.setattr("llmops.stores.sqlite.ROWS_PER_STATEMENT", 3)
    db = SqliteDb(tmp_path / "s.db")
    SqliteLedger(db)  # the schema
    row = (time.time(), day_of(time.time()), "k", "m", 1, 0, 0, 0.5, 1)
    db.insert_many(_INSERT, [row] * 7)  # statements of 3, 3 and 1 rows
    assert requests_in(tmp_path / "s.db") == 7
    with pytest.raises(sqlite3.ProgrammingError):
        db.insert_many(_INSERT, [row] * 6 + [("too", "few")])
    assert requests_in(tmp_path / "s.db") == 7  # the first two statements were rolled back with the third
    db.close()


def test_a_batch_is_one_row_per_day_key_and_model_and_sums_stay_exact(tmp_path: Path) -> None:
    async def run() -> None:
        db = SqliteDb(tmp_path / "s.db")
        ledger = SqliteLedger(db)
        old = 1_000_000.0
        entries = [SpendEntry(f"k{i % 2}", f"m{i % 3}", 0.01 * i, prompt_tokens=i, completion_tokens=2 * i,
                              images=i % 2) for i in range(60)]
        entries += [SpendEntry("k0", "m0", 5.0, prompt_tokens=7, at=old), SpendEntry("k0", "m0", 1.0, at=old + 1)]
        await asyncio.gather(*(ledger.record(e) for e in entries))
        rows = await ledger.report(day_of(old), "2100-01-01")
        assert len(rows) == 7  # 6 (key, model) pairs today and one on the old day
        for row in rows:
            mine = [e for e in entries if (e.key_id, e.model, day_of(e.at or time.time())) ==
                    (row.key_id, row.model, row.day)]
            assert row.requests == len(mine)
            assert row.prompt_tokens == sum(e.prompt_tokens for e in mine)
            assert row.completion_tokens == sum(e.completion_tokens for e in mine)
            assert row.images == sum(e.images for e in mine)
            assert row.cost_usd == pytest.approx(sum(e.cost_usd for e in mine))
        assert await ledger.key_spend("k0", old + 86400) == pytest.approx(sum(0.01 * i for i in range(0, 60, 2)))
        await ledger.close()
        db.close()

    asyncio.run(run())
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT COUNT(*) FROM llmops_spend").fetchone()[0] == 7
        assert db.execute("SELECT at FROM llmops_spend WHERE day = ?", (day_of(1_000_000.0),)).fetchone()[0] \
            == 1_000_001.0  # a row is stamped with its last request


def test_a_file_from_before_rows_summed_requests_counts_each_old_row_as_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE llmops_spend (at REAL NOT NULL, day TEXT NOT NULL, key_id TEXT NOT NULL, "
                    "model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
                    "images INTEGER NOT NULL, cost_usd REAL NOT NULL)")
        row = (time.time(), day_of(time.time()), "k", "m", 3, 4, 0, 0.5)
        old.executemany("INSERT INTO llmops_spend VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [row, row])

    async def run() -> None:
        db = SqliteDb(path)
        ledger = SqliteLedger(db)
        await ledger.record(SpendEntry("k", "m", 0.25, prompt_tokens=1))
        [report] = await ledger.report(day_of(time.time()), day_of(time.time()))
        assert (report.requests, report.prompt_tokens, report.cost_usd) == (3, 7, pytest.approx(1.25))
        await ledger.close()
        db.close()

    asyncio.run(run())


def test_another_process_adding_the_requests_column_first_is_no_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE llmops_spend (at REAL NOT NULL, day TEXT NOT NULL, key_id TEXT NOT NULL, "
                    "model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
                    "images INTEGER NOT NULL, cost_usd REAL NOT NULL)")
    db = SqliteDb(path)
    run = db.run

    def racing(sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if sql.startswith("ALTER TABLE"):  # the CLI, starting at the same moment, migrated the file first
            with sqlite3.connect(path) as other:
                other.execute(sql)
        return run(sql, args)

    monkeypatch.setattr(db, "run", racing)
    SqliteLedger(db)
    with sqlite3.connect(path) as check:
        assert "requests" in {c[1] for c in check.execute("PRAGMA table_info(llmops_spend)")}
    db.close()
