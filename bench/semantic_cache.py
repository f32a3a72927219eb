"""The semantic cache on labelled pairs (bench/data/semantic_pairs.jsonl): for each pair, the first request
is stored in an empty cache and the second looked up. Hit rate: paraphrase pairs answered from the cache;
false-hit rate: non-paraphrase pairs answered from it (a wrong answer served). Per threshold, with the
embedded MiniLM model on the CPU and the cache's own normalisation and index (in-process).

    python -m bench.semantic_cache --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from llmops.engines.embeddings import EmbeddingOptions, SentenceTransformersEngine
from llmops.pipeline.semantic_cache import MemoryIndex, SemanticCache, normalise

PAIRS = Path(__file__).parent / "data" / "semantic_pairs.jsonl"
THRESHOLDS = (0.8, 0.85, 0.9, 0.92, 0.95)


async def scores(pairs: list[dict[str, Any]]) -> list[float]:
    engine = SentenceTransformersEngine("minilm", EmbeddingOptions(n_threads=1))
    await engine.start()
    try:
        async def embed(texts: Any, deadline: float, priority: Any) -> list[list[float]]:
            return (await engine.embed(list(texts))).vectors

        out = []
        for pair in pairs:
            cache = SemanticCache(MemoryIndex(8), embed, threshold=0.0, ttl_s=60, max_entry_bytes=10_000)
            first = await cache.lookup("bench", normalise([("user", pair["a"])]), deadline=time.monotonic() + 60)
            await cache.store(first, {"answer": pair["a"]})
            second = await cache.lookup("bench", normalise([("user", pair["b"])]), deadline=time.monotonic() + 60)
            out.append(second.score)
        return out
    finally:
        await engine.close()


def table(pairs: list[dict[str, Any]], found: list[float]) -> dict[str, Any]:
    same = [s for p, s in zip(pairs, found, strict=True) if p["same"]]
    other = [s for p, s in zip(pairs, found, strict=True) if not p["same"]]
    rows = [{"threshold": t, "hit_rate": round(sum(s >= t for s in same) / len(same), 3),
             "false_hit_rate": round(sum(s >= t for s in other) / len(other), 3)} for t in THRESHOLDS]
    return {"pairs": len(pairs), "paraphrases": len(same), "non_paraphrases": len(other), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Semantic cache on {result['pairs']} labelled pairs ({result['paraphrases']} paraphrases, "
             f"{result['non_paraphrases']} near-miss non-paraphrases), all-MiniLM-L6-v2, in-process index.", "",
             "| threshold | hit rate (paraphrases) | false-hit rate (non-paraphrases) |", "|---|---|---|"]
    lines += [f"| {r['threshold']} | {r['hit_rate']:.3f} | {r['false_hit_rate']:.3f} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    result = table(pairs, asyncio.run(scores(pairs)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "semantic_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "semantic_cache.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
