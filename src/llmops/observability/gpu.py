"""GPU utilisation through NVML (nvidia-ml-py), read at scrape time. No GPU or no NVML: no samples."""

from __future__ import annotations

import contextlib
from typing import Any


class GpuProbe:
    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _init(self) -> Any:
        if not self._tried:
            self._tried = True
            with contextlib.suppress(Exception):
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
        return self._nvml

    def utilization(self) -> dict[str, float]:
        nvml = self._init()
        if nvml is None:
            return {}
        out: dict[str, float] = {}
        with contextlib.suppress(Exception):
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                out[str(i)] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return out
