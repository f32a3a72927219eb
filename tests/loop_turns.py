"""Whether work ran off the event loop, told without timing it: a task counts the loop's turns, and the
work, wrapped, waits in its worker thread until the loop has turned a few more times. On the loop's own
thread the wrapper fails at once (the loop could not turn while it waits)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any


class LoopTurns:
    def __init__(self) -> None:
        self.turns = 0
        self.loop_thread = threading.get_ident()
        self.calls: list[str] = []  # "thread" or "loop", one per call of a wrapped function
        self.waited: list[bool] = []  # whether the loop turned while each call in a thread waited

    async def _count(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    def wait_for_turns(self, n: int = 3, timeout: float = 30.0) -> bool:
        """From a worker thread: True once the loop has turned `n` more times, False after `timeout`."""
        target, deadline = self.turns + n, time.monotonic() + timeout
        while self.turns < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, recording where each call ran; in a worker thread, a call first waits for the loop to turn."""
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self.loop_thread:
                self.calls.append("loop")
            else:
                self.calls.append("thread")
                self.waited.append(self.wait_for_turns())
            return fn(*args, **kwargs)
        return wrapper


@asynccontextmanager
async def loop_turns() -> AsyncIterator[LoopTurns]:
    """A LoopTurns whose counting task runs for the block."""
    turns = LoopTurns()
    task = asyncio.create_task(turns._count())
    try:
        yield turns
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
