"""Running admitted work: a slot from the model's admission, the request's deadline enforced while it
waits and while it runs, and the engine stopped as soon as the consumer goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from llmops.engines.base import TextChunk, TextEngine, TextRequest
from llmops.errors import DeadlineExceeded
from llmops.scheduling.admission import Admission, Priority, Ticket
from llmops.scheduling.fanout import generate_choices

T = TypeVar("T")


class _Deadline:
    """One timer for the whole request (not one per item): when it fires while the reader waits on the
    source, it cancels that wait; when it fires while the item is with the consumer, the next read fails."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self.waiting: asyncio.Task[object] | None = None
        # the loop's clock is time.monotonic(), the deadline's
        self._handle = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self.waiting is not None:
            self.waiting.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


async def with_deadline(items: AsyncIterator[T], deadline: float) -> AsyncIterator[T]:
    """Yield from `items` until `deadline` (time.monotonic()); then stop the source and raise 504."""
    timer = _Deadline(deadline)
    try:
        while True:
            if timer.fired or time.monotonic() >= deadline:
                break
            timer.waiting = task = asyncio.current_task()  # async generators run in their reader's task
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not timer.fired or task is None or task.uncancel() > 0:
                    raise  # a cancellation of the request itself, not the deadline's
                break
            finally:
                timer.waiting = None
            yield item
    finally:
        timer.cancel()
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()
    raise DeadlineExceeded("the request ran past its deadline; generation was stopped")


async def admitted_choices(admission: Admission, engine: TextEngine, requests: Sequence[TextRequest],
                           deadline: float, priority: Priority,
                           on_admit: Callable[[Ticket], None]) -> AsyncIterator[tuple[int, TextChunk]]:
    """The n choices of one request, run under one admission slot and the request's deadline. One choice
    (nearly every request) is read from the engine without the merge's layer."""
    async with admission.slot(deadline, priority) as ticket:
        on_admit(ticket)
        if len(requests) == 1:
            async for chunk in with_deadline(engine.generate(requests[0]), deadline):
                yield 0, chunk
            return
        async for item in with_deadline(generate_choices(engine, requests), deadline):
            yield item
