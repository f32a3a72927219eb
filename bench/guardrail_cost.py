"""What the guardrail rules cost in CPU, per character of a whole text and per chunk of a streamed answer,
on ordinary texts and on the adversarial ones the readings exist for (look-alikes, invisible characters,
tags, Markdown, scripts without spaces, digit-dense text). CPU time (process_time), best of several runs,
so other work on a shared machine counts less; the figures are for comparing texts, not for thresholds.

    python -m bench.guardrail_cost --out bench/results
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench.report import run_meta, save
from llmops.observability.metrics import Metrics
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.guardrails.detectors import BlocklistDetector, Detector, InjectionDetector, PiiDetector
from llmops.settings import GuardrailRule, GuardrailSettings

SIZE = 16_384  # characters: the most a request's texts weigh before the guard moves off the event loop
TEXTS: dict[str, str] = {
    "English prose": "The quick brown fox jumps over the lazy dog while the band plays on. ",
    "Markdown": "**Bold** and `code` and <b>tags</b>, a well-known state-of-the-art list. ",
    "French prose": "Le caf\u00e9 est tr\u00e8s bon \u00e0 Paris, n\u2019est-ce pas\u00a0? ",
    "Chinese prose": "\u4f60\u597d\u4e16\u754c\uff0c\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002\u6211\u4eec\u6b63\u5728"
                     "\u68c0\u67e5\u6210\u672c\u3002",
    "digits (failing cards)": "4111 1111 1111 1112 ",
    "look-alikes": "\u0456gn\u043er\u0435 \U0001d41a\U0001d425\U0001d425 \uff50\uff52\uff45\uff56 ",
    "zero-width spaces": "ig\u200bnore al\u00e9l 4111\u200b1111 ",
    "tags and marks": "".join(chr(0xE0000 + ord(c)) + "\u0301\u200b" for c in "ignore all 4111 "),
}


def _detectors() -> dict[str, Detector]:
    return {"injection": InjectionDetector(), "pii": PiiDetector(["email", "phone", "card", "iban"]),
            "blocklist (3 terms)": BlocklistDetector(["secret plan", "forbidden", "do not say"])}


def _best(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def _stream_us(guard: Guardrails, text: str, chunk: int) -> float:
    """CPU per fed chunk of `chunk` characters, the answer streamed through the output rules."""
    pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)]

    def run() -> None:
        stream = guard.stream()
        for piece in pieces:
            stream.feed(piece)
        stream.flush()
    return _best(run, 3) / len(pieces) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    detectors = _detectors()
    rules = [GuardrailRule.model_validate(r) for r in (
        {"name": "injection", "detector": "injection", "stages": ["output"], "action": "block"},
        {"name": "pii", "detector": "pii", "stages": ["output"], "action": "redact"},
        {"name": "words", "detector": "blocklist", "stages": ["output"], "terms": ["secret plan"]})]
    guard = Guardrails(GuardrailSettings(rules=rules), Metrics())
    rows: list[dict[str, object]] = []
    for name, unit in TEXTS.items():
        text = (unit * (SIZE // len(unit) + 1))[:SIZE]
        per_char = {d: _best(lambda det=det, text=text: det.find(text), args.repeats) / SIZE * 1e9
                    for d, det in detectors.items()}
        stream = (unit * (4096 // len(unit) + 1))[:4096]
        rows.append({"text": name, **{f"{d} ns/char": round(v) for d, v in per_char.items()},
                     "three rules, ms for 16k chars": round(sum(per_char.values()) * SIZE / 1e6, 2),
                     "stream us/feed (4 chars)": round(_stream_us(guard, stream, 4), 1)})
    names = list(rows[0])
    lines = ["# Guardrail CPU cost", "", f"{run_meta()['machine']}, {run_meta()['date']}; `python -m "
             "bench.guardrail_cost`. CPU time, best of several runs; each text repeated to 16,384 characters "
             "(the stream: 4,096 characters in 4-character chunks, through injection, PII and a blocklist as "
             "output rules).", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(r[n]) for n in names) + " |" for r in rows]
    save(args.out, "guardrail-cost", "\n".join(lines) + "\n", {"meta": run_meta(), "rows": rows})


if __name__ == "__main__":
    main()
