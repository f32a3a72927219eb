"""Run a dataset against targets: every (target, row) once, at most `concurrency` at a time, each result
appended to RUN/results.jsonl as it arrives. A rerun of the same folder skips the rows already answered
(failed rows are tried again; the last record of a row wins)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import openai

from llmops.eval.dataset import EvalSpec, Row
from llmops.eval.progress import Progress
from llmops.eval.scorers import Item, Scorer, ScorerError
from llmops.eval.targets import Answer, Target, TargetError, ask, client_for
from llmops.settings import Pricing

log = logging.getLogger("llmops.eval")
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class RunPlan:
    folder: Path
    spec: EvalSpec
    rows: Sequence[Row]
    targets: Sequence[Target]
    scorers: Sequence[Scorer]
    server: str | None  # the default base_url
    prices: dict[str, Pricing]  # model name → its price table (the server's config)
    concurrency: int = 4


def read_results(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(target, row id) → its last record; a torn last line (an interrupted run) is ignored."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    path = folder / RESULTS
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[(record["target"], record["row"])] = record
    return out


def item_of(row: Row) -> Item:
    question = row.input if row.input is not None else \
        "\n".join(m.content for m in row.messages or [] if m.role == "user") or json.dumps(row.variables)
    return Item(question, row.reference, row.metadata)


def cost(target: Target, model_prices: Pricing | None, answer: Answer) -> float | None:
    prompt = target.prompt_usd_per_1k if target.prompt_usd_per_1k is not None else \
        model_prices.prompt_usd_per_1k if model_prices else None
    completion = target.completion_usd_per_1k if target.completion_usd_per_1k is not None else \
        model_prices.completion_usd_per_1k if model_prices else None
    if prompt is None or completion is None:
        return None
    return (answer.prompt_tokens * prompt + answer.completion_tokens * completion) / 1000


async def score_all(scorers: Sequence[Scorer], answer: str, item: Item) -> tuple[dict[str, float | None],
                                                                                  dict[str, str]]:
    scores: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for scorer in scorers:
        try:
            scores[scorer.label] = await scorer.score(answer, item)
        except ScorerError as exc:
            scores[scorer.label] = None
            errors[scorer.label] = exc.detail()
    return scores, errors


async def run_one(plan: RunPlan, client: openai.AsyncOpenAI, target: Target, row: Row) -> dict[str, Any]:
    item = item_of(row)
    record: dict[str, Any] = {"target": target.name, "row": row.id, "question": item.question,
                              "reference": row.reference}
    try:
        answer = await ask(client, target, row, plan.spec)
    except TargetError as exc:
        return {**record, "answer": None, "error": str(exc), "scores": {}}
    scores, score_errors = await score_all(plan.scorers, answer.text, item)
    return {**record, "answer": answer.text, "error": None, "scores": scores, "score_errors": score_errors,
            "latency_s": round(answer.latency_s, 4), "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens, "finish_reason": answer.finish_reason,
            "cost_usd": cost(target, plan.prices.get(target.model), answer),
            "served_by": answer.served_by, "prompt_version": answer.prompt_version}


async def run(plan: RunPlan, progress_stream: TextIO | None = None) -> int:
    """Answer and score every row not yet done; returns how many were run now."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    done = {k for k, r in read_results(plan.folder).items() if r.get("error") is None}
    todo = [(t, r) for t in plan.targets for r in plan.rows if (t.name, r.id) not in done]
    if len(todo) < len(plan.targets) * len(plan.rows):
        log.info("resuming: %d of %d already done", len(plan.targets) * len(plan.rows) - len(todo),
                 len(plan.targets) * len(plan.rows))
    clients = {t.name: client_for(t.base_url or plan.server or "", t.api_key_env) for t in plan.targets}
    gate = asyncio.Semaphore(plan.concurrency)
    progress = Progress(len(todo), plan.folder.name, progress_stream)

    async def one(target: Target, row: Row, out: TextIO) -> None:
        async with gate:
            record = await run_one(plan, clients[target.name], target, row)
        out.write(json.dumps(record) + "\n")
        out.flush()
        progress.advance(record["error"] is not None)

    try:
        with (plan.folder / RESULTS).open("a", encoding="utf-8") as out:
            await asyncio.gather(*(one(t, r, out) for t, r in todo))
    finally:
        progress.close()
        for client in clients.values():
            await client.close()
        for scorer in plan.scorers:
            await scorer.close()
    return len(todo)
