"""`llmops eval run SPEC --target ... | report RUN | compare RUN_A RUN_B`.

`run` asks every target every row of the spec's dataset (or its held-out split), scores the answers and writes
RUN/results.jsonl (one line per row as it arrives; a rerun resumes), RUN/run.json, and the report as
RUN/report.md, report.json and report.png. `compare` puts two stored runs side by side, optionally with a
pairwise LLM judge asked in both orders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"


def add_eval_parser(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate models and prompt versions on a dataset, with statistics")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    run = ev_sub.add_parser("run", help="run a dataset against one or more targets (resumable)")
    run.add_argument("spec", help="the eval spec (YAML): dataset, scorers, sampling; e.g. evals/facts.yaml")
    run.add_argument("--target", action="append", required=True, metavar="KEY=VALUE,...",
                     help="model=NAME[,name=LABEL][,prompt=ID@VERSION][,route=ROUTE][,base_url=URL]"
                          "[,api_key_env=VAR]; repeat for more targets (the first is the baseline)")
    run.add_argument("--out", required=True, help="the run's folder (rerun the same folder to resume)")
    run.add_argument("--config", help="the server's config file: its price table and default address")
    run.add_argument("--server", help="the llmops server's /v1 URL (default: from --config, else "
                                      "http://127.0.0.1:8000/v1)")
    run.add_argument("--split", choices=["dev", "heldout"], default="dev")
    run.add_argument("--limit", type=int, help="only the first N rows")
    run.add_argument("--concurrency", type=int, default=4)
    run.add_argument("--on-error", choices=["skip", "fail"], help="malformed rows (default: the spec's)")
    run.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    report = ev_sub.add_parser("report", help="rewrite a run's report from its results")
    report.add_argument("run")
    report.add_argument("--rescore", action="store_true", help="score the stored answers again with the spec's "
                        "current scorers (no target is asked again)")
    report.add_argument("--seed", type=int, default=0)
    cmp = ev_sub.add_parser("compare", help="compare two stored runs (the first is the baseline)")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--out", help="write report.md, report.json and report.png here")
    cmp.add_argument("--judge", metavar="model=NAME[,base_url=URL][,api_key_env=VAR]",
                     help="also ask this judge which answer is better, in both orders")
    cmp.add_argument("--rubric", help="the pairwise judge's rubric")
    cmp.add_argument("--seed", type=int, default=0)


def cmd_eval(args: argparse.Namespace) -> int:
    from llmops.eval import cli_commands

    command = {"run": cli_commands.run, "report": cli_commands.report, "compare": cli_commands.compare}
    summary = command[args.eval_command](args)
    print(summary)
    return 0


def load_run(folder: Path) -> dict[str, Any]:
    from llmops.errors import ConfigError

    try:
        data: dict[str, Any] = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{folder} is not an eval run ({RUN_FILE}: {exc.strerror})") from exc
    return data

