"""stores/group_commit.py: what is queued while a batch is being written goes together in the next batch;
a lone item goes at once; waiters are released when their batch is written, even when writing it failed;
`written()` waits for everything queued before it, and `close()` writes what is still queued; either ends
the linger at once."""

from __future__ import annotations

import asyncio

from llmops.stores.group_commit import GroupCommit


class Writer:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()  # each batch is "in flight" until the test opens the gate
        self.gate.set()
        self.fail = fail
        self.started = asyncio.Event()  # set when a batch reaches the writer

    async def __call__(self, batch: list[int]) -> None:
        self.batches.append(batch)
        self.started.set()
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("the store said no")


async def test_items_queued_during_a_write_go_together_in_the_next_batch() -> None:
    writer = Writer()
    commit: GroupCommit[int] = GroupCommit(writer, 0.0)
    writer.gate.clear()
    first = commit.add(1)
    await asyncio.wait_for(writer.started.wait(), 5)  # the lone item is written at once, without company
    later = [commit.add(i) for i in (2, 3, 4)]
    assert not first.done()
    writer.gate.set()
    await asyncio.gather(first, *later)
    assert writer.batches == [[1], [2, 3, 4]]


async def test_written_waits_for_everything_queued_before_it() -> None:
    writer = Writer()
    commit: GroupCommit[int] = GroupCommit(writer, 0.0)
    writer.gate.clear()
    commit.add(1)
    commit.add(2)
    waiting = asyncio.ensure_future(commit.written())
    await asyncio.wait_for(writer.started.wait(), 5)  # the batch is with the writer, which holds it
    assert not waiting.done()
    writer.gate.set()
    await waiting
    assert [i for b in writer.batches for i in b] == [1, 2]


async def test_a_failed_batch_still_releases_its_waiters_and_the_next_batch_is_written() -> None:
    writer = Writer(fail=True)
    commit: GroupCommit[int] = GroupCommit(writer, 0.0)
    await asyncio.wait_for(asyncio.shield(commit.add(1)), 5)
    writer.fail = False
    await asyncio.wait_for(asyncio.shield(commit.add(2)), 5)
    assert writer.batches == [[1], [2]]


async def test_close_writes_what_is_still_queued() -> None:
    writer = Writer()
    commit: GroupCommit[int] = GroupCommit(writer, 0.5)  # the second batch comes after the linger
    await commit.add(1)
    commit.add(2)
    commit.add(3)
    await asyncio.wait_for(commit.close(), 30)
    assert [i for b in writer.batches for i in b] == [1, 2, 3]


async def test_a_reader_ends_the_linger_at_once() -> None:
    writer = Writer()
    commit: GroupCommit[int] = GroupCommit(writer, 60.0)  # under load, the next batch would wait a minute
    await asyncio.wait_for(asyncio.shield(commit.add(1)), 5)  # a lone item goes at once
    queued = commit.add(2)
    assert not queued.done()
    await asyncio.wait_for(commit.written(), 5)  # a reader waits: the batch goes now, not in a minute
    assert writer.batches == [[1], [2]]
    commit.add(3)
    await asyncio.wait_for(commit.close(), 5)  # so does a close
    assert writer.batches == [[1], [2], [3]]
