"""What the torch engines (diffusers, image classifiers) share: one worker thread per model on which loading,
every model call and unloading run (never on the event loop), and the loading → ready/failed → closed states."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

State = Literal["loading", "ready", "failed", "closed"]


class WorkerEngine(ABC):
    """The shared lifecycle; an engine says how to load its model (`_load`) and let it go (`_drop`)."""

    def __init__(self, thread_name: str) -> None:
        self._state: State = "loading"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._device = "cpu"
        self._dtype = "float32"

    async def _load_on_worker(self) -> None:
        """Run `_load` on the worker; the engine is ready after it, failed if it raises."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "ready"

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._state = "closed"

    def _unload(self) -> None:
        self._drop()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    @abstractmethod
    def _load(self) -> None:
        """Load the model (on the worker thread)."""

    @abstractmethod
    def _drop(self) -> None:
        """Let go of the model's objects (on the worker thread)."""
