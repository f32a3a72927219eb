"""Every guardrail detector runs in linear time on any input, and large inputs are checked off the event loop.

Linear, shown by growth rather than by a time threshold: each detector runs over adversarial inputs (one
token repeated: newlines, '%', partial e-mails, digits, trigger words...) of n and 8n characters, and the
CPU time at 8n must stay well under the 64x a quadratic rule costs (linear measures 5-13x; the bound is 32x). Each
figure is the best of several runs of CPU time (process_time, not wall time, so other processes on the
machine do not count), and the small input is repeated 8 times per run so that it is measured in
milliseconds, not microseconds: the ratio has a 2x margin or more both ways, so noise cannot flip it."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmops.observability.metrics import Metrics
from llmops.pipeline.guardrails import DIGIT_WEIGHT, NOT_ASCII_WEIGHT, OFF_LOOP_CHARS, Guardrails, readings
from llmops.pipeline.guardrails.detectors import Detector, build_detector
from llmops.settings import GuardrailRule, GuardrailSettings

TOKENS = ["\n", " ", "\t", "%", "a", "a@", "@", ".", "a.", "@a.", "a@b.", "1", "1 ", "1-", "+1", "(1)", "-",
          "#", "## ", "##\n", "ignore ", "ignore", "you ", "stop following ", "mode on ", "DE89", "de89 ",
          "x" + "\u00e9", "<|im_start|>", "0 ", "4111", "a-1", "new ", "\r\n",
          # read several ways (look-alikes, invisible characters left out and as spaces, tags as ASCII)
          "\u200b", "ig\u200b", "forbidden\u200b", "\U000e0061", "\U000e0020", "\uff41@", "4\u200b1", "\u0430 ",
          "\u0301", "e\u0301", "\u00e9@"]
N = 2_000
GROWTH = 8
REPEAT_SMALL = 8
BOUND = 32.0  # linear: 5-13; quadratic: ~60


def rules() -> dict[str, Detector]:
    made = [GuardrailRule(name="inj", detector="injection"),
            GuardrailRule(name="pii", detector="pii", action="redact"),
            GuardrailRule(name="block", detector="blocklist", terms=["forbidden phrase", "aaa"]),
            GuardrailRule(name="re", detector="regex", patterns=[r"secret-\d{4}"])]
    return {r.name: build_detector(r) for r in made}


def cpu(detector: Detector, text: str, times: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(times):
            detector.find(text)
        best = min(best, time.process_time() - started)
    return best


def adversarial(token: str, size: int) -> str:
    return (token * (size // len(token) + 1))[:size]


@pytest.mark.parametrize("name", ["inj", "pii", "block", "re"])
def test_detectors_grow_linearly_on_adversarial_inputs(name: str) -> None:
    detector = rules()[name]
    worst = (0.0, "")
    for token in TOKENS:
        small = cpu(detector, adversarial(token, N), REPEAT_SMALL) / REPEAT_SMALL
        large = cpu(detector, adversarial(token, N * GROWTH), 1)
        ratio = large / max(small, 1e-6)
        worst = max(worst, (ratio, repr(token)))
    assert worst[0] < BOUND, f"{name}: {GROWTH}x the input cost {worst[0]:.0f}x the time on {worst[1]} repeated"


def test_the_reported_stalls_are_found_quickly_and_still_detect() -> None:
    g = Guardrails(GuardrailSettings(rules=[GuardrailRule(name="inj", detector="injection"),
                                            GuardrailRule(name="pii", detector="pii", action="redact")]), Metrics())
    assert g.check("input", "\n" * 30_000).outcome == "allow"
    assert g.check("input", "%" * 60_000).outcome == "allow"
    assert g.check("input", "%" * 60_000 + "bob@example.com").outcome == "redact"
    assert g.check("input", "\n" * 300 + "## system:\n" + "\n" * 300).outcome == "block"
    emails = " ".join(f"u{i}@example.com" for i in range(5_000))
    assert g.check("input", emails).text.count("[REDACTED:email]") == 5_000


def test_large_inputs_are_checked_in_a_worker_thread() -> None:
    g = Guardrails(GuardrailSettings(rules=[GuardrailRule(name="pii", detector="pii", action="redact")]), Metrics())
    threads: list[int] = []
    check = g.check_rules

    def spy(texts: list[str], param: str = "messages") -> list[str]:
        threads.append(threading.get_ident())
        return check(texts, param)

    g.check_rules = spy  # type: ignore[method-assign]

    async def run() -> tuple[list[str], list[str], list[str], list[str]]:
        small = await g.check_input_async(["mail bob@example.com"])
        large = await g.check_input_async(["x" * OFF_LOOP_CHARS + " bob@example.com"])
        wide = await g.check_input_async(["\u00e9" * (OFF_LOOP_CHARS // NOT_ASCII_WEIGHT) + " bob@example.com"])
        digits = await g.check_input_async(["4111 1111 1111 1112 " * (OFF_LOOP_CHARS // (20 + 16 * DIGIT_WEIGHT) + 1)])
        return small, large, wide, digits

    small, large, wide, _ = asyncio.run(run())
    assert small == ["mail [REDACTED:email]"]
    assert large[0].endswith(" [REDACTED:email]")
    assert wide[0].endswith(" [REDACTED:email]")
    assert threads[0] == threading.get_ident()  # small: on the loop's thread
    assert threads[1] != threading.get_ident()  # large: a worker thread
    assert threads[2] != threading.get_ident()  # not ASCII, 1/NOT_ASCII_WEIGHT as long: a worker thread too
    assert threads[3] != threading.get_ident()  # mostly digits, a quarter as long: a worker thread too


@given(st.text(alphabet="ab1_- .*<~`\u00e9\u0430\u4e2d", max_size=12))
def test_marked_is_its_pattern(text: str) -> None:
    """`readings.marked` finds by substring searches what its pattern finds."""
    assert readings.marked(text) == (re.search(r"[*~`<]|\w[-_]\w", text) is not None)
