"""Whether any API key exists is re-read in the background: one query at a time, and requests never wait
for a re-read (they go by the last count); only before the first count do they wait, for one query."""

from __future__ import annotations

import asyncio
import logging

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

    async def by_hash(self, digest: str) -> ApiKey | None:
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


def test_a_re_read_runs_alone_and_nobody_waits_for_it() -> None:
    async def run() -> None:
        store = SlowCount(0)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=0)  # type: ignore[arg-type]
        assert await auth.check(scope()) is None
        store.release.clear()
        store.count = 1  # a key was created elsewhere; the re-read that will see it is held up
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


def test_a_failed_re_read_keeps_the_last_count_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        store = SlowCount(1)
        store.release.set()
        auth = Authenticator(store, False, Metrics(), refresh_s=0)  # type: ignore[arg-type]
        assert (await auth.check(scope())) is not None  # keyed, no key sent: 401
        store.fail = StoreUnavailable("the key store is unreachable")
        refusal = await auth.check(scope())
        assert refusal is not None
        assert isinstance(refusal.error, Unauthorized)
        await until(lambda: not auth._recount)
        assert any("going by the last count" in r.getMessage() for r in caplog.records)

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
