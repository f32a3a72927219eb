"""A run's report: per target and scorer the mean with its bootstrap 95 % CI, errors counted apart (a failed
row is never a zero), latency, tokens and cost; each target against the first (the baseline) on the rows both
answered: mean difference with its CI, sign-flip and Wilcoxon p-values, win/tie/loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmops.eval.stats import bootstrap_mean, paired

Records = dict[tuple[str, str], dict[str, Any]]


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _target_summary(name: str, records: list[dict[str, Any]], labels: Sequence[str], seed: int) -> dict[str, Any]:
    ok = [r for r in records if r.get("error") is None]
    scores: dict[str, Any] = {}
    for label in labels:
        values = [r["scores"][label] for r in ok if r["scores"].get(label) is not None]
        est = bootstrap_mean(values, seed)
        scores[label] = {"n": est.n, "mean": _num(est.mean), "low": _num(est.low), "high": _num(est.high),
                         "not_applicable": sum(1 for r in ok if r["scores"].get(label) is None and
                                               label not in r.get("score_errors", {})),
                         "scorer_errors": sum(1 for r in ok if label in r.get("score_errors", {}))}
    latencies = [r["latency_s"] for r in ok]
    costs = [r["cost_usd"] for r in ok if r.get("cost_usd") is not None]
    return {
        "name": name, "rows": len(records), "errors": len(records) - len(ok),
        "error_examples": sorted({str(r["error"]) for r in records if r.get("error")})[:3],
        "scores": scores,
        "latency_s": {"mean": _num(float(np.mean(latencies))) if latencies else None,
                      "p50": _num(float(np.percentile(latencies, 50))) if latencies else None,
                      "p95": _num(float(np.percentile(latencies, 95))) if latencies else None},
        "tokens": {"prompt": sum(r["prompt_tokens"] for r in ok),
                   "completion": sum(r["completion_tokens"] for r in ok)},
        "cost_usd": round(sum(costs), 8) if costs and len(costs) == len(ok) else None,
    }


def compare(records: Records, a: str, b: str, label: str, seed: int) -> dict[str, Any]:
    rows = sorted({row for target, row in records if target == a} & {row for target, row in records if target == b})
    pairs = [(records[(a, row)], records[(b, row)]) for row in rows]
    used = [(x["scores"][label], y["scores"][label]) for x, y in pairs
            if x.get("error") is None and y.get("error") is None
            and x["scores"].get(label) is not None and y["scores"].get(label) is not None]
    result = paired([x for x, _ in used], [y for _, y in used], seed)
    out = {"a": a, "b": b, "scorer": label, "n": result.n, "diff": _num(result.diff.mean),
           "low": _num(result.diff.low), "high": _num(result.diff.high),
           "p_sign_flip": round(result.p_sign_flip, 4), "p_wilcoxon": round(result.p_wilcoxon, 4),
           "wins": result.wins, "ties": result.ties, "losses": result.losses}
    return {**out, "better": better(out)}


def summarise(records: Records, targets: Sequence[str], labels: Sequence[str], seed: int = 0,
              malformed: Sequence[str] = ()) -> dict[str, Any]:
    by_target = {t: [r for (name, _), r in sorted(records.items()) if name == t] for t in targets}
    summary: dict[str, Any] = {
        "targets": [_target_summary(t, by_target[t], labels, seed) for t in targets],
        "comparisons": [compare(records, targets[0], b, label, seed) for b in targets[1:] for label in labels],
        "malformed_rows": list(malformed), "seed": seed,
        "method": "mean with percentile bootstrap 95% CI (10000 resamples); paired: b - a on rows both "
                  "answered, sign-flip permutation and Wilcoxon signed-rank p-values; a side is better when "
                  "the difference's CI excludes 0 and p (sign-flip) < 0.05",
    }
    return summary


def _ci(score: dict[str, Any]) -> str:
    if score["mean"] is None:
        return "n/a"
    return f"{score['mean']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"


def better(c: dict[str, Any], alpha: float = 0.05) -> str | None:
    """The better side, when the CI of the difference excludes 0 and the sign-flip test agrees; else None."""
    if c["n"] == 0 or c["low"] is None or c["p_sign_flip"] >= alpha:
        return None
    return str(c["b"]) if c["low"] > 0 else str(c["a"]) if c["high"] < 0 else None


def verdict(c: dict[str, Any]) -> str:
    if c["n"] == 0 or c["low"] is None:
        return "no paired rows"
    return f"**{c['better']} better**" if c.get("better") else "no clear difference"


def markdown(summary: dict[str, Any], title: str) -> str:
    targets = summary["targets"]
    labels = list(targets[0]["scores"]) if targets else []
    lines = [f"# {title}", "", "Mean score per target with its bootstrap 95 % CI (n = rows scored); errors are "
             "rows the target failed, never counted as zeros.", "",
             "| target | " + " | ".join(labels) + " | errors | latency p50 / p95 s | tokens in / out | cost USD |",
             "|---|" + "---|" * len(labels) + "---|---|---|---|"]
    for t in targets:
        cells = [f"{_ci(t['scores'][label])} (n={t['scores'][label]['n']})" for label in labels]
        lat, cost = t["latency_s"], t["cost_usd"]
        latency = f"{lat['p50']:.3f} / {lat['p95']:.3f}" if lat["p50"] is not None else "n/a"
        lines.append(f"| {t['name']} | " + " | ".join(cells) + f" | {t['errors']}/{t['rows']} | {latency} | "
                     f"{t['tokens']['prompt']} / {t['tokens']['completion']} | "
                     f"{'n/a' if cost is None else f'{cost:.6f}'} |")
    if summary["comparisons"]:
        lines += ["", "Paired comparison (b - a on the rows both answered):", "",
                  "| a | b | scorer | n | diff [95 % CI] | p (sign-flip) | p (Wilcoxon) | b wins/ties/losses | "
                  "verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for c in (c for c in summary["comparisons"] if c["n"]):
            diff = "n/a" if c["diff"] is None else f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
            lines.append(f"| {c['a']} | {c['b']} | {c['scorer']} | {c['n']} | {diff} | {c['p_sign_flip']:.4f} | "
                         f"{c['p_wilcoxon']:.4f} | {c['wins']}/{c['ties']}/{c['losses']} | {verdict(c)} |")
    for c in summary.get("pairwise", []):
        lines += ["", f"Pairwise judge ({c['judge']}, both orders): {c['b']} vs {c['a']}: "
                  f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses; preference for {c['b']} "
                  f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}] (0.5 = no preference), "
                  f"p (sign-flip) {c['p_sign_flip']:.4f}; {c['errors']} judge errors."]
    if summary["malformed_rows"]:
        lines += ["", f"Malformed dataset rows skipped ({len(summary['malformed_rows'])}):", ""]
        lines += [f"- {m}" for m in summary["malformed_rows"]]
    lines += ["", f"Method: {summary['method']}; seed {summary['seed']}.", ""]
    return "\n".join(lines)
