"""Decode speed of the default chat models, side by side (same method, same run), and the embedding
model's throughput at batch 1 and 32. One thread each (the shared-machine setting of the tests); greedy
decoding of a fixed prompt as a raw completion (no chat template: the same work for both models), 128
tokens, the median of 3 runs; decode tokens/s counts from the first token to the last.

    python -m bench.model_speed --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from llmops.engines.base import SamplingParams, TextRequest
from llmops.engines.embeddings import EmbeddingOptions, SentenceTransformersEngine
from llmops.engines.llamacpp import LlamaCppEngine, LlamaCppOptions
from llmops.engines.weights import EMBEDDED_GEMMA, EMBEDDED_SMOLLM2

PROMPT = "The history of the printing press begins"
TOKENS, RUNS = 128, 3
TEXTS = [f"Sentence number {i} about the weather, trains and the price of bread in a small town." for i in range(64)]


async def decode_tps(model: str) -> float:
    engine = LlamaCppEngine(model, LlamaCppOptions(model=model, n_threads=1, n_parallel=1, context_length=512))
    await engine.start()
    try:
        rates = []
        for _ in range(RUNS):
            first = last = 0.0
            tokens = 0
            req = TextRequest("bench", SamplingParams(max_tokens=TOKENS, temperature=0), prompt=PROMPT)
            async for chunk in engine.generate(req):
                if chunk.text:
                    last = time.perf_counter()
                    first = first or last
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            rates.append((tokens - 1) / (last - first))
        return round(statistics.median(rates), 1)
    finally:
        await engine.close()


async def embed_rates() -> dict[str, float]:
    engine = SentenceTransformersEngine("minilm", EmbeddingOptions(n_threads=1, batch_timeout_s=0))
    await engine.start()
    try:
        await engine.embed(TEXTS[:4])  # warm-up
        out = {}
        for batch in (1, 32):
            start = time.perf_counter()
            for i in range(0, len(TEXTS), batch):
                await engine.embed(TEXTS[i:i + batch])
            out[f"batch_{batch}_texts_per_s"] = round(len(TEXTS) / (time.perf_counter() - start), 1)
        return out
    finally:
        await engine.close()


async def run() -> dict[str, Any]:
    return {"smollm2_135m_q4_1_decode_tps": await decode_tps(EMBEDDED_SMOLLM2),
            "gemma3_270m_q4_k_m_decode_tps": await decode_tps(EMBEDDED_GEMMA),
            "minilm": await embed_rates(), "threads": 1, "tokens": TOKENS, "runs": RUNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    result = asyncio.run(run())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
