"""Image classification through the Open Inference Protocol (KServe V2 JSON, one base64 image per request),
batch 1 against batching on, on a real server; the response cache is off so every request runs the model.

The embedded tiny ResNet (the default) on the held-out digits, the engine on one CPU thread; or (--model
resnet50) a ResNet-50-geometry model (transformers' ResNetConfig defaults, seeded random weights: fine for
timing) on random 224x224 JPEGs, on the CPU or (--device cuda, fp16) a GPU, with bare PyTorch on the same
device and model for scale.

    python -m bench.classify --out bench/results                          # classify-tiny-cpu.md / .json
    python -m bench.classify --model resnet50 --threads 8 --out bench/results   # classify-resnet50-cpu.*
    python -m bench.classify --gpu --out bench/results                    # classify-resnet50-cuda.*
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.helpers import live_server

from bench.load import pct
from bench.report import run_meta, save

MODES = {"batch 1": {"max_batch_size": 1, "batch_timeout_s": 0.0},
         "batched": {"max_batch_size": 32, "batch_timeout_s": 0.005}}


def digit_payloads() -> list[str]:
    from llmops.engines.tiny_resnet import digits

    data = digits()
    out = []
    for i in data.test:
        buf = io.BytesIO()
        data.images[i].save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def jpeg_payloads(n: int, size: int = 224) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def build_resnet50(folder: Path, seed: int = 0) -> Path:
    """ResNet-50 geometry (bottleneck blocks 3-4-6-3, 2048 features, 1000 classes), random weights."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    torch.manual_seed(seed)
    labels: dict[str, Any] = {"id2label": {i: f"class-{i}" for i in range(1000)},
                              "label2id": {f"class-{i}": i for i in range(1000)}}
    ResNetForImageClassification(ResNetConfig(**labels)).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


async def _load(base: str, payloads: list[str], requests: int, concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                            "data": [payloads[i % len(payloads)]]}], "parameters": {"top_k": 1}}
        async with gate:
            started = time.perf_counter()
            reply = await client.post("/v2/models/m/infer", json=body)
            latencies.append(time.perf_counter() - started)
            errors += reply.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(min(requests, 2 * concurrency))))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        wall = time.perf_counter() - started
    return {"requests": requests, "concurrency": concurrency, "images_per_s": round(requests / wall, 1),
            "p50_ms": round(1000 * (pct(latencies, 50) or 0), 1), "p99_ms": round(1000 * (pct(latencies, 99) or 0), 1),
            "errors": errors}


def _scrape_batches(base: str) -> float | None:
    text = httpx.get(f"{base}/metrics").text
    values = {}
    for line in text.splitlines():
        for key in ("sum", "count"):
            if line.startswith(f'llmops_batch_size_{key}{{model="m"}}'):
                values[key] = float(line.split()[-1])
    return round(values["sum"] / values["count"], 2) if values.get("count") else None


def run_mode(tmp: Path, mode: str, options: dict[str, Any], payloads: list[str], requests: int,
             concurrencies: list[int], max_body: int) -> list[dict[str, Any]]:
    cfg = tmp / f"{mode.replace(' ', '-')}.yaml"
    model = {"name": "m", "kind": "classify", "engine": "classifier", "options": options,
             "limits": {"max_queued": 4096, "classify": MODES[mode]}}
    cfg.write_text(yaml.safe_dump({"log_level": "warning", "models": [model], "cache": {"enabled": False},
                                   "state": {"backend": "memory"}, "limits": {"max_body_bytes": max_body}}))
    rows = []
    with live_server(cfg, ready_timeout=600) as base:
        for concurrency in concurrencies:
            n = requests if concurrency > 1 else max(1, requests // 8)
            row = {"mode": mode, **asyncio.run(_load(base, payloads, n, concurrency))}
            row["mean_batch"] = _scrape_batches(base)
            rows.append(row)
    return rows


def bare_torch(folder: Path, device: str, batches: list[int], iters: int = 50,
               threads: int = 1) -> list[dict[str, Any]]:
    """The same model called directly on preprocessed tensors: what the device does without a server."""
    import torch
    from transformers import ResNetForImageClassification

    torch.set_num_threads(threads)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = ResNetForImageClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        with torch.inference_mode():
            for _ in range(5):
                model(pixel_values=x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(iters):
                model(pixel_values=x).logits.softmax(-1).topk(1)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        wall = time.perf_counter() - started
        rows.append({"batch": batch, "images_per_s": round(batch * iters / wall, 1),
                     "ms_per_call": round(1000 * wall / iters, 2)})
    return rows


def markdown(title: str, rows: list[dict[str, Any]], bare: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# {title}", "", ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| mode | concurrency | requests | images/s | p50 ms | p99 ms | mean batch | errors |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['images_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['mean_batch']} | {r['errors']} |" for r in rows]
    if bare:
        lines += ["", "Bare PyTorch, same model and device, preprocessed tensors (no server, no decoding):", "",
                  "| batch | images/s | ms per call |", "|---|---|---|"]
        lines += [f"| {b['batch']} | {b['images_per_s']} | {b['ms_per_call']} |" for b in bare]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--gpu", action="store_true", help="the same as --model resnet50 --device cuda")
    parser.add_argument("--model", choices=["tiny", "resnet50"], default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the engine")
    parser.add_argument("--requests", type=int, default=None, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    args = parser.parse_args()
    if args.gpu:
        args.model, args.device = "resnet50", "cuda"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        gpu = args.device.startswith("cuda")
        name = f"classify-{args.model}-{'cuda' if gpu else 'cpu'}"
        options: dict[str, Any] = {"device": args.device, "n_threads": args.threads}
        if args.model == "resnet50":
            folder = build_resnet50(tmp / "resnet50")
            options.update(model=str(folder), dtype="float16" if gpu else "float32", processor_backend="auto")
            payloads, requests, max_body = jpeg_payloads(64), args.requests or (2000 if gpu else 300), 4_000_000
            title = (f"Classification, ResNet-50 geometry (random weights), {'fp16 on CUDA' if gpu else 'fp32 on CPU'}"
                     f", engine threads {args.threads}, KServe V2 JSON")
        else:
            from llmops.engines.tiny_resnet import build_tiny_resnet

            folder = build_tiny_resnet(tmp / "tiny-resnet")
            options.update(model=str(folder))
            payloads, requests, max_body = digit_payloads(), args.requests or 600, 1_000_000
            title = f"Classification, the embedded tiny ResNet (digits), engine threads {args.threads}, KServe V2 JSON"
        rows = [row for mode in MODES for row in run_mode(tmp, mode, options, payloads, requests, args.concurrency,
                                                          max_body)]
        bare = bare_torch(folder, args.device, [1, 32, 64], iters=50 if gpu else 5,
                          threads=args.threads) if args.model == "resnet50" else []
    meta = run_meta(modes=MODES, images_per_request=1, cache="off")
    save(args.out, name, markdown(title, rows, bare, meta), {"title": title, **meta, "results": rows, "bare": bare})


if __name__ == "__main__":
    main()
