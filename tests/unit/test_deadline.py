"""with_deadline: one timer per request stops the source and answers 504 whether the deadline passes while
the reader waits on the source or while an item is with the consumer; other cancellations pass through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from llmops.errors import DeadlineExceeded
from llmops.scheduling.runner import with_deadline


class Source:
    def __init__(self, gap: asyncio.Event | None = None) -> None:
        self.closed = False
        self.gap = gap

    async def items(self) -> AsyncIterator[int]:
        try:
            for i in range(1000):
                if i == 2 and self.gap is not None:
                    await self.gap.wait()  # a long wait for the third item
                yield i
        finally:
            self.closed = True


async def test_deadline_while_waiting_on_the_source_cancels_the_wait() -> None:
    source = Source(asyncio.Event())
    stream = with_deadline(source.items(), time.monotonic() + 0.2)
    assert [await anext(stream), await anext(stream)] == [0, 1]
    with pytest.raises(DeadlineExceeded):
        await anext(stream)
    assert source.closed


async def test_deadline_while_the_consumer_holds_an_item_fails_the_next_read() -> None:
    source = Source()
    stream = with_deadline(source.items(), time.monotonic() + 0.1)
    assert await anext(stream) == 0
    fired = asyncio.Event()
    asyncio.get_running_loop().call_later(0.15, fired.set)
    await fired.wait()  # the consumer is busy past the deadline
    with pytest.raises(DeadlineExceeded):
        await anext(stream)
    assert source.closed


async def test_a_cancellation_that_is_not_the_deadline_propagates() -> None:
    source = Source(asyncio.Event())

    async def read() -> list[int]:
        return [i async for i in with_deadline(source.items(), time.monotonic() + 60)]

    task = asyncio.create_task(read())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_deadline_reached_yields_everything() -> None:
    assert len([i async for i in with_deadline(Source().items(), time.monotonic() + 60)]) == 1000
