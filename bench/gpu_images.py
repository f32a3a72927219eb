"""Images on a GPU, in one run (issue 14's table): Stable Diffusion 1.5 geometry with random weights (timing
does not depend on weight values), fp16, 512x512, 50 steps:

    bare diffusers, batch 1 and one call of batch 4
    llmops /generate sequential and 8 concurrent (coalesced), plain and with the engine's compile option
    (cold start, then a warm restart reusing the compile cache, against the plain load time)
    bare diffusers + channels_last + torch.compile(reduce-overhead), batch 1 and batch 4

It needs only the standard library, torch, diffusers and transformers: the llmops rows run when llmops and
its server dependencies are importable (else they are reported as skipped). Every figure is written to
OUT/gpu_images.json and .md as soon as it exists, and a phase that would not fit in the time budget
(default 570 s) is skipped and says so.

    python bench/gpu_images.py --out bench/results            # on the GPU machine
    python bench/gpu_images.py --dry-run --out /tmp/gi        # tiny geometry on the CPU: the code path only
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SD15 = {"unet": {"sample_size": 64, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
                 "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768,
                 "attention_head_dim": 8},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "sample_size": 512},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "vocab_size": 49408, "projection_dim": 768}}
TINY = {"unet": {"sample_size": 8, "block_out_channels": (32, 64), "layers_per_block": 1,
                 "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                 "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32,
                 "attention_head_dim": 8},
        "vae": {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "sample_size": 64},
        "text": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "vocab_size": 1000, "projection_dim": 32}}


@dataclass
class Settings:
    geometry: dict[str, Any]
    device: str
    dtype: str
    size: int
    steps: int
    big_batch: int  # the "batch 4" rows
    concurrent: int  # the "8 concurrent" rows
    repeats: int
    compile: bool  # the compiled rows (off in a CPU dry run unless asked: inductor on a CPU takes minutes)
    budget_s: float


@dataclass
class Report:
    out: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, run: str, **figures: Any) -> None:
        """Record one row and write both files at once."""
        row = {"run": run, **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
               "at_s": round(time.perf_counter() - self.started, 1)}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_images.json").write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=2) + "\n")
        (self.out / "gpu_images.md").write_text(self.markdown())

    def left(self, budget_s: float) -> float:
        return budget_s - (time.perf_counter() - self.started)

    def markdown(self) -> str:
        keys = sorted({k for r in self.rows for k in r if k not in ("run", "at_s")})
        lines = ["# Images on a GPU (issue 14)", "", f"{self.meta}", "",
                 "| run | " + " | ".join(keys) + " | at s |", "|---|" + "---|" * (len(keys) + 1)]
        lines += ["| " + " | ".join([str(r["run"]), *[str(r.get(k, "")) for k in keys], str(r["at_s"])]) + " |"
                  for r in self.rows]
        return "\n".join(lines) + "\n"


def _vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP-layout vocabulary (bytes, bytes</w>, letter pairs, the two specials) and its merges."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = itertools.count(256)
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    pairs = list(itertools.product("etaoinshrdlucmfwypvbgkjqxz", repeat=2))[:200]
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in pairs), *(a + b + "</w>" for a, b in pairs),
              "<|startoftext|>", "<|endoftext|>"]
    merges = [f"{a} {b}" for a, b in pairs] + [f"{a} {b}</w>" for a, b in pairs]
    return {t: i for i, t in enumerate(tokens)}, merges


def build(geometry: dict[str, Any], device: str, dtype: str) -> Any:
    """A StableDiffusionPipeline of the given geometry with seeded random weights, on `device`."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = _vocab()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **geometry["unet"])
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                      down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4, **geometry["vae"])
        text = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, hidden_act="quick_gelu",
                                            bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                                            pad_token_id=len(vocab) - 1, **geometry["text"]))
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=getattr(torch, dtype))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def call(pipe: Any, s: Settings, batch: int, steps: int | None = None) -> None:
    import torch

    with torch.inference_mode():
        pipe(prompt=["a lighthouse at dusk"] * batch, negative_prompt=[""] * batch,
             num_inference_steps=steps or s.steps, width=s.size, height=s.size, guidance_scale=7.5,
             generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)])
    _sync(s.device)


