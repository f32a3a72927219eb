"""Keys found by hash are remembered for a while (stores/keys.CachedKeys): a valid key costs no store
round trip per request, revocation through the server is immediate, elsewhere within the refresh time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmops.stores.keys import CachedKeys, SqliteKeyStore, hash_secret, new_key, remembered, verify
from llmops.stores.sqlite import SqliteDb


class Counting(SqliteKeyStore):
    def __init__(self) -> None:
        super().__init__(SqliteDb(":memory:"))
        self.lookups = 0

    async def by_hash(self, digest: str, fresh: bool = False) -> Any:
        self.lookups += 1
        return await super().by_hash(digest)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("llmops.stores.keys.time.monotonic", lambda: now[0])
    return now


def test_a_verified_key_is_looked_up_once_per_refresh(clock: list[float]) -> None:
    async def run() -> None:
        store = Counting()
        cached = CachedKeys(store, ttl_s=1.0)
        key, secret = new_key("k", (), "standard")
        await cached.add(key)
        for _ in range(5):
            assert await verify(cached, secret) is not None
        assert store.lookups == 1
        clock[0] += 1.5
        assert await verify(cached, secret) is not None
        assert store.lookups == 2

    asyncio.run(run())


def test_revocation_here_is_immediate_and_elsewhere_within_the_refresh(clock: list[float]) -> None:
    async def run() -> None:
        store = Counting()
        cached = CachedKeys(store, ttl_s=1.0)
        here, here_secret = new_key("here", (), "standard")
        there, there_secret = new_key("there", (), "standard")
        for key in (here, there):
            await cached.add(key)
            assert await cached.by_hash(key.hash) is not None
        await cached.revoke(here.id)
        assert await verify(cached, here_secret) is None
        await store.revoke(there.id)  # the CLI or another replica
        assert await verify(cached, there_secret) is not None  # still remembered...
        clock[0] += 1.01
        assert await verify(cached, there_secret) is None  # ...until the refresh

    asyncio.run(run())


def test_made_up_keys_are_not_remembered(clock: list[float]) -> None:
    async def run() -> None:
        store = Counting()
        cached = CachedKeys(store, ttl_s=60.0)
        for i in range(50):
            assert await cached.by_hash(hash_secret(f"made-up-{i}")) is None
        assert store.lookups == 50
        assert not cached._found

    asyncio.run(run())


class Held(Counting):
    """Lookups wait until the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def by_hash(self, digest: str, fresh: bool = False) -> Any:
        await self.release.wait()
        return await super().by_hash(digest)


def test_concurrent_requests_with_one_key_share_one_lookup(clock: list[float]) -> None:
    async def run() -> None:
        store = Held()
        cached = CachedKeys(store, ttl_s=1.0)
        key, secret = new_key("k", (), "standard")
        await cached.add(key)
        checks = [asyncio.ensure_future(verify(cached, secret)) for _ in range(16)]
        for _ in range(100):
            await asyncio.sleep(0)
        assert not any(c.done() for c in checks)  # they wait: a key is never taken on trust
        store.release.set()
        assert all(k is not None and k.id == key.id for k in await asyncio.gather(*checks))
        assert store.lookups == 1
        clock[0] += 1.5  # due again: the next burst shares one lookup too
        assert all(await asyncio.gather(*(verify(cached, secret) for _ in range(16))))
        assert store.lookups == 2
        assert not cached._looking

    asyncio.run(run())


