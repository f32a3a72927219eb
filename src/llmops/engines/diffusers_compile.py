"""Compiling a diffusers pipeline at load time: the UNet and the VAE decoder in channels_last, through
`torch.compile(mode="reduce-overhead")` (CUDA graphs: a step no longer waits on kernel launches), warmed up
at every batch size the image coalescer forms before the model reports ready, so no request pays for a
compile. Each size is its own static compile (63-101 s each for SD 1.5 on an H200, so the default sizes
1..4 are a cold start of several minutes), unless the plan makes the batch dimension dynamic: compiled
once for every size, a CUDA graph still recorded per size (in seconds). The VAE decoder's batch of 1 is
its own graph there (a dynamic dimension of size 1 is specialised), so a dynamic plan is three compiles in
all. It is opt-in until measured on a GPU (its kernels may be slower than static ones). The
compile caches (inductor's FX graphs and kernels) go to a folder beside the weights, so a restart reuses
them and only re-records the CUDA graphs."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import ConfigError

log = logging.getLogger("llmops.engines.diffusers")
WARMUP_STEPS = 2
WARMUP_CALLS = 3  # CUDA graph trees record a shape on its second or third run


@dataclass(frozen=True)
class CompilePlan:
    batch_sizes: tuple[int, ...]
    width: int
    height: int
    guidance_scale: float
    mode: str
    cache_dir: Path
    dynamic_batch: bool = False


def cache_dir(configured: str | None, source: str) -> Path:
    """Where the compile caches live: the configured folder, else a folder on the model volume: inside a
    local model folder when it is writable, else under HF_HOME (where hub models are cached) or
    ~/.cache/llmops, named after the model."""
    if configured:
        return Path(configured).expanduser()
    local = Path(source).expanduser()
    if local.is_dir() and os.access(local, os.W_OK):
        return local / ".torch-compile-cache"
    root = Path(os.environ.get("HF_HOME") or "~/.cache/llmops").expanduser()
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in source)[:64]
    return root / "torch-compile-cache" / f"{slug}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


def check_device(model: str, device: str, force: bool) -> None:
    if device.startswith("cuda") or force:
        return
    raise ConfigError(f"model {model}: compile needs a CUDA GPU (it records CUDA graphs) and this model runs on "
                      f"{device!r}. Remove `compile`, or set `compile_force: true` to compile for {device} anyway "
                      "(minutes of start-up for little gain).")


def use_cache(folder: Path) -> Path:
    """Point inductor's and triton's caches at `folder` and return the folder in use. Inductor's caches are
    process-wide and its folder is an environment variable that torch sets to its default (a folder under
    /tmp, lost with a container) the first time anything asks for it, as importing diffusers' pipelines
    does: so the variable is replaced unless it names a folder other than torch's default, which is an
    operator's choice (or an earlier compiled model's folder in this process) and is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    from torch._inductor.utils import clear_caches

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        chosen = Path(current)
        if chosen != folder:
            log.info("inductor's cache stays in %s (TORCHINDUCTOR_CACHE_DIR), not %s", chosen, folder)
        os.environ.setdefault("TRITON_CACHE_DIR", str(chosen / "triton"))
        return chosen
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    clear_caches()  # paths inductor derived from the old folder and memoised
    return folder


@dataclass(frozen=True)
class Compiled:
    """What compiling at load did: its seconds, the graphs inductor found in the cache folder (hits) or
    had to compile (misses; a restart on a full cache has none), and at each warmed batch size the graphs
    dynamo traced (with a dynamic batch, none after the first size above 1) and the warm-up's seconds."""

    seconds: float
    cache_hits: int
    cache_misses: int
    graphs_per_size: dict[int, int]
    seconds_per_size: dict[int, float]


