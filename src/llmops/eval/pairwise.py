"""Pairwise LLM-as-judge over two targets' stored answers: for each row both answered, the judge is asked
(a, b) and (b, a); b's preference is 1 (better in both orders), 0 (worse in both), 0.5 otherwise. Reported as
win/tie/loss with the mean preference, its bootstrap CI and a sign-flip p-value against no preference."""

from __future__ import annotations

import asyncio
from typing import Any

from llmops.eval.models import DEFAULT_RUBRIC, pairwise
from llmops.eval.scorers import Item, ScorerError
from llmops.eval.stats import bootstrap_mean, sign_flip_p
from llmops.eval.targets import client_for, parse_target

Records = dict[tuple[str, str], dict[str, Any]]


async def judge_runs(records: Records, a: str, b: str, judge: str, rubric: str | None, seed: int,
                     concurrency: int = 4) -> dict[str, Any]:
    spec = parse_target(judge)
    client = client_for(spec.base_url or "http://127.0.0.1:8000/v1", spec.api_key_env)
    rows = sorted({row for t, row in records if t == a} & {row for t, row in records if t == b})
    pairs = [(records[(a, r)], records[(b, r)]) for r in rows]
    pairs = [(x, y) for x, y in pairs if x.get("error") is None and y.get("error") is None]
    gate = asyncio.Semaphore(concurrency)

    async def one(x: dict[str, Any], y: dict[str, Any]) -> float | None:
        item = Item(x["question"], x.get("reference"))
        async with gate:
            try:
                return await pairwise(client, spec.model, rubric or DEFAULT_RUBRIC, item, y["answer"], x["answer"])
            except ScorerError:
                return None

    try:
        results = await asyncio.gather(*(one(x, y) for x, y in pairs))
    finally:
        await client.close()
    prefs = [p for p in results if p is not None]
    est = bootstrap_mean(prefs, seed)
    return {"judge": spec.model, "a": a, "b": b, "n": len(prefs), "errors": len(results) - len(prefs),
            "wins": sum(p > 0.5 for p in prefs), "ties": sum(p == 0.5 for p in prefs),
            "losses": sum(p < 0.5 for p in prefs), "mean": est.mean, "low": est.low, "high": est.high,
            "p_sign_flip": sign_flip_p([p - 0.5 for p in prefs], seed)}
