"""transformers' own continuous batching (`generate_batch`, paged attention) against the transformers
engine's padded dynamic batch (engines/hf_batch.py, one left-padded `generate` for requests that arrive
together), on the CPU: Gemma 3 270M, N streams at once, greedy, the same prompts; interleaved repeats, each
in the same process after one warm-up of both.

    python -m bench.hf_batching --out bench/results [--streams 16] [--max-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.report import run_meta, save, spread
from bench.run import PROMPT
from llmops.engines.base import SamplingParams, TextRequest
from llmops.engines.transformers import TransformersEngine, TransformersOptions


async def padded(engine: TransformersEngine, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    """The engine's path: N concurrent requests coalesced into one padded batch."""

    async def one(i: int, prompt: str) -> int:
        tokens = 0
        async for chunk in engine.generate(TextRequest(f"r{i}", SamplingParams(max_tokens=max_tokens, temperature=0),
                                                       prompt=prompt)):
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return time.perf_counter() - started, sum(counts)


def continuous(model: Any, tok: Any, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    """transformers' continuous batching manager over the same prompts."""
    from transformers import GenerationConfig

    inputs = [tok(p)["input_ids"] for p in prompts]
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1,
                              pad_token_id=tok.pad_token_id)
    started = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    wall = time.perf_counter() - started
    return wall, sum(len(o.generated_tokens) for o in out.values())


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    engine = TransformersEngine("bench", TransformersOptions(n_threads=a.threads, max_batch_size=a.streams,
                                                             batch_timeout_s=0.05))
    await engine.start()
    model, tok = engine._model, engine._tok  # the same weights for both paths
    prompts = [f"{PROMPT} ({i})" for i in range(a.streams)]
    await padded(engine, prompts[:2], 4)  # warm-up
    continuous(model, tok, prompts[:2], 4)
    rows: dict[str, list[float]] = {"padded dynamic batch (engine)": [], "continuous batching (generate_batch)": []}
    for rep in range(a.repeats):
        order = list(rows) if rep % 2 == 0 else list(rows)[::-1]
        for name in order:
            if name.startswith("padded"):
                wall, tokens = await padded(engine, prompts, a.max_tokens)
            else:
                wall, tokens = await asyncio.to_thread(continuous, model, tok, prompts, a.max_tokens)
            rows[name].append(tokens / wall)
            print(name, rep, round(tokens / wall, 2), "tok/s", tokens, "tokens", flush=True)
    await engine.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    rows = asyncio.run(main_async(a))
    meta = run_meta(streams=a.streams, max_tokens=a.max_tokens, repeats=a.repeats, threads=a.threads)
    padded_tps, cb_tps = rows["padded dynamic batch (engine)"], rows["continuous batching (generate_batch)"]
    ratios = [c / p for c, p in zip(cb_tps, padded_tps, strict=True)]
    lines = ["# transformers on the CPU: continuous batching vs the engine's padded batch", "",
             f"Gemma 3 270M (bf16), {a.streams} streams at once, {a.max_tokens} new tokens each, greedy, "
             f"{a.threads} threads, {a.repeats} interleaved repeats; {meta['machine']}, {meta['date']}. A 2-core "
             "machine shared with 7 other engineers' work: absolute figures are from a loaded machine, a short run.",
             "", "| path | tok/s median [min-max] |", "|---|---|"]
    lines += [f"| {name} | {spread(v, 1)} |" for name, v in rows.items()]
    lines += ["", f"continuous / padded, within each repeat: {spread(ratios)}; "
              f"kept: {'continuous batching' if statistics.median(ratios) > 1 else 'the padded dynamic batch'}."]
    save(a.out, "hf-batching", "\n".join(lines) + "\n", {"meta": meta, "rows": rows, "ratio": ratios})


if __name__ == "__main__":
    main()
