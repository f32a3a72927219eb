"""Gathering a batch: the first item waits up to a timeout for companions that fit with it. Shared by the
transformers batcher (requests that sample alike) and the image job queue (same-shape images)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, MutableSequence
from typing import TypeVar

T = TypeVar("T")


async def gather_batch(first: T, pending: MutableSequence[T], fits: Callable[[T], bool], limit: int,
                       timeout_s: float, wakeup: asyncio.Event) -> list[T]:
    """`first` plus up to `limit - 1` items taken from `pending` (in order) that `fits` accepts, waiting
    at most `timeout_s` for them; `wakeup` is set by whoever appends to `pending`."""
    batch, deadline = [first], time.monotonic() + timeout_s
    while len(batch) < limit:
        for item in [x for x in pending if fits(x)][: limit - len(batch)]:
            pending.remove(item)
            batch.append(item)
        remaining = deadline - time.monotonic()
        if len(batch) >= limit or remaining <= 0:
            break
        wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await wakeup.wait()
    return batch
