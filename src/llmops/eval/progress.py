"""A one-line progress display on stderr; silent when stderr is not a terminal (logs, CI, tests)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.done = self.errors = 0
        self._started = time.monotonic()

    def advance(self, error: bool) -> None:
        self.done += 1
        self.errors += int(error)
        if self.enabled:
            self._draw()

    def _draw(self) -> None:
        width = 30
        filled = int(width * self.done / max(1, self.total))
        rate = self.done / max(1e-9, time.monotonic() - self._started)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} errors {self.errors} "
                          f"{rate:.1f}/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