def compile_pipeline(pipe: Any, plan: CompilePlan) -> Compiled:
    """Compile the UNet and VAE decoder in place and run the warm-up."""
    import torch
    from torch._dynamo.utils import counters

    folder = use_cache(plan.cache_dir)
    started = time.perf_counter()
    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    dynamo = torch._dynamo.config
    dynamo.cache_size_limit = max(dynamo.cache_size_limit, 2 * len(plan.batch_sizes) + 4)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    dynamic = None if plan.dynamic_batch else False  # None: what is marked dynamic stays so
    pipe.unet = torch.compile(pipe.unet, mode=plan.mode, fullgraph=True, dynamic=dynamic)
    decode = torch.compile(pipe.vae.decode, mode=plan.mode, dynamic=dynamic)
    if plan.dynamic_batch:
        pipe.unet.register_forward_pre_hook(_mark_unet_batch, with_kwargs=True)
        pipe.vae.decode = _batch_dynamic(decode)
    else:
        pipe.vae.decode = decode
    graphs, seconds = warm_up(pipe, plan.batch_sizes, plan.width, plan.height, plan.guidance_scale)
    done = Compiled(time.perf_counter() - started, counters["inductor"]["fxgraph_cache_hit"] - hits,
                    counters["inductor"]["fxgraph_cache_miss"] - misses, graphs, seconds)
    log.info("compiled the UNet and VAE decoder (%s, batch %s) for batch sizes %s at %dx%d in %.1f s, cache %s: "
             "%d graphs read from it, %d compiled", plan.mode, "dynamic" if plan.dynamic_batch else "static",
             list(plan.batch_sizes), plan.width, plan.height, done.seconds, folder, done.cache_hits,
             done.cache_misses)
    return done


def _mark_batch(tensor: Any) -> None:
    """Ask dynamo to trace `tensor`'s first dimension as a symbol, unless it is 1 (which it specialises)."""
    import torch

    if isinstance(tensor, torch.Tensor) and tensor.ndim and tensor.shape[0] > 1:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)


def _mark_unet_batch(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A pre-hook on the compiled UNet (it runs outside the traced code): the latents and the text
    embeddings share the batch dimension (twice the images' count with classifier-free guidance)."""
    _mark_batch(args[0] if args else kwargs.get("sample"))
    _mark_batch(kwargs.get("encoder_hidden_states"))


def _batch_dynamic(decode: Any) -> Any:
    def batch_dynamic_decode(z: Any, *args: Any, **kwargs: Any) -> Any:
        _mark_batch(z)
        return decode(z, *args, **kwargs)

    return batch_dynamic_decode


def warm_up(pipe: Any, batch_sizes: Sequence[int], width: int, height: int, guidance_scale: float
            ) -> tuple[dict[int, int], dict[int, float]]:
    """Run every batch size enough times for its graph to be compiled and recorded, logging each size's
    seconds (a slow or stalled start shows in the log which size it had reached); returns the graphs dynamo
    traced and the seconds taken at each size."""
    import torch
    from torch._dynamo.utils import counters

    traced: dict[int, int] = {}
    took: dict[int, float] = {}

    for n, size in enumerate(batch_sizes, 1):
        log.info("compile warm-up: batch size %d (%d of %d) starting", size, n, len(batch_sizes))
        started, graphs = time.perf_counter(), counters["stats"]["unique_graphs"]
        for _ in range(WARMUP_CALLS):
            with torch.inference_mode():
                pipe(prompt=["warm-up"] * size, negative_prompt=[""] * size, num_inference_steps=WARMUP_STEPS,
                     guidance_scale=guidance_scale, width=width, height=height,
                     generator=[torch.Generator("cpu").manual_seed(i) for i in range(size)])
        traced[size], took[size] = counters["stats"]["unique_graphs"] - graphs, time.perf_counter() - started
        log.info("compile warm-up: batch size %d (%d of %d) done in %.1f s, %d graphs traced", size, n,
                 len(batch_sizes), took[size], traced[size])
    return traced, took
