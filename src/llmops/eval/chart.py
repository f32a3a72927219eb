"""The report as a picture: mean score per scorer and target with 95 % CI whiskers; each comparison's mean
difference with its CI against zero; latency and cost per target side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.errors import ConfigError


def write_chart(summary: dict[str, Any], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError("the chart needs matplotlib: pip install 'llmops[eval]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = summary["targets"]
    labels = list(targets[0]["scores"]) if targets else []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]})
    _scores(axes[0], targets, labels)
    _differences(axes[1], summary["comparisons"])
    _costs(axes[2], targets)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scores(ax: Any, targets: list[dict[str, Any]], labels: list[str]) -> None:
    width = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        xs: list[float] = []
        means: list[float] = []
        errs: list[list[float]] = [[], []]
        for j, label in enumerate(labels):
            s = t["scores"][label]
            if s["mean"] is None:
                continue
            xs.append(j + i * width)
            means.append(s["mean"])
            errs[0].append(s["mean"] - s["low"])
            errs[1].append(s["high"] - s["mean"])
        bars = ax.bar(xs, means, width, yerr=errs, capsize=4, label=f"{t['name']} ({t['errors']} errors)")
        for bar, mean in zip(bars, means, strict=True):  # the value at the bar's foot, clear of the whiskers
            ax.text(bar.get_x() + bar.get_width() / 2, 0.01, f"{mean:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean score (95 % CI)")
    ax.set_title("Score per scorer")
    ax.legend(fontsize=8)


def _differences(ax: Any, comparisons: list[dict[str, Any]]) -> None:
    shown = [c for c in comparisons if c["diff"] is not None]
    names = [f"{c['b']} - {c['a']}\n{c['scorer']} (p={c['p_sign_flip']:.3g})" for c in shown]
    for y, c in enumerate(shown):
        colour = {c["b"]: "tab:green", c["a"]: "tab:red"}.get(c.get("better") or "", "tab:gray")
        ax.errorbar(c["diff"], y, xerr=[[c["diff"] - c["low"]], [c["high"] - c["diff"]]], fmt="o",
                    color=colour, capsize=5)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), names, fontsize=8)
    ax.set_ylim(-0.5, max(0.5, len(shown) - 0.5))
    ax.invert_yaxis()
    ax.set_xlabel("paired difference in mean score (95 % CI)")
    ax.set_title("Difference against the baseline (green/red: called better/worse)" if shown else
                 "No comparison (one target)", fontsize=9)


def _costs(ax: Any, targets: list[dict[str, Any]]) -> None:
    names = [t["name"] for t in targets]
    p50 = [t["latency_s"]["p50"] or 0 for t in targets]
    p95 = [t["latency_s"]["p95"] or 0 for t in targets]
    ys = range(len(names))
    ax.barh([y - 0.2 for y in ys], p50, 0.4, label="p50", color="tab:blue")
    ax.barh([y + 0.2 for y in ys], p95, 0.4, label="p95", color="tab:orange")
    labels = [f"{t['name']}\ncost {_usd(t['cost_usd'])}\n{t['tokens']['completion']} tokens out" for t in targets]
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency per row, s")
    ax.set_title("Latency and cost")
    ax.legend(fontsize=8)


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"USD {value:.6f}"
