"""Where cached responses live: an LRU in the process (the embedded default), or Redis with a TTL, shared
by replicas. A cache never fails a request: a Redis error is a miss (counted by the store guard)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class ResponseCache(Protocol):
    async def get(self, key: str) -> str | None: ...
    async def put(self, key: str, value: str, ttl_s: float) -> None: ...


class MemoryCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    async def put(self, key: str, value: str, ttl_s: float) -> None:
        self._items[key] = (time.monotonic() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
