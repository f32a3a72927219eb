"""Run several generations (the `n` choices of one request) at once and merge their chunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from llmops.engines.base import TextChunk, TextEngine, TextRequest


async def _pump(index: int, it: AsyncIterator[TextChunk],
                queue: asyncio.Queue[tuple[int, TextChunk | BaseException | None]]) -> None:
    try:
        async for chunk in it:
            await queue.put((index, chunk))
    except Exception as exc:
        await queue.put((index, exc))
    else:
        await queue.put((index, None))


async def generate_choices(engine: TextEngine, requests: Sequence[TextRequest]
                           ) -> AsyncIterator[tuple[int, TextChunk]]:
    """(choice index, chunk) from every request, interleaved as they come. The first error ends the
    whole merge, and leaving early stops every generation."""
    queue: asyncio.Queue[tuple[int, TextChunk | BaseException | None]] = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(i, engine.generate(r), queue)) for i, r in enumerate(requests)]
    try:
        open_streams = len(tasks)
        while open_streams:
            index, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