def seconds_per_image(pipe: Any, s: Settings, batch: int) -> float:
    """Mean over `repeats` timed calls, after one untimed call of the same shape."""
    call(pipe, s, batch)
    started = time.perf_counter()
    for _ in range(s.repeats):
        call(pipe, s, batch)
    return (time.perf_counter() - started) / s.repeats / batch


def compile_bare(pipe: Any) -> None:
    """What the llmops compile option does, on a bare pipeline."""
    import torch

    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True, dynamic=False)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode="reduce-overhead", dynamic=False)


def bare_rows(report: Report, s: Settings) -> None:
    pipe = build(s.geometry, s.device, s.dtype)
    b1 = seconds_per_image(pipe, s, 1)
    report.add("bare diffusers, batch 1", s_per_image=b1, images_per_s=1 / b1)
    bb = seconds_per_image(pipe, s, s.big_batch)
    report.add(f"bare diffusers, one call of batch {s.big_batch}", s_per_image=bb, images_per_s=1 / bb,
               vs_batch_1=b1 / bb)


def compiled_bare_rows(report: Report, s: Settings, cache: Path) -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    pipe = build(s.geometry, s.device, s.dtype)
    compile_bare(pipe)
    for batch in (1, s.big_batch):
        started = time.perf_counter()
        for _ in range(3):  # compile, then CUDA graph recording
            call(pipe, s, batch, steps=2)
        compile_s = time.perf_counter() - started
        per = seconds_per_image(pipe, s, batch)
        report.add(f"bare + channels_last + compile(reduce-overhead), batch {batch}", s_per_image=per,
                   images_per_s=1 / per, compile_s=compile_s, cache="warm from the llmops runs" if cache.exists()
                   and any(cache.iterdir()) else "cold")


# llmops --------------------------------------------------------------------------------------------------
def llmops_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("llmops", "fastapi", "uvicorn", "pydantic"))


def _post(base: str, body: dict[str, Any]) -> float:
    request = urllib.request.Request(f"{base}/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        data = json.loads(response.read())
    base64.b64decode(data["image_base64"])
    return float(data["generation_time"])


class LlmopsServer:
    """`python -m llmops serve` over a saved copy of the pipeline; ready time measured from the spawn."""

    def __init__(self, folder: Path, s: Settings, port: int, compiled: bool, cache: Path, log: Path) -> None:
        options: dict[str, Any] = {"model": str(folder), "safety_checker": False, "dtype": s.dtype,
                                   "device": s.device, "pipeline": "sd"}
        if compiled:
            options.update(compile=True, compile_cache_dir=str(cache), compile_force=not s.device.startswith("cuda"))
        limits = {"max_queued": 64, "default_deadline_s": 600, "max_deadline_s": 600,
                  "image": {"max_batch_size": s.big_batch, "default_size": s.size, "min_size": min(256, s.size),
                            "max_steps": max(50, s.steps), "batch_timeout_s": 0.05}}
        config = folder.parent / f"llmops-{'compiled' if compiled else 'plain'}.json"
        config.write_text(json.dumps({"log_level": "warning", "cache": {"enabled": False},
                                      "state": {"backend": "memory"},
                                      "models": [{"name": "sd", "kind": "image", "engine": "diffusers",
                                                  "options": options, "limits": limits}]}))
        self.base, self.log = f"http://127.0.0.1:{port}", log.open("w")
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config), "--port",
                                      str(port)], stdout=self.log, stderr=subprocess.STDOUT)
        self.ready_s = self._wait(started)

    def _wait(self, started: float) -> float:
        while self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.base}/ready", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"llmops exited with {self.proc.returncode}; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)
        self.log.close()


