"""Precision and recall of the guardrail detectors on the labelled set in tests/data (the unit tests hold
them to a floor; this prints and records them).

    python -m bench.guardrails --out bench/results
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.pipeline.guardrails.detectors import Detector, InjectionDetector, PiiDetector

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "guardrails_labelled.jsonl"


@dataclass(frozen=True)
class Score:
    tp: int
    fp: int
    fn: int
    tn: int
    misses: tuple[str, ...]
    false_alarms: tuple[str, ...]

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def labelled(which: str, holdout: bool | None = None) -> list[dict[str, Any]]:
    """The examples of one set; `holdout` True: only those written after the rules were last tuned,
    False: only the ones they were tuned on, None: all."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["set"] == which and (holdout is None or r.get("holdout", False) == holdout)]


def evaluate(detector: Detector, rows: list[dict[str, Any]]) -> Score:
    """A positive counts as found when the detector finds a span of one of its labelled kinds (any span for
    injection); a negative with any finding is a false alarm."""
    tp = fp = fn = tn = 0
    misses, alarms = [], []
    for row in rows:
        kinds = {f.kind for f in detector.find(row["text"])}
        wanted = set(row.get("kinds", ["injection"]))
        if row["label"]:
            if kinds & wanted:
                tp += 1
            else:
                fn += 1
                misses.append(row["text"])
        elif kinds:
            fp += 1
            alarms.append(row["text"])
        else:
            tn += 1
    return Score(tp, fp, fn, tn, tuple(misses), tuple(alarms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    pii = PiiDetector(["email", "phone", "card", "iban"])
    scores = {}
    for part, holdout in (("tuning set", False), ("held-out set", True)):
        scores[f"injection (rules), {part}"] = evaluate(InjectionDetector(), labelled("injection", holdout))
        scores[f"pii (email, phone, card, iban), {part}"] = evaluate(pii, labelled("pii", holdout))
    data = DATA.relative_to(DATA.parents[2])
    lines = ["# Guardrail detectors on the labelled set", "",
             f"Data: {data}. The rules were tuned on the tuning set; the held-out set was "
             "written afterwards and not tuned on.", "",
             "| detector | examples | precision | recall | missed | false alarms |", "|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | {s.tp + s.fp + s.fn + s.tn} | {s.precision:.3f} | {s.recall:.3f} | "
                     f"{'; '.join(s.misses) or '-'} | {'; '.join(s.false_alarms) or '-'} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guardrails.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
