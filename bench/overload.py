"""The overload scenario alone, repeated: how fast are refusals answered under a 10x burst (scenarios.overload:
the server filled to slots + queue, then a burst of 9x that plus 50 sequential probes). The repeats show the
spread, which on a shared machine is most of the story.

    python -m bench.overload --repeats 3 --label after [--slots 16] [--out bench/results]

Run it with PYTHONPATH pointing at the sources to measure (the server is `python -m llmops serve`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from bench import scenarios

KEYS = ("rejection_latency_p50_ms", "rejection_latency_p99_ms", "burst_rejection_latency_p99_ms", "admitted",
        "rejected", "admitted_completed", "deadline_misses", "other_errors", "wall_s")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}", "", "| label | run | " + " | ".join(KEYS) + " |",
             "|---|---|" + "---|" * len(KEYS)]
    for label, runs in report["runs"].items():
        for i, run in enumerate(runs, 1):
            lines.append(f"| {label} | {i} | " + " | ".join(str(run[k]) for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--label", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--port", type=int, default=18090)
    a = p.parse_args()
    out = Path(a.out)
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = out / "overload.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                         "load_avg_at_end": os.getloadavg()}
    runs = report["runs"].setdefault(a.label, [])
    for _ in range(a.repeats):
        run = scenarios.overload(a.threads, a.slots, a.port, tmp)
        print(a.label, run, flush=True)
        runs.append(run)
    path.write_text(json.dumps(report, indent=2))
    (out / "overload.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
