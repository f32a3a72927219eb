"""The markdown table of a bench run, with ratios to the baselines of the same run."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

BASELINES = ("bare-llamacpp", "llama-cpp-python", "guide-sequential", "litserve-guide")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(report: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = report["results"]
    by = {(r["target"], r["concurrency"]): r for r in rows}
    baselines = [b for b in BASELINES if any(r["target"] == b for r in rows)]
    head = ["target", "conc", "req", "tok/s", "decode tok/s p50", "TTFT p50", "TTFT p99", "e2e p50", "e2e p99",
            "err", "rej", "peak RSS MB", *[f"tok/s vs {b}" for b in baselines]]
    lines = [f"Settings: {report['settings']}", "", f"Machine: {report['machine']}", "",
             f"Start-up to ready (s): {report['startup_s']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratios = []
        for b in baselines:
            base = by.get((b, r["concurrency"]))
            ratios.append(f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and base["tokens_per_s"] else "-")
        cells = [r["target"], r["concurrency"], r["requests"], _fmt(r["tokens_per_s"], 1), _fmt(r["decode_tps_p50"], 1),
                 _fmt(r["ttft_p50_s"], 3), _fmt(r["ttft_p99_s"], 3), _fmt(r["e2e_p50_s"]), _fmt(r["e2e_p99_s"]),
                 r["errors"], r["rejections"], _fmt(r["peak_rss_mb"], 0), *ratios]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for name, figures in report.get("scenarios", {}).items():
        lines += ["", f"Scenario {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())]
    return "\n".join(lines) + "\n"


def run_meta(**extra: Any) -> dict[str, Any]:
    """Where and when a bench ran, for the results files."""
    return {**extra, "machine": f"{platform.machine()}, {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def save(out: str, name: str, text: str, data: dict[str, Any] | None = None) -> None:
    """Write `name`.md (and `name`.json when there is data) under `out`, and print the markdown."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (folder / f"{name}.md").write_text(text)
    print(text)
