"""What the `llmops eval` subcommands do (cli.py only parses, so `llmops --help` stays light)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmops.errors import ConfigError
from llmops.eval import report as reports
from llmops.eval.chart import write_chart
from llmops.eval.cli import RUN_FILE, load_run
from llmops.eval.dataset import load_rows, load_spec
from llmops.eval.runner import RESULTS, RunPlan, item_of, read_results, score_all
from llmops.eval.runner import run as run_plan
from llmops.eval.scorers import build
from llmops.eval.targets import parse_target
from llmops.settings import Pricing, load_settings

log = logging.getLogger("llmops.eval")


def _server_and_prices(args: argparse.Namespace) -> tuple[str, dict[str, Pricing]]:
    if args.config is None:
        return args.server or "http://127.0.0.1:8000/v1", {}
    settings = load_settings(args.config)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return args.server or f"http://{host}:{settings.port}/v1", {m.name: m.pricing for m in settings.models}


def run(args: argparse.Namespace) -> str:
    spec = load_spec(Path(args.spec))
    on_error = args.on_error or spec.on_error
    rows, malformed = load_rows(spec.path(args.split), on_error, args.limit)
    targets = [parse_target(t) for t in args.target]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"target names must be unique: {', '.join(names)} (give each a name=...)")
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    server, prices = _server_and_prices(args)
    folder = Path(args.out)
    scorers = [build(s, server) for s in spec.scorers]
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"spec": args.spec, "split": args.split, "server": server,
            "targets": [t.model_dump(exclude_none=True) for t in targets], "scorers": [s.label for s in scorers],
            "rows": [r.id for r in rows], "malformed_rows": [f"{spec.path(args.split)}:{m}" for m in malformed],
            "started": datetime.now(UTC).isoformat(timespec="seconds")}
    (folder / RUN_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    ran = asyncio.run(run_plan(RunPlan(folder, spec, rows, targets, scorers, server, prices, args.concurrency)))
    log.info("ran %d row(s) now; results in %s", ran, folder)
    return _write(folder, meta, args.seed)


def _write(folder: Path, meta: dict[str, Any], seed: int) -> str:
    records = read_results(folder)
    wanted = set(meta["rows"])
    records = {k: v for k, v in records.items() if k[1] in wanted}
    targets = [t["name"] for t in meta["targets"]]
    summary = reports.summarise(records, targets, meta["scorers"], seed, meta["malformed_rows"])
    return _emit(folder, summary, f"Eval {folder.name}: {Path(meta['spec']).stem} ({meta['split']})")


def _emit(folder: Path, summary: dict[str, Any], title: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    text = reports.markdown(summary, title)
    (folder / "report.md").write_text(text)
    (folder / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_chart(summary, folder / "report.png", title)
    return text


def report(args: argparse.Namespace) -> str:
    folder = Path(args.run)
    meta = load_run(folder)
    if args.rescore:
        meta = asyncio.run(_rescore(folder, meta))
    return _write(folder, meta, args.seed)


async def _rescore(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Score every stored answer again with the spec's scorers as they are now; rewrite the results."""
    spec = load_spec(Path(meta["spec"]))
    rows = {r.id: r for r in load_rows(spec.path(meta["split"]), "skip")[0]}
    scorers = [build(s, meta["server"]) for s in spec.scorers]
    records = read_results(folder)
    try:
        for record in records.values():
            row = rows.get(record["row"])
            if record.get("error") is None and row is not None:
                record["scores"], record["score_errors"] = await score_all(scorers, record["answer"], item_of(row))
    finally:
        for scorer in scorers:
            await scorer.close()
    (folder / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    meta = {**meta, "scorers": [s.label for s in scorers]}
    (folder / RUN_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _tagged(folder: Path, meta: dict[str, Any], tag: str, clash: set[str]) -> tuple[list[str], reports.Records]:
    wanted = set(meta["rows"])
    rename = {t["name"]: f"{tag}:{t['name']}" if t["name"] in clash else t["name"] for t in meta["targets"]}
    records = {(rename[t], row): {**r, "target": rename[t]} for (t, row), r in read_results(folder).items()
               if row in wanted and t in rename}
    return [rename[t["name"]] for t in meta["targets"]], records


def compare(args: argparse.Namespace) -> str:
    """Every target of RUN_B against the first target of RUN_A, on the scorers both runs have."""
    a_dir, b_dir = Path(args.run_a), Path(args.run_b)
    a_meta, b_meta = load_run(a_dir), load_run(b_dir)
    clash = {t["name"] for t in a_meta["targets"]} & {t["name"] for t in b_meta["targets"]}
    a_names, a_records = _tagged(a_dir, a_meta, "A", clash)
    b_names, b_records = _tagged(b_dir, b_meta, "B", clash)
    labels = [s for s in a_meta["scorers"] if s in b_meta["scorers"]]
    if not labels:
        raise ConfigError("the two runs share no scorer")
    targets = [a_names[0], *b_names]
    records = {**a_records, **b_records}
    summary = reports.summarise(records, targets, labels, args.seed,
                                a_meta["malformed_rows"] + b_meta["malformed_rows"])
    if args.judge:
        from llmops.eval.pairwise import judge_runs

        summary["pairwise"] = [asyncio.run(judge_runs(records, a_names[0], b, args.judge, args.rubric, args.seed))
                               for b in b_names]
    title = f"{b_dir.name} vs {a_dir.name}"
    if args.out:
        return _emit(Path(args.out), summary, title)
    return reports.markdown(summary, title)
