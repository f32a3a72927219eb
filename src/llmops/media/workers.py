"""The threads that decode what clients send (images to classify, large Open Inference Protocol tensors): a
small pool of the media side's own, never the event loop and never asyncio's default executor.

The default executor (`asyncio.to_thread`) is what the guardrails and embeddings encoding use (the SQLite
store has threads of its own, stores/sqlite.py): twelve requests of four 4000x4000 PNGs decoding there once
queued an unrelated key's lookup behind them for seconds. Here a client's bytes wait for one of `threads`
workers (at most half the cores, at most MAX_THREADS), in order, up to their request's deadline: a decode that
has not started when its request gives up (deadline, disconnect) never runs.

The pool is made on first use, not at import, and closed with the app (`close`, from its lifespan); after
`close` a later `run` makes a new one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from llmops.errors import DeadlineExceeded

T = TypeVar("T")
MAX_THREADS = 4  # decoding is CPU work: more threads than this only queue on the cores


def default_threads() -> int:
    """Half the cores this process may use (the other half for the event loop and the engines), 1 to MAX_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores // 2))


class DecodeThreads:
    """A bounded pool of threads for decoding client media, made on first use."""

    def __init__(self, threads: int | None = None, name: str = "media-decode") -> None:
        self.threads = threads or default_threads()
        self._name = name
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
            return self._executor

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float | None = None,
                  waiting: str = "its input was decoded") -> T:
        """`fn(*args)` on one of the pool's threads; DeadlineExceeded (504) once `deadline` (`time.monotonic()`)
        passes, saying the request was waiting until `waiting`. A call not yet started when the caller stops
        waiting (the deadline, a cancellation) is dropped from the queue; one already running runs to its end."""
        future = asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)
        if deadline is None:
            return await future
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await future
        except TimeoutError:
            raise DeadlineExceeded(f"the request reached its deadline before {waiting}") from None

    def close(self) -> None:
        """Shut the pool (queued calls dropped, running ones left to finish); the next `run` makes a new one."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
