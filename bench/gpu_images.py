"""Images on a GPU, in one run (issue 14's table): Stable Diffusion 1.5 geometry with random weights (timing
does not depend on weight values), fp16, 512x512, 50 steps.

Measured on H200s (bench/results/gpu_images-h200-s17.md): a static compile of one batch size took 63-101 s
cold, so llmops' compile option can compile the batch dimension once, dynamic, for every size
(`compile_dynamic_batch`, opt-in until measured here: this bench runs it unless `--compile-batch static`).
The bare compiled rows stay static, one compile per batch size: they are the reference. All five phases and
tests/gpu do not fit one 10-minute device call; run two. The device tool sends the checkout the session was
started in (this file must be there) and runs in its root; that machine has python3 with torch,
transformers, pillow, numpy, pytest, prometheus-client, pyyaml, httpx, but not diffusers nor llmops' server
deps, which travel as wheels:

    bash bench/gpu_wheels.sh          # HERE, once, in that checkout: wheels into .whl/ (git-ignored), 11 MiB
    call 1 (~3 min)  device run  carry=[".whl"]  timeout_s=240  command=
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
      && export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 || exit 1; nvidia-smi -L;
      timeout -k 15 150 python3 bench/gpu_images.py --out $OUT --budget-s 140 --phases bare,llmops;
      unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR; timeout -k 5 75 python3 -m pytest tests/gpu -p
      no:cacheprovider -W ignore::pytest.PytestConfigWarning -rA -s 2>&1 | tee $OUT/tests_gpu.log
    call 2 (the rest of the device time, up to ~9.5 min): the same install line, then
      timeout -k 15 540 python3 bench/gpu_images.py --out $OUT --budget-s 525
      --phases llmops-cold,llmops-warm,bare-compiled --cap llmops-cold=250 --cap llmops-warm=80
    (each one line; pytest-asyncio is not carried: tests/gpu needs none, and -W quiets its unknown ini keys).
    Each call is a fresh machine, so compare rows within a call (all compiled rows are in call 2); the warm
    restart's ratio is its ready_s over call 1's uncompiled ready_s (across machines). Copy
    files_at/gpu_images.json and .md into bench/results and add how it ran; the phase logs
    (files_at/<phase>.log: each phase's output with its llmops server's log) say where a stalled row stopped.

The run is a stdlib-only parent that starts each phase as its own process (own process group), time-boxed,
in this order, cheapest and most informative first:

    1. bare         bare diffusers, batch 1 and one call of batch 4                          (~40 s on an H200)
    2. llmops       llmops /generate sequential and 8 concurrent, no compile; its ready time is the
                    "uncompiled load time" the warm restart is compared with                 (~60 s)
    3. llmops-cold  llmops with the compile option, cold: a fresh, empty inductor/triton cache folder of its
                    own, ready/compile/load seconds and the graphs compiled (cache misses), then sequential
                    and 8 concurrent                          (static per size: ~250 s for sizes 1 and 4)
    4. llmops-warm  the same server restarted on the cache phase 3 filled: ready/compile seconds against
                    phase 2's load time, the graphs read from the cache (hits; misses should be 0), and one
                    timed request; run once phase 3's server was ready (its cache is complete then) (~45 s)
    5. bare-compiled  bare + channels_last + torch.compile(mode="reduce-overhead"), batch 1 then batch 4,
                    each with its compile time (own inductor/triton cache folder)           (~200 s)

The times are those measured on H200s (gpu_images-h200-s17.md; a compile of one batch size 63-101 s), so in
one call llmops' own rows come first and the bare compiled rows take whatever time is left. A model that fails
to load ends its phase at once (its /ready answer says failed), not at the phase's cap.

Each phase runs under min(its cap, what is left of --budget-s). A row whose phase ran out of time or failed
is written as "not finished after N s" / "failed" with the stage it had reached (the last `@stage` of the
phase and the last compile warm-up line of the server's log), and the phase's log tail is printed; every
phase's output, its llmops server's log included, is kept as OUT/<phase>.log. Every figure is written to
OUT/gpu_images.json and .md as soon as it exists. The device tool returns at most 8 files from $OUT: these
are 7 (json, md, 5 logs), and tests_gpu.log the 8th.

Batch sizes compiled by llmops here: 1..4, the option's default (1..max_batch_size), with the batch
dimension dynamic (compile_dynamic_batch: true): one compile of the UNet, two of the VAE decoder (batch 1 is
its own), then a CUDA graph recorded per size; the cold row's graphs_per_size says what each size traced.
The bench's traffic forms sizes 1 and 4 (sequential requests are batches of 1; 8 concurrent requests
coalesce into 2 batches of 4, which each row checks through the pipeline-call count in /ready and reports as
`batches`). With `--compile-batch static` each size is its own compile, 63-101 s cold on an H200: use
`--compile-sizes 1,4` there, as the default four sizes would not fit a call. The cold row never reuses any
cache: the bare compiled rows use their own folder, and TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR are
removed from every llmops server's environment so its configured folder is the one used.

    python bench/gpu_images.py --out bench/results        # on the GPU machine (defaults above)
    python bench/gpu_images.py --dry-run --out /tmp/gi     # tiny geometry on the CPU, about a minute: every
                                                           # phase and row; compile wrapped with dynamo
                                                           # disabled (TORCHDYNAMO_DISABLE=1)
    ... --dry-run --dry-run-compile                        # the same with inductor on the CPU (minutes)
    ... --phases llmops-cold,llmops-warm --cap llmops-cold=300  # a subset, other caps
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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
COMPILED = "bare + channels_last + compile(reduce-overhead)"
CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


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
    compile_sizes: list[int]  # what llmops' compile option warms up
    compile_batch: str  # llmops' compile of the batch dimension: dynamic (its default) or static
    port: int
    work: Path  # the saved model and the compile caches (never under --out: gigabytes)


# the phases: names, their rows, their caps --------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    name: str
    rows: tuple[str, ...]
    cap_s: float
    needs_llmops: bool = False


def phases(s: Settings) -> list[Phase]:
    b, c = s.big_batch, s.concurrent
    plain = ("llmops /generate, sequential",) + ((f"llmops, {c} concurrent /generate",) if c else ())
    cold = ("llmops /generate + compile (cold start), sequential",) + (
        (f"llmops + compile (cold start), {c} concurrent /generate",) if c else ())
    return [
        Phase("bare", ("bare diffusers, batch 1", f"bare diffusers, one call of batch {b}"), 90),
        Phase("llmops", plain, 90, True),
        Phase("llmops-cold", cold, 300, True),
        Phase("llmops-warm", ("llmops + compile, warm restart (compile cache reused)",), 100, True),
        Phase("bare-compiled", (f"{COMPILED}, batch 1", f"{COMPILED}, batch {b}"), 230),
    ]


# the parent: runs each phase as a time-boxed process, keeps its log, writes every row -------------------
@dataclass
class Report:
    out: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, run: str, **figures: Any) -> dict[str, Any]:
        """Record one row and write both files at once."""
        row = {"run": run, **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
               "at_s": round(self.elapsed(), 1)}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()
        return row

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_images.json").write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=2) + "\n")
        (self.out / "gpu_images.md").write_text(self.markdown())

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def row(self, run: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["run"] == run), None)

    def markdown(self) -> str:
        keys = sorted({k for r in self.rows for k in r if k not in ("run", "at_s", "status")})
        lines = ["# Images on a GPU (issue 14)", "", f"{self.meta}", "",
                 "| run | " + " | ".join(keys) + " | status | at s |", "|---|" + "---|" * (len(keys) + 2)]
        lines += ["| " + " | ".join([str(r["run"]), *[str(r.get(k, "")) for k in keys], str(r.get("status", "")),
                                     str(r["at_s"])]) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


class PhaseRun:
    """One phase's process: its output goes to OUT/<phase>.log; `@row`/`@meta`/`@stage` lines are parsed."""

    def __init__(self, report: Report, phase: Phase, argv: list[str], env: dict[str, str]) -> None:
        self.report, self.phase = report, phase
        self.stage, self.engine_line = "starting", ""
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.log = (report.out / f"{phase.name}.log").open("w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     process_group=0)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            self.tail.append(line.rstrip("\n"))
            try:
                self._take(line)
            except ValueError as exc:  # never let one unreadable line stop the reading (the rows after it)
                print(f"== unreadable protocol line ({exc}): {line[:300]!r}", flush=True)

    def _take(self, line: str) -> None:
        """A protocol line starts its line, unless another process's unterminated output came first."""
        if (at := line.find("@row ")) >= 0:
            figures = json.loads(line[at + 5:])
            self.report.add(figures.pop("run"), **figures)
        elif (at := line.find("@meta ")) >= 0:
            self.report.meta.update(json.loads(line[at + 6:]))
            self.report.write()
        elif (at := line.find("@stage ")) >= 0:
            self.stage = line[at + 7:].strip()
        elif "compile warm-up" in line:
            self.engine_line = line.strip()[-200:]

    def wait(self, box_s: float) -> str:
        """'done', 'not finished after N s', or 'failed (exit N)'."""
        try:
            rc = self.proc.wait(box_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return f"not finished after {box_s:.0f} s"
        finally:
            self.reader.join(10)
            self.log.close()
        return "done" if rc == 0 else f"failed (exit {rc})"

    def kill(self) -> None:
        """SIGTERM the phase's process group (its llmops server too), then SIGKILL what is left of it: a
        server stopped mid-compile may not exit on SIGTERM, and it holds the GPU and the port."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def where(self) -> str:
        return f"stage: {self.stage}" + (f"; last engine line: {self.engine_line}" if self.engine_line else "")


def child_env(s: Settings, dry_run_compile: bool, dry_run: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if dry_run and not dry_run_compile:
        env["TORCHDYNAMO_DISABLE"] = "1"  # torch.compile wraps, runs eagerly: the code path in seconds
    return env


def run_phase(report: Report, phase: Phase, argv: list[str], env: dict[str, str], box_s: float,
              current: list[PhaseRun]) -> str:
    print(f"== phase {phase.name}: up to {box_s:.0f} s", flush=True)
    run = PhaseRun(report, phase, argv, env)
    current[:] = [run]
    status = run.wait(box_s)
    current.clear()  # (a SIGTERM during wait leaves it set: the handler names its stage)
    if status != "done":
        print(f"== phase {phase.name} {status} ({run.where()}); last lines of {run.log.name}:", flush=True)
        print("\n".join(run.tail), flush=True)
    for name in phase.rows:
        if report.row(name) is None:
            report.add(name, status=f"{status} ({run.where()}); log: {phase.name}.log")
    return status


def orchestrate(a: argparse.Namespace, s: Settings, out: Path) -> Report:
    report = Report(out, {"budget_s": a.budget_s, "compile_sizes": s.compile_sizes or f"1..{s.big_batch}",
                          "compile_batch": s.compile_batch,
                          "dry_run": a.dry_run, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    if a.dry_run and not a.dry_run_compile:
        report.meta["compile"] = "dry run: torch.compile wraps with dynamo disabled (TORCHDYNAMO_DISABLE=1)"
    report.write()
    caps = dict(item.split("=", 1) for item in a.cap)
    wanted = set(a.phases.split(",")) if a.phases else None
    env = child_env(s, a.dry_run_compile, a.dry_run)
    llmops = all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "pydantic", "structlog"))
    current: list[PhaseRun] = []

    def stop(signum: int, frame: Any) -> None:  # the outer `timeout`: end the phase, mark its rows, exit
        for run in current:
            run.kill()
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    selected = [p for p in phases(s) if wanted is None or p.name in wanted]
    try:
        for phase in selected:
            left = a.budget_s - report.elapsed()
            box = min(float(caps.get(phase.name, phase.cap_s)), left)
            reason = skip_reason(phase, llmops, "cold_ready_s" in report.meta, left)
            if reason:
                for name in phase.rows:
                    report.add(name, status=reason)
                continue
            argv = [sys.executable, str(Path(__file__).resolve()), *a.passthrough, "--phase", phase.name,
                    "--work", str(s.work)]
            plain = report.row("llmops /generate, sequential")
            if plain and "ready_s" in plain:
                argv += ["--plain-ready-s", str(plain["ready_s"])]
            run_phase(report, phase, argv, env, box, current)
    except SystemExit:
        for r in current:
            print(f"== stopped during phase {r.phase.name} ({r.where()}); its last lines:", flush=True)
            print("\n".join(r.tail), flush=True)
        for phase in selected:
            where = next((f" ({r.where()}; log: {phase.name}.log)" for r in current if r.phase == phase), "")
            for name in phase.rows:
                if report.row(name) is None:
                    report.add(name, status=f"not finished: the run was stopped at {report.elapsed():.0f} s{where}")
        raise
    return report


def skip_reason(phase: Phase, llmops: bool, cold_ready: bool, left: float) -> str:
    if phase.needs_llmops and not llmops:
        return "skipped: llmops' server dependencies (fastapi, uvicorn, pydantic, structlog) are not importable"
    if phase.name == "llmops-warm" and not cold_ready:
        return "not run: the cold start never became ready, so there is no complete compile cache to reuse"
    if left < 15:
        return f"not started: {max(left, 0):.0f} s of the budget left"
    return ""


# the phases' own processes: torch, diffusers, transformers ----------------------------------------------
def emit(kind: str, payload: Any) -> None:
    """One protocol line to the parent, written with one write(2) after flushing what print left: the phase's
    llmops server shares this stdout, and `print` writes the text and its newline separately, so a server log
    line landing between the two glued itself onto a row, which the parent then could not read."""
    line = f"@{kind} {payload if isinstance(payload, str) else json.dumps(payload)}\n".encode()
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line)  # atomic on a pipe below PIPE_BUF (4096 bytes); rows are far smaller


def row(run: str, **figures: Any) -> None:
    emit("row", {"run": run, **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}})


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


def phase_meta(s: Settings) -> None:
    import diffusers
    import torch

    emit("meta", {"device": torch.cuda.get_device_name(0) if s.device.startswith("cuda") else s.device,
                  "torch": torch.__version__, "diffusers": diffusers.__version__, "dtype": s.dtype, "size": s.size,
                  "steps": s.steps, "repeats": s.repeats})


def phase_bare(s: Settings) -> None:
    phase_meta(s)
    emit("stage", "building the pipeline")
    pipe = build(s.geometry, s.device, s.dtype)
    emit("stage", "batch 1")
    b1 = seconds_per_image(pipe, s, 1)
    row("bare diffusers, batch 1", s_per_image=b1, images_per_s=1 / b1)
    emit("stage", f"batch {s.big_batch}")
    bb = seconds_per_image(pipe, s, s.big_batch)
    row(f"bare diffusers, one call of batch {s.big_batch}", s_per_image=bb, images_per_s=1 / bb, vs_batch_1=b1 / bb)


def phase_bare_compiled(s: Settings) -> None:
    cache = s.work / "cache-bare"
    os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"] = str(cache), str(cache / "triton")
    emit("stage", "building the pipeline")
    pipe = build(s.geometry, s.device, s.dtype)
    compile_bare(pipe)
    for batch in (1, s.big_batch):
        emit("stage", f"compiling and recording batch {batch} (3 calls of 2 steps)")
        started = time.perf_counter()
        for _ in range(3):  # compile, then CUDA graph recording
            call(pipe, s, batch, steps=2)
        compile_s = time.perf_counter() - started
        emit("stage", f"timing batch {batch}")
        per = seconds_per_image(pipe, s, batch)
        row(f"{COMPILED}, batch {batch}", s_per_image=per, images_per_s=1 / per, compile_s=compile_s,
            cache="own folder, cold" if batch == 1 else "own folder (batch 1's graphs in it)")


def _post(base: str, body: dict[str, Any]) -> float:
    request = urllib.request.Request(f"{base}/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        data = json.loads(response.read())
    base64.b64decode(data["image_base64"])
    return float(data["generation_time"])


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:  # /ready answers 503 with the models' states while not ready
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


class LlmopsServer:
    """`python -m llmops serve` over the saved pipeline; its log goes to this phase's output (OUT/<phase>.log)."""

    def __init__(self, s: Settings, compiled: bool) -> None:
        options: dict[str, Any] = {"model": str(s.work / "model"), "safety_checker": False, "dtype": s.dtype,
                                   "device": s.device, "pipeline": "sd"}
        if compiled:
            options.update(compile=True, compile_cache_dir=str(s.work / "cache-llmops"),
                           compile_force=not s.device.startswith("cuda"))
            if s.compile_sizes:
                options["compile_batch_sizes"] = s.compile_sizes
            options["compile_dynamic_batch"] = s.compile_batch == "dynamic"
        limits = {"max_queued": 64, "default_deadline_s": 600, "max_deadline_s": 600,
                  "image": {"max_batch_size": s.big_batch, "default_size": s.size, "min_size": min(256, s.size),
                            "max_steps": max(50, s.steps), "batch_timeout_s": 0.05}}
        config = s.work / f"llmops-{'compiled' if compiled else 'plain'}.json"
        config.write_text(json.dumps({"log_level": "info", "cache": {"enabled": False},
                                      "state": {"backend": "memory"},
                                      "models": [{"name": "sd", "kind": "image", "engine": "diffusers",
                                                  "options": options, "limits": limits}]}))
        self.base = f"http://127.0.0.1:{s.port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config), "--port",
                                      str(s.port)])  # stdout/stderr: this phase's, so into its log
        self.ready_s = 0.0

    def wait_ready(self) -> dict[str, Any]:
        """Poll /ready until 200; returns the model's entry (state, compile_s, pipeline_calls, ...)."""
        while self.proc.poll() is None:
            try:
                status, body = _get(f"{self.base}/ready")
                if status == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return dict(body["models"]["sd"])
                model = body.get("models", {}).get("sd", {})
                if model.get("state") == "failed":  # the server stays up; its model never will
                    raise RuntimeError(f"the model failed to load: {model}")
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"llmops exited with {self.proc.returncode} before it was ready")

    def model(self) -> dict[str, Any]:
        return dict(_get(f"{self.base}/ready")[1]["models"]["sd"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def saved_model(s: Settings) -> None:
    if not (s.work / "model" / "model_index.json").exists():
        emit("stage", "building and saving the pipeline for llmops")
        build(s.geometry, s.device, s.dtype).save_pretrained(s.work / "model")


def phase_llmops(s: Settings, compiled: bool, label: str) -> None:
    saved_model(s)
    emit("stage", "llmops: waiting for /ready" + (" (load, compile, record graphs)" if compiled else " (load)"))
    server = LlmopsServer(s, compiled)
    body = {"prompt": "a lighthouse at dusk", "num_inference_steps": s.steps, "width": s.size, "height": s.size,
            "guidance_scale": 7.5, "model": "sd"}
    try:
        ready = server.wait_ready()
        startup = {"ready_s": server.ready_s}
        if compiled:
            compile_s = float(ready.get("compile_s", 0.0))
            startup.update(compile_s=compile_s, load_s=server.ready_s - compile_s,
                           compiled_sizes=s.compile_sizes or f"1..{s.big_batch}", compile_batch=s.compile_batch,
                           graphs_per_size=ready.get("compile_graphs_per_size"),
                           cache_hits=ready.get("compile_cache_hits"), cache_misses=ready.get("compile_cache_misses"))
            emit("meta", {"cold_ready_s": round(server.ready_s, 1)})  # the cache is complete: a restart can run
        emit("stage", "llmops: first request (2 steps)")
        _post(server.base, {**body, "num_inference_steps": 2})  # the first request's own costs
        emit("stage", f"llmops: {s.repeats} sequential requests")
        started = time.perf_counter()
        for i in range(s.repeats):
            _post(server.base, {**body, "seed": i})
        seq = (time.perf_counter() - started) / s.repeats
        row(f"llmops /generate{label}, sequential", s_per_image=seq, images_per_s=1 / seq, **startup)
        if not s.concurrent:
            return
        with ThreadPoolExecutor(s.concurrent) as pool:
            # the bare batch row is timed after an untimed call of its shape: here too, one batch of it at 2
            # steps first (uncompiled, the server's first call at a shape picks its kernels: 2 s more on an H200)
            emit("stage", f"llmops: {s.big_batch} concurrent 2-step requests (untimed: the batch's shape)")
            list(pool.map(lambda i: _post(server.base, {**body, "num_inference_steps": 2, "seed": i}),
                          range(s.big_batch)))
            emit("stage", f"llmops: {s.concurrent} concurrent requests")
            calls = int(server.model().get("pipeline_calls", 0))
            started = time.perf_counter()
            list(pool.map(lambda i: _post(server.base, {**body, "seed": i}), range(s.concurrent)))
        wall = time.perf_counter() - started
        row(f"llmops{label}, {s.concurrent} concurrent /generate", images_per_s=s.concurrent / wall,
            vs_sequential=seq / (wall / s.concurrent), batches=int(server.model().get("pipeline_calls", 0)) - calls)
    finally:
        server.stop()


def phase_warm(s: Settings, plain_ready_s: float | None) -> None:
    saved_model(s)
    emit("stage", "llmops: waiting for /ready on the cold start's cache (load, cache hits, record graphs)")
    server = LlmopsServer(s, compiled=True)
    try:
        ready = server.wait_ready()
        emit("stage", "llmops: one timed request")
        started = time.perf_counter()
        _post(server.base, {"prompt": "a lighthouse at dusk", "num_inference_steps": s.steps, "width": s.size,
                            "height": s.size, "guidance_scale": 7.5, "model": "sd", "seed": 1})
        first = time.perf_counter() - started
        figures: dict[str, Any] = {"ready_s": server.ready_s, "compile_s": float(ready.get("compile_s", 0.0)),
                                   "first_request_s": first, "cache_hits": ready.get("compile_cache_hits"),
                                   "cache_misses": ready.get("compile_cache_misses")}
        if plain_ready_s:
            figures["vs_plain_load"] = server.ready_s / plain_ready_s
        row("llmops + compile, warm restart (compile cache reused)", **figures)
    finally:
        server.stop()


def run_child(a: argparse.Namespace, s: Settings) -> None:
    if a.phase == "bare":
        phase_bare(s)
    elif a.phase == "bare-compiled":
        phase_bare_compiled(s)
    elif a.phase == "llmops":
        phase_llmops(s, False, "")
    elif a.phase == "llmops-cold":
        phase_llmops(s, True, " + compile (cold start)")
    elif a.phase == "llmops-warm":
        phase_warm(s, a.plain_ready_s)
    else:
        raise SystemExit(f"unknown phase {a.phase}")


# the command line ---------------------------------------------------------------------------------------
def settings(a: argparse.Namespace, work: Path) -> Settings:
    if a.dry_run:
        return Settings(TINY, "cpu", "float32", 64, 2, 2, 2, 1, [1, 2], a.compile_batch, a.port, work)
    sizes = [] if a.compile_sizes == "all" else [int(x) for x in a.compile_sizes.split(",")]
    return Settings(SD15, a.device, a.dtype, a.size, a.steps, 4, a.concurrent, a.repeats, sizes, a.compile_batch,
                    a.port, work)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrent", type=int, default=8, help="requests of the llmops concurrent rows; 0 skips "
                   "them (with --compile-sizes 1 they would form batches of 4 and compile them while timed)")
    p.add_argument("--compile-sizes", default="all",
                   help="batch sizes llmops' compile option warms (comma-separated), or 'all': 1..max_batch_size")
    p.add_argument("--compile-batch", choices=("dynamic", "static"), default="dynamic",
                   help="llmops' compile of the batch dimension: once for every size (compile_dynamic_batch), "
                   "or a static compile per size (the option's default; with --compile-sizes 1,4 the cold "
                   "start fits a call)")
    p.add_argument("--budget-s", type=float, default=530, help="the whole run; each phase gets min(cap, what is left)")
    p.add_argument("--cap", action="append", default=[], metavar="PHASE=S", help="a phase's own time box")
    p.add_argument("--phases", default="", help="comma-separated subset of: bare, llmops, bare-compiled, "
                   "llmops-cold, llmops-warm (default: all, in that order)")
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--dry-run", action="store_true", help="tiny geometry on the CPU: exercises the code path")
    p.add_argument("--dry-run-compile", action="store_true", help="a dry run with real inductor compiles (minutes)")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # the parent starts each phase with these
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--plain-ready-s", type=float, help=argparse.SUPPRESS)
    return p


def passthrough(a: argparse.Namespace) -> list[str]:
    """The settings flags a phase's process is started with."""
    args = ["--device", a.device, "--dtype", a.dtype, "--size", str(a.size), "--steps", str(a.steps),
            "--repeats", str(a.repeats), "--concurrent", str(a.concurrent), "--compile-sizes", a.compile_sizes,
            "--compile-batch", a.compile_batch, "--port", str(a.port)]
    return args + (["--dry-run"] if a.dry_run else [])


def main() -> None:
    a = parser().parse_args()
    if a.phase:
        run_child(a, settings(a, Path(a.work)))
        return
    a.passthrough = passthrough(a)
    work = Path(tempfile.mkdtemp(prefix="gpu-images-"))
    try:
        report = orchestrate(a, settings(a, work), Path(a.out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = [r["run"] for r in report.rows if "status" in r]
    print(f"== {len(report.rows)} rows in {report.elapsed():.0f} s; not measured: {missing or 'none'}", flush=True)


if __name__ == "__main__":
    main()
