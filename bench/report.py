"""The markdown table of a bench run, with ratios to the baselines of the same run. With interleaved
repeats, a summary: per target, mode and level the median of the repeats and their spread, and each ratio
taken within a repeat (both servers measured minutes apart, started fresh) then summarized the same way."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

BASELINES = ("bare-llamacpp", "llama-cpp-python", "guide-sequential", "litserve-guide")
Key = tuple[str, str, int, int]  # target, mode, concurrency, repeat
TTFT_FIELDS = ("ttft_p50_s", "ttft_p50_first_wave_s", "ttft_p50_steady_s")  # all requests, first wave, after it


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _key(r: dict[str, Any]) -> Key:
    return r["target"], r.get("mode", "stream"), r["concurrency"], r.get("repeat", 0)


def spread(values: list[float], digits: int = 2) -> str:
    """`median [min-max]` of the repeats (just the value when there is one)."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def markdown(report: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = report["results"]
    by = {_key(r): r for r in rows}
    baselines = [b for b in BASELINES if any(r["target"] == b for r in rows)]
    head = ["target", "mode", "rep", "conc", "req", "tok/s", "decode tok/s p50", "TTFT p50", "TTFT p99", "e2e p50",
            "e2e p99", "err", "rej", "peak RSS MB", "CPU ms/tok", *[f"tok/s vs {b}" for b in baselines]]
    lines = [f"Settings: {report['settings']}", "", f"Machine: {report['machine']}", "",
             f"Start-up to ready (s): {report['startup_s']}", ""]
    if any(r.get("repeat", 0) for r in rows):
        lines += summary(rows, baselines)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        target, mode, conc, rep = _key(r)
        ratios = []
        for b in baselines:
            base = by.get((b, mode, conc, rep))
            ratios.append(f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and base["tokens_per_s"] else "-")
        cells = [target, mode, rep, conc, r["requests"], _fmt(r["tokens_per_s"], 1), _fmt(r["decode_tps_p50"], 1),
                 _fmt(r["ttft_p50_s"], 3), _fmt(r["ttft_p99_s"], 3), _fmt(r["e2e_p50_s"]), _fmt(r["e2e_p99_s"]),
                 r["errors"], r["rejections"], _fmt(r["peak_rss_mb"], 0),
                 _fmt(r.get("cpu_ms_per_token"), 1), *ratios]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    failed = [(r, kinds) for r in rows if (kinds := (r.get("extra") or {}).get("error_kinds"))]
    if failed:
        lines += ["", "Errors (requests that failed; their tokens are not counted in tok/s):"]
        lines += [f"- {r['target']} {r['mode']} rep {r.get('repeat', 0)} conc {r['concurrency']}: "
                  + "; ".join(f"{n}x {kind}" for kind, n in kinds.items()) for r, kinds in failed]
    for name, figures in report.get("scenarios", {}).items():
        lines += ["", f"Scenario {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())]
    return "\n".join(lines) + "\n"


def _paired(rows: list[dict[str, Any]], target: str, base: str, mode: str, conc: int, field: str) -> list[float]:
    """target/base of `field`, one ratio per repeat in which both were measured."""
    by = {_key(r): r for r in rows}
    out = []
    for rep in sorted({_key(r)[3] for r in rows}):
        a, b = by.get((target, mode, conc, rep)), by.get((base, mode, conc, rep))
        if a and b and a.get(field) and b.get(field):
            out.append(a[field] / b[field])
    return out


def summary(rows: list[dict[str, Any]], baselines: list[str]) -> list[str]:
    """Medians of the repeats with their [min-max], and the within-repeat ratios to the first baseline."""
    base = baselines[0] if baselines else None
    head = ["target", "mode", "conc", "repeats", "tok/s", "TTFT p50 s", "TTFT p50 first wave s", "TTFT p50 steady s",
            "CPU ms/token"]
    if base:
        head += [f"tok/s ratio vs {base}", f"TTFT p50 ratio vs {base}", "first wave ratio", "steady ratio",
                 f"CPU/token ratio vs {base}"]
    lines = ["Summary: median [min-max] of the interleaved repeats; ratios taken within each repeat. CPU ms/token: "
             "the server's CPU time (every thread) per output token, steadier than tok/s on a shared machine. "
             "TTFT first wave: each worker's first request, all sent at once to an idle server; steady: the "
             "requests after it, each sent as another finishes (the level's concurrency held).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = sorted({_key(r)[:3] for r in rows}, key=lambda k: (k[1], k[0], k[2]))
    for target, mode, conc in groups:
        mine = [r for r in rows if _key(r)[:3] == (target, mode, conc)]
        cells = [target, mode, str(conc), str(len(mine)), spread([r["tokens_per_s"] for r in mine], 1),
                 *[spread([r[f] for r in mine if r.get(f) is not None], 3) for f in TTFT_FIELDS],
                 spread([r["cpu_ms_per_token"] for r in mine if r.get("cpu_ms_per_token") is not None], 1)]
        if base:
            cells += [spread(_paired(rows, target, base, mode, conc, field))
                      for field in ("tokens_per_s", *TTFT_FIELDS, "cpu_ms_per_token")]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


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
