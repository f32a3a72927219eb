"""Running admitted work: a slot from the model's admission, the request's deadline enforced while it
waits and while it runs, and the engine stopped as soon as the consumer goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn, TypeVar

from llmops.engines.base import TextChunk, TextEngine, TextRequest
from llmops.errors import DeadlineExceeded
from llmops.scheduling.admission import Admission, Priority, Ticket
from llmops.scheduling.fanout import generate_choices

T = TypeVar("T")


class _Deadline:
    """One timer for the whole request (not one per item): when it fires while the reader waits on the
    source, it cancels that wait; when it fires while the item is with the consumer, the next read fails.
    The reading loop (`with_deadline`, and `admitted_choices` for one choice) asks `due` before each read,
    sets `waiting` around it, asks `cut` of a cancellation, and ends with `stop`."""

    __slots__ = ("_handle", "deadline", "fired", "waiting")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self.waiting: asyncio.Task[object] | None = None
        # the loop's clock is time.monotonic(), the deadline's
        self._handle = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self.waiting is not None:
            self.waiting.cancel()

    def due(self) -> bool:
        """The deadline has passed (its timer may not have run yet): no more reads."""
        return self.fired or time.monotonic() >= self.deadline

    def cut(self, task: asyncio.Task[object] | None) -> bool:
        """A cancellation of the read in `task` was the deadline's (taken back), not the request's."""
        return self.fired and task is not None and task.uncancel() == 0

    def cancel(self) -> None:
        self._handle.cancel()

    @staticmethod
    async def stop(items: AsyncIterator[object]) -> NoReturn:
        """The deadline passed: stop the source, answer 504."""
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
        raise DeadlineExceeded("the request ran past its deadline; generation was stopped")


async def with_deadline(items: AsyncIterator[T], deadline: float) -> AsyncIterator[T]:
    """Yield from `items` until `deadline` (time.monotonic()); then stop the source and raise 504."""
    timer = _Deadline(deadline)
    try:
        while not timer.due():
            timer.waiting = task = asyncio.current_task()  # async generators run in their reader's task
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not timer.cut(task):
                    raise  # a cancellation of the request itself, not the deadline's
                break
            finally:
                timer.waiting = None
            yield item
    finally:
        timer.cancel()
    await timer.stop(items)


async def admitted_choices(admission: Admission, engine: TextEngine, requests: Sequence[TextRequest],
                           deadline: float, priority: Priority,
                           on_admit: Callable[[Ticket], None]) -> AsyncIterator[tuple[int, TextChunk]]:
    """The n choices of one request, run under one admission slot and the request's deadline. One choice
    (nearly every request) is read from the engine in this generator's own frame: `with_deadline`'s loop,
    without its generator (a frame resumed per chunk) or the merge's."""
    async with admission.slot(deadline, priority) as ticket:
        on_admit(ticket)
        if len(requests) != 1:
            async for item in with_deadline(generate_choices(engine, requests), deadline):
                yield item
            return
        source, timer = engine.generate(requests[0]), _Deadline(deadline)
        try:
            while not timer.due():  # as with_deadline
                timer.waiting = task = asyncio.current_task()
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not timer.cut(task):
                        raise
                    break
                finally:
                    timer.waiting = None
                yield 0, chunk
        finally:
            timer.cancel()
        await timer.stop(source)
