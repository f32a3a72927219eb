"""The semantic cache on labelled pairs (bench/data/semantic_pairs.jsonl): for each pair, the first request
is stored in an empty cache and the second looked up. Hit rate: paraphrase pairs answered from the cache;
false-hit rate: non-paraphrase pairs answered from it (a wrong answer served). Per threshold, with the
embedded MiniLM model on the CPU and the cache's own normalisation and index (in-process), without the
precision guard and with it (pipeline/cache_guard.py: its default rule for content words, and the others
for comparison), in the same run over the same embeddings. Each pair has a class (what the near miss
changes, or how the paraphrase rewords); the classes' table is at the default threshold. No timing: the
figures are counts.

    python -m bench.semantic_cache --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, get_args

from llmops.engines.embeddings import EmbeddingOptions, SentenceTransformersEngine
from llmops.pipeline.cache_guard import WordRule
from llmops.pipeline.semantic_cache import GUARD_RULE, MemoryIndex, SemanticCache, normalise
from llmops.settings import SemanticCacheSettings

PAIRS = Path(__file__).parent / "data" / "semantic_pairs.jsonl"
THRESHOLDS = (0.8, 0.85, 0.9, 0.92, 0.95)
RULES: tuple[WordRule, ...] = get_args(WordRule)  # off, swap, substitution, any
NO_GUARD = "none"


async def verdicts(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair: the second request's score against the first's entry, and, per guard rule, whether the
    guard let the entry answer (the lookup runs below every threshold: the threshold is applied after)."""
    engine = SentenceTransformersEngine("minilm", EmbeddingOptions(n_threads=1))
    await engine.start()
    memo: dict[str, list[float]] = {}
    try:
        async def embed(texts: Any, deadline: float, priority: Any) -> list[list[float]]:
            missing = [t for t in texts if t not in memo]
            if missing:
                memo.update(zip(missing, (await engine.embed(missing)).vectors, strict=True))
            return [memo[t] for t in texts]

        out = []
        for pair in pairs:
            found: dict[str, Any] = {}
            for rule in (NO_GUARD, *RULES):
                cache = SemanticCache(MemoryIndex(8), embed, threshold=-1.0, ttl_s=60, max_entry_bytes=10_000,
                                      guard=None if rule == NO_GUARD else rule)
                first = await cache.lookup("bench", normalise([("user", pair["a"])]), deadline=0.0)
                await cache.store(first, {"answer": pair["a"]})
                second = await cache.lookup("bench", normalise([("user", pair["b"])]), deadline=0.0)
                found[rule] = second.body is not None
                if rule == NO_GUARD:
                    found["score"] = second.score
                elif rule == GUARD_RULE:
                    found["refused"] = second.refused[0] if second.refused else None
            out.append(found)
        return out
    finally:
        await engine.close()


def rates(pairs: list[dict[str, Any]], found: list[dict[str, Any]], threshold: float, rule: str) -> dict[str, float]:
    def rate(same: bool) -> float:
        chosen = [f for p, f in zip(pairs, found, strict=True) if p["same"] is same]
        return round(sum(f["score"] >= threshold and f[rule] for f in chosen) / len(chosen), 3)

    return {"hit_rate": rate(True), "false_hit_rate": rate(False)}


def table(pairs: list[dict[str, Any]], found: list[dict[str, Any]], default: float) -> dict[str, Any]:
    rows = [{"threshold": t, **{rule: rates(pairs, found, t, rule) for rule in (NO_GUARD, *RULES)}}
            for t in THRESHOLDS]
    classes: dict[str, dict[str, Any]] = defaultdict(lambda: {"pairs": 0, NO_GUARD: 0, GUARD_RULE: 0})
    for pair, f in zip(pairs, found, strict=True):
        row = classes[f"{'paraphrase' if pair['same'] else 'near miss'}: {pair.get('class', 'unclassed')}"]
        row["pairs"] += 1
        for rule in (NO_GUARD, GUARD_RULE):
            row[rule] += f["score"] >= default and f[rule]
    missed = [{"a": p["a"], "b": p["b"], "score": round(f["score"], 3), "refused": f["refused"]}
              for p, f in zip(pairs, found, strict=True) if p["same"] and f["score"] >= default and not f[GUARD_RULE]]
    passing = [{"a": p["a"], "b": p["b"], "score": round(f["score"], 3)}
               for p, f in zip(pairs, found, strict=True) if not p["same"] and f[GUARD_RULE]]
    return {"pairs": len(pairs), "paraphrases": sum(p["same"] for p in pairs),
            "non_paraphrases": sum(not p["same"] for p in pairs), "default_threshold": default,
            "guard_rule": GUARD_RULE, "rows": rows, "classes": dict(sorted(classes.items())),
            "paraphrases_refused_at_default": missed,
            "near_misses_the_guard_passes": sorted(passing, key=lambda m: -m["score"])[:5]}


def markdown(result: dict[str, Any]) -> str:
    rule, default = result["guard_rule"], result["default_threshold"]
    lines = [f"Semantic cache on {result['pairs']} labelled pairs ({result['paraphrases']} paraphrases, "
             f"{result['non_paraphrases']} near-miss non-paraphrases), all-MiniLM-L6-v2, in-process index, "
             f"without the precision guard and with it (rule `{rule}`, the default), same run, same embeddings. "
             "Each cell: hit rate (paraphrases answered) / false-hit rate (near misses answered).", "",
             f"| threshold | no guard | guard (`{rule}`) | " + " | ".join(f"guard, `{r}`" for r in RULES if r != rule)
             + " |", "|---|---|---|" + "---|" * (len(RULES) - 1)]
    for row in result["rows"]:
        mark = " (default)" if row["threshold"] == default else ""
        cells = [row[NO_GUARD], row[rule], *(row[r] for r in RULES if r != rule)]
        lines.append(f"| {row['threshold']}{mark} | "
                     + " | ".join(f"{c['hit_rate']:.3f} / {c['false_hit_rate']:.3f}" for c in cells) + " |")
    lines += ["", "The guard's rules were written with these pairs in view: its false-hit rate here is in-sample, "
              "and the threshold's margin over the near misses it lets through (below) is what covers the rest.",
              "", f"By class at the default threshold {default}: pairs answered from the cache.", "",
              f"| class | pairs | no guard | guard (`{rule}`) |", "|---|---|---|---|"]
    lines += [f"| {name} | {c['pairs']} | {c[NO_GUARD]} | {c[rule]} |" for name, c in result["classes"].items()]
    lines += ["", f"Paraphrases the guard refuses at {default}:", ""]
    lines += [f"- {m['a']!r} / {m['b']!r} ({m['score']}, {m['refused']})"
              for m in result["paraphrases_refused_at_default"]] or ["- none"]
    lines += ["", "The near misses the guard lets through that score highest (the threshold's margin):", ""]
    lines += [f"- {m['a']!r} / {m['b']!r} ({m['score']})" for m in result["near_misses_the_guard_passes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    result = table(pairs, asyncio.run(verdicts(pairs)), SemanticCacheSettings().threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "semantic_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "semantic_cache.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
