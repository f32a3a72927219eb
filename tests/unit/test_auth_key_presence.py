"""Whether any API key exists: re-read one query at a time; requests go by the last count while a re-read
runs, but never by one older than twice the refresh interval (then they wait for the re-read), and before
the first count they wait for that one query. Once a key has been seen the process stays keyed, whatever
the store says later; an exposed server is keyed from the start."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from llmops.errors import StoreUnavailable, Unauthorized
from llmops.middleware.auth import Authenticator
from llmops.observability.metrics import Metrics
from llmops.stores.keys import ApiKey


class SlowCount:
    """A key store whose count answers only when the test lets it; it counts the queries."""

    def __init__(self, count: int) -> None:
        self.count, self.queries = count, 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def key_count(self) -> int:
        self.queries += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return self.count

    async def by_hash(self, digest: str, fresh: bool = False) -> ApiKey | None:
        return None


def scope() -> dict[str, object]:
    return {"type": "http", "path": "/v1/chat/completions", "headers": [], "query_string": b"", "state": {}}


async def until(condition: object) -> None:
    for _ in range(1000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_the_first_requests_wait_for_one_count_together() -> None:
    async def run() -> None:
        store = SlowCount(0)
        auth = Authenticator(store, False, Metrics(), refresh_s=60)  # type: ignore[arg-type]
        checks = [asyncio.ensure_future(auth.check(scope())) for _ in range(16)]
        await until(lambda: store.queries == 1)
        assert not any(c.done() for c in checks)  # nothing known yet: they wait
        store.release.set()
        assert await asyncio.gather(*checks) == [None] * 16  # no key: open
        assert store.queries == 1

    asyncio.run(run())


def counted_ago(auth: Authenticator, seconds: float) -> None:
    """As if the last count had been taken `seconds` ago."""
    auth._counted_at = time.monotonic() - seconds


def test_a_due_re_read_runs_alone_and_nobody_waits_for_it() -> None:
    async def run() -> None:
        store = SlowCount(0)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=60)  # type: ignore[arg-type]
        assert await auth.check(scope()) is None
        store.release.clear()
        store.count = 1  # a key was created elsewhere; the re-read that will see it is held up
        counted_ago(auth, 61)  # due, but not stale
        answers = []
        for _ in range(16):  # each finds the count due for a re-read, and lets the loop run between
            answers.append(await auth.check(scope()))
            await asyncio.sleep(0)
        assert answers == [None] * 16  # they went by the last count (no key), without waiting
        assert store.queries == 2  # one re-read in flight, not sixteen
        store.release.set()
        await until(lambda: not auth._recount)
        refusal = await auth.check(scope())  # the new count is in: the server is keyed
        assert refusal is not None
        assert isinstance(refusal.error, Unauthorized)

    asyncio.run(run())


def test_a_stale_count_is_re_read_before_anyone_goes_by_it() -> None:
    """A key created while the server was idle: the burst that comes after waits for one re-read and is
    refused, rather than going by the old count (no key) and being served."""
    async def run() -> None:
        store = SlowCount(0)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=1)  # type: ignore[arg-type]
        assert await auth.check(scope()) is None
        store.count = 1
        counted_ago(auth, 5)
        refusals = await asyncio.gather(*(auth.check(scope()) for _ in range(40)))
        assert all(r is not None and isinstance(r.error, Unauthorized) for r in refusals)
        assert store.queries == 2

    asyncio.run(run())


def test_once_keyed_always_keyed_whatever_the_store_says_later() -> None:
    """A Redis flushed or restarted empty has no keys: the server must not open up."""
    async def run() -> None:
        store = SlowCount(1)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=0)  # type: ignore[arg-type]
        assert await auth.check(scope()) is not None
        store.count = 0  # every key gone from the store
        for _ in range(3):
            refusal = await auth.check(scope())
            assert refusal is not None
            assert isinstance(refusal.error, Unauthorized)
            await until(lambda: not auth._recount)  # any re-read started has ended before the next request
        assert store.queries == 1  # keyed for good: the store is not asked again

    asyncio.run(run())


def test_an_exposed_server_is_keyed_with_no_key_in_the_store() -> None:
    async def run() -> None:
        store = SlowCount(0)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=0, require_keys=True)  # type: ignore[arg-type]
        refusal = await auth.check(scope())
        assert refusal is not None
        assert isinstance(refusal.error, Unauthorized)
        assert store.queries == 0

    asyncio.run(run())


def test_a_failed_re_read_keeps_the_last_count_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        store = SlowCount(0)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=60)  # type: ignore[arg-type]
        assert await auth.check(scope()) is None  # open
        store.fail = StoreUnavailable("the key store is unreachable")
        counted_ago(auth, 61)
        assert await auth.check(scope()) is None
        await until(lambda: not auth._recount)
        assert any("going by the last count" in r.getMessage() for r in caplog.records)
        assert await auth.check(scope()) is None  # not due again yet: no second query
        assert store.queries == 2

    with caplog.at_level(logging.WARNING, logger="llmops.auth"):
        asyncio.run(run())


def test_the_first_count_failing_refuses_the_waiting_requests() -> None:
    async def run() -> None:
        store = SlowCount(0)
        store.fail = StoreUnavailable("the key store is unreachable")
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=60)  # type: ignore[arg-type]
        refusal = await auth.check(scope())
        assert refusal is not None
        assert isinstance(refusal.error, StoreUnavailable)

    asyncio.run(run())
