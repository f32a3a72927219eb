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

from bench.report import save
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


def labelled(which: str, round_: int | None = None) -> list[dict[str, Any]]:
    """The examples of one set, all of them or one round: 0 the examples the rules were first written
    against, 1 a held-out set written next (the rules were then revised against its misses), 2 a second
    held-out set written before that revision and never tuned on."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["set"] == which and (round_ is None or int(r.get("holdout", 0)) == round_)]


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
    for part, round_ in (("round 0 (tuning)", 0), ("round 1 (tuning, was held out)", 1),
                         ("round 2 (held out)", 2)):
        scores[f"injection (rules), {part}"] = evaluate(InjectionDetector(), labelled("injection", round_))
        scores[f"pii (email, phone, card, iban), {part}"] = evaluate(pii, labelled("pii", round_))
    data = DATA.relative_to(DATA.parents[2])
    lines = ["# Guardrail detectors on the labelled set", "",
             f"Data: {data}. Round 0: the examples the rules were written against. Round 1: written next, "
             "held out at first (injection recall 0.500, PII precision and recall 0.833), then the rules were "
             "revised against its misses. Round 2: written before that revision, never tuned on.", "",
             "| detector | examples | precision | recall | missed | false alarms |", "|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | {s.tp + s.fp + s.fn + s.tn} | {s.precision:.3f} | {s.recall:.3f} | "
                     f"{'; '.join(s.misses) or '-'} | {'; '.join(s.false_alarms) or '-'} |")
    save(args.out, "guardrails", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
