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


async def with_deadline(items: AsyncIterator[T], deadline: float) -> AsyncIterator[T]:
    """Yield from `items` until `deadline` (time.monotonic()); then stop the source and raise 504."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                item = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
            raise DeadlineExceeded("the request ran past its deadline; generation was stopped") from None
        yield item


async def admitted_choices(admission: Admission, engine: TextEngine, requests: Sequence[TextRequest],
                           deadline: float, priority: Priority,
                           on_admit: Callable[[Ticket], None]) -> AsyncIterator[tuple[int, TextChunk]]:
    """The n choices of one request, run under one admission slot and the request's deadline."""
    async with admission.slot(deadline, priority) as ticket:
        on_admit(ticket)
        async for item in with_deadline(generate_choices(engine, requests), deadline):
            yield item
