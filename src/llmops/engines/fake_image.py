"""A real, deterministic image engine with no ML dependencies, for tests and demos (the image twin of
`fake.FakeTextEngine`).

Each image is a PNG of the requested size filled with one colour taken from a hash of (prompt, negative
prompt, seed), so the same seeded request gives the same bytes and `n` images differ. It walks through
`steps` denoising steps (`step_delay_s` each), reporting progress and polling `cancelled` between them like
the diffusers engine. Prompts containing `[[fail]]` make it raise; `[[filtered]]` makes the "safety
checker" flag the result. `options.fail_load` makes loading fail with that message. `pipeline_calls` in the
health detail counts engine calls, so tests can see batches coalesce."""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
import zlib
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import EngineHealth, ImageRequest, ImageResult, StepCallback
from llmops.errors import RequestCancelled


class FakeImageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step_delay_s: float = Field(0.0, ge=0, le=10, description="sleep per denoising step")
    load_delay_s: float = Field(0.0, ge=0, le=60, description="sleep in start(), to test readiness")
    fail_load: str | None = Field(None, description="fail loading with this message (to test failed models)")


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height)) + \
        chunk(b"IEND", b"")


def _colour(request: ImageRequest, seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{request.prompt}\0{request.negative_prompt}\0{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


class FakeImageEngine:
    Options = FakeImageOptions

    def __init__(self, model_name: str, options: FakeImageOptions) -> None:
        self.model_name, self.options = model_name, options
        self.pipeline_calls = 0
        self._state = EngineHealth("loading")

    async def start(self) -> None:
        await asyncio.sleep(self.options.load_delay_s)
        if self.options.fail_load is not None:
            self._state = EngineHealth("failed")
            raise RuntimeError(self.options.fail_load)
        self._state = EngineHealth("ready")

    async def close(self) -> None:
        self._state = EngineHealth("closed")

    def health(self) -> EngineHealth:
        return EngineHealth(self._state.state, {"pipeline_calls": self.pipeline_calls})

    async def generate_images(self, requests: Sequence[ImageRequest], on_step: StepCallback | None = None,
                              cancelled: Callable[[], bool] | None = None) -> list[ImageResult]:
        self.pipeline_calls += 1
        if any("[[fail]]" in r.prompt for r in requests):
            raise RuntimeError("fake image engine failure requested by the prompt")
        steps = requests[0].steps
        for step in range(steps):
            if cancelled is not None and cancelled():
                raise RequestCancelled("cancelled during generation")
            await asyncio.sleep(self.options.step_delay_s)
            if on_step is not None:
                on_step(step + 1, steps)
        return [self._result(r) for r in requests]

    @staticmethod
    def _result(request: ImageRequest) -> ImageResult:
        base = request.seed if request.seed is not None else random.randrange(2**32)
        seeds = [base + i for i in range(request.n)]
        images = [png(request.width, request.height, _colour(request, s)) for s in seeds]
        return ImageResult(images, seeds, filtered="[[filtered]]" in request.prompt)