def test_a_failed_lookup_fails_every_request_that_waited_for_it(clock: list[float]) -> None:
    class Down(Counting):
        async def by_hash(self, digest: str, fresh: bool = False) -> Any:
            self.lookups += 1
            await asyncio.sleep(0)
            raise RuntimeError("the store is down")

    async def run() -> None:
        store = Down()
        cached = CachedKeys(store, ttl_s=1.0)
        results = await asyncio.gather(*(cached.by_hash(hash_secret("s")) for _ in range(8)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert store.lookups == 1
        assert not cached._looking  # the next request tries again

    asyncio.run(run())


def test_a_verified_secret_is_remembered_under_the_same_expiry_and_revocation(clock: list[float]) -> None:
    """`remembered` answers what `verify` would, without hashing: only for a secret verified before, only
    while its key is remembered by hash, and never for a key revoked here (at once) or elsewhere (after
    the refresh)."""
    async def run() -> None:
        store = Counting()
        cached = CachedKeys(store, ttl_s=1.0)
        here, here_secret = new_key("here", (), "standard")
        there, there_secret = new_key("there", (), "standard")
        for key in (here, there):
            await cached.add(key)
        assert remembered(cached, here_secret) is None  # never verified: no answer without a hash
        for secret in (here_secret, there_secret):
            assert await verify(cached, secret) is not None
        found = remembered(cached, here_secret)
        assert found is not None
        assert found.id == here.id
        assert remembered(cached, "sk-llmops-made-up") is None
        assert remembered(store, here_secret) is None  # a store that remembers nothing: always verify

        clock[0] += 1.01  # expired: verified again, which looks it up again
        assert remembered(cached, here_secret) is None
        assert await verify(cached, here_secret) is not None
        assert store.lookups == 3
        assert remembered(cached, here_secret) is not None

        await cached.revoke(here.id)  # here: at once
        assert remembered(cached, here_secret) is None
        assert await verify(cached, here_secret) is None
        assert here_secret not in cached._digests

        assert await verify(cached, there_secret) is not None
        await store.revoke(there.id)  # the CLI or another replica: within the refresh
        assert remembered(cached, there_secret) is not None
        clock[0] += 1.01
        assert remembered(cached, there_secret) is None
        assert await verify(cached, there_secret) is None  # looked up: revoked
        assert remembered(cached, there_secret) is None

    asyncio.run(run())


def test_remembering_a_secret_needs_no_hash(clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        cached = CachedKeys(Counting(), ttl_s=60.0)
        key, secret = new_key("k", (), "standard")
        await cached.add(key)
        assert await verify(cached, secret) is not None
        hashed: list[str] = []
        monkeypatch.setattr("llmops.stores.keys.hash_secret", lambda s: hashed.append(s) or "")
        for _ in range(5):
            assert remembered(cached, secret) is not None
        assert hashed == []

    asyncio.run(run())


async def lookups_done(cached: CachedKeys) -> None:
    """Wait for the lookups in flight (a poll would race the store's worker thread)."""
    await asyncio.gather(*cached._looking._running.values(), return_exceptions=True)
    assert not cached._looking


def test_a_key_in_use_is_looked_up_ahead_of_its_expiry_without_waiting(clock: list[float]) -> None:
    """Past half its ttl, a remembered key starts one lookup that no request waits for; the key stays
    usable no longer than its ttl from the start of the lookup that found it."""
    async def run() -> None:
        store = Held()
        cached = CachedKeys(store, ttl_s=1.0)
        key, secret = new_key("k", (), "standard")
        await cached.add(key)
        store.release.set()
        assert await verify(cached, secret) is not None
        assert store.lookups == 1
        store.release.clear()  # the next lookups wait until the test lets them finish
        clock[0] += 0.6  # past half the ttl: a lookup starts, and the answer is the remembered key, at once
        assert remembered(cached, secret) is not None
        assert await verify(cached, secret) is not None
        assert len(cached._looking) == 1  # one lookup, however many requests came
        await store.revoke(key.id)  # elsewhere, while the lookup waits
        store.release.set()
        await lookups_done(cached)
        assert store.lookups == 2
        assert remembered(cached, secret) is None  # the lookup saw the revocation
        assert await verify(cached, secret) is None

    asyncio.run(run())


async def _past_half_ttl(store: Counting, clock: list[float]) -> tuple[CachedKeys, Any, str]:
    """A key verified once through a cache over `store`, then past half its ttl; a store that holds lookups
    back (`release`) lets that first one through and holds the next."""
    release: asyncio.Event | None = getattr(store, "release", None)
    if release is not None:
        release.set()
    cached = CachedKeys(store, ttl_s=1.0)
    key, secret = new_key("k", (), "standard")
    await cached.add(key)
    assert await verify(cached, secret) is not None
    if release is not None:
        release.clear()
    clock[0] += 0.6
    return cached, key, secret


async def _looking_ahead(clock: list[float]) -> tuple[Held, CachedKeys, Any, str]:
    """A key verified once, then past half its ttl with the store's next lookups held back."""
    store = Held()
    cached, key, secret = await _past_half_ttl(store, clock)
    return store, cached, key, secret


def test_a_key_is_never_used_past_its_ttl_when_the_lookup_ahead_is_slow(clock: list[float]) -> None:
    async def run() -> None:
        store, cached, _key, secret = await _looking_ahead(clock)
        assert remembered(cached, secret) is not None  # starts the lookup ahead, which hangs
        clock[0] += 0.5  # the ttl has run out: the remembered key is not used
        assert remembered(cached, secret) is None
        waiting = asyncio.ensure_future(verify(cached, secret))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()  # it waits for the lookup in flight
        store.release.set()
        assert await waiting is not None
        assert store.lookups == 2

    asyncio.run(run())


class ReadThenHeld(Counting):
    """Lookups read the store, then wait until the test releases them: an answer read before a revocation
    that comes back after it."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.read = asyncio.Event(), asyncio.Event()

    async def by_hash(self, digest: str, fresh: bool = False) -> Any:
        key = await super().by_hash(digest)
        self.read.set()
        await self.release.wait()
        return key


def test_a_lookup_across_a_revocation_here_is_not_kept(clock: list[float]) -> None:
    """A lookup ahead that read the key before it was revoked here, and answers after, is not kept: the
    revoked key is refused at once (without the guard, `verify` took the answer read before)."""
    async def run() -> None:
        store = ReadThenHeld()
        cached, key, secret = await _past_half_ttl(store, clock)
        store.read.clear()
        assert remembered(cached, secret) is not None  # the lookup ahead starts
        await asyncio.wait_for(store.read.wait(), 10)  # it has read the key, still active
        await cached.revoke(key.id)
        store.release.set()
        await lookups_done(cached)
        assert remembered(cached, secret) is None
        assert await verify(cached, secret) is None

    asyncio.run(run())


def test_lookups_read_the_store_itself_not_a_copy_it_keeps(clock: list[float]) -> None:
    """Redis' key store keeps each key a second: the cache's lookups ask for the store itself (`fresh`), so
    a lookup ahead renews the key (requests do not wait for the store when its ttl runs out), and a
    revocation elsewhere shows within the ttl of the lookup that last read the store."""
    class OwnCopy(Counting):
        def __init__(self) -> None:
            super().__init__()
            self.fresh: list[bool] = []

        async def by_hash(self, digest: str, fresh: bool = False) -> Any:
            self.fresh.append(fresh)
            return await super().by_hash(digest)

    async def run() -> None:
        store = OwnCopy()
        cached, key, secret = await _past_half_ttl(store, clock)
        assert remembered(cached, secret) is not None  # the lookup ahead
        await lookups_done(cached)
        clock[0] += 0.5  # past the first lookup's ttl, within the second's: the third starts
        assert remembered(cached, secret) is not None
        await lookups_done(cached)
        assert store.fresh == [True, True, True]
        await store.revoke(key.id)  # elsewhere
        clock[0] += 1.0
        assert remembered(cached, secret) is None
        assert await verify(cached, secret) is None
        assert store.fresh == [True, True, True, True]

    asyncio.run(run())


def test_a_failed_lookup_ahead_is_logged_and_close_cancels_those_in_flight(
        clock: list[float], caplog: pytest.LogCaptureFixture) -> None:
    class Failing(Held):
        async def by_hash(self, digest: str, fresh: bool = False) -> Any:
            key = await super().by_hash(digest)
            if self.lookups > 1:
                raise ConnectionError("the store is away")
            return key

    async def run() -> None:
        store = Failing()
        cached, key, secret = await _past_half_ttl(store, clock)
        store.release.set()
        assert remembered(cached, secret) is not None  # the lookup ahead fails
        await lookups_done(cached)
        assert "looking API key" in caplog.text
        assert key.hash not in caplog.text  # a prefix of the hash at most
        assert remembered(cached, secret) is not None  # the key remembered serves until its ttl
        store.release.clear()
        clock[0] += 0.5
        hanging = asyncio.ensure_future(verify(cached, secret))  # waits on a lookup that hangs
        await asyncio.sleep(0)  # (one step: the lookup starts in verify's first)
        assert cached._looking
        await cached.close()
        assert not cached._looking
        with pytest.raises(asyncio.CancelledError):
            await hanging

    asyncio.run(run())