def llmops_rows(report: Report, s: Settings, folder: Path, port: int, compiled: bool, cache: Path,
                label: str) -> float:
    server = LlmopsServer(folder, s, port, compiled, cache, folder.parent / f"{label}.log")
    body = {"prompt": "a lighthouse at dusk", "num_inference_steps": s.steps, "width": s.size, "height": s.size,
            "guidance_scale": 7.5, "model": "sd"}
    try:
        _post(server.base, {**body, "num_inference_steps": 2})  # first request's own costs
        started = time.perf_counter()
        for i in range(s.repeats):
            _post(server.base, {**body, "seed": i})
        seq = (time.perf_counter() - started) / s.repeats
        report.add(f"llmops /generate{label}, sequential", s_per_image=seq, images_per_s=1 / seq,
                   ready_s=server.ready_s)
        started = time.perf_counter()
        with ThreadPoolExecutor(s.concurrent) as pool:
            list(pool.map(lambda i: _post(server.base, {**body, "seed": i}), range(s.concurrent)))
        wall = time.perf_counter() - started
        report.add(f"llmops{label}, {s.concurrent} concurrent /generate", images_per_s=s.concurrent / wall,
                   vs_sequential=seq / (wall / s.concurrent))
    finally:
        server.stop()
    return server.ready_s


def restart_row(report: Report, s: Settings, folder: Path, port: int, cache: Path, plain_ready_s: float) -> None:
    server = LlmopsServer(folder, s, port, True, cache, folder.parent / "warm-restart.log")
    server.stop()
    report.add("llmops compiled, warm restart (compile cache reused)", ready_s=server.ready_s,
               vs_plain_load=server.ready_s / plain_ready_s)


def run(s: Settings, out: Path, port: int) -> Report:
    import torch

    report = Report(out, {"device": torch.cuda.get_device_name(0) if s.device.startswith("cuda") else s.device,
                          "torch": torch.__version__, "diffusers": importlib.import_module("diffusers").__version__,
                          "dtype": s.dtype, "size": s.size, "steps": s.steps, "repeats": s.repeats,
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    bare_rows(report, s)
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "model", Path(tmp) / "compile-cache"
        phases: list[tuple[str, float, Callable[[], object]]] = []
        if llmops_available():
            build(s.geometry, s.device, s.dtype).save_pretrained(folder)
            plain = llmops_rows(report, s, folder, port, False, cache, "")
            if s.compile:
                phases += [("llmops + compile (cold start)", 0.45, lambda: llmops_rows(
                               report, s, folder, port, True, cache, " + compile (cold start)")),
                           ("llmops compiled, warm restart", 0.15, lambda: restart_row(
                               report, s, folder, port, cache, plain))]
        else:
            report.add("llmops rows", skipped="llmops or its server dependencies are not importable here")
        if s.compile:
            phases.append(("bare + compile", 0.25, lambda: compiled_bare_rows(report, s, cache)))
        else:
            report.add("compiled rows", skipped="compile off (a CPU dry run: inductor needs minutes on a CPU)")
        for name, share, phase in phases:
            if report.left(s.budget_s) < share * s.budget_s:
                report.add(name, skipped=f"not enough of the {s.budget_s:.0f} s budget left")
                continue
            phase()
    return report


def settings(a: argparse.Namespace) -> Settings:
    if a.dry_run:
        return Settings(TINY, "cpu", "float32", 64, 2, 2, 2, 1, a.dry_run_compile, a.budget_s)
    return Settings(SD15, a.device, a.dtype, a.size, a.steps, 4, 8, a.repeats, True, a.budget_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=570)
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--dry-run", action="store_true", help="tiny geometry on the CPU: exercises the code path")
    p.add_argument("--dry-run-compile", action="store_true", help="also the compiled rows in a dry run (slow)")
    a = p.parse_args()
    run(settings(a), Path(a.out), a.port)


if __name__ == "__main__":
    main()
