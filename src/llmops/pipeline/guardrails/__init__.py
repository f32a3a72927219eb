"""Guardrails as pipeline stages with typed outcomes at named hook points: `input` (before the request
reaches a model), `output` (the whole answer) and per streamed chunk (`StreamGuard`, the same output rules
applied as text flows, holding back only a short tail so a match split across chunks is still caught).

Each rule's action comes from settings: block → ContentFiltered (400 content_filter; mid-stream, a final
error event), redact → the span replaced by `[REDACTED:<kind>]`, flag → let through. Every finding is
counted in `llmops_guardrail_actions_total{rule,stage,action}` and logged (rule, stage, kinds; never the
text).

The detectors are linear-time, but a large input still costs milliseconds of CPU: `check_input_async` and
`check_output_async` run the same checks in a worker thread when the text weighs more than
`OFF_LOOP_CHARS` (`_weight`: a character not ASCII weighs NOT_ASCII_WEIGHT, its readings cost as much, and
an ASCII digit 1 + DIGIT_WEIGHT), so
one big request cannot stall the event loop (and /health) for everyone else. The
pipeline calls those from async code; the sync `check_input`/`check_output` stay for small texts and
for the per-chunk stream guard (whose pending text is bounded)."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Literal

from llmops.errors import ContentFiltered
from llmops.observability.metrics import Metrics
from llmops.pipeline.accounting import CHARS_PER_TOKEN
from llmops.pipeline.guardrails import readings
from llmops.pipeline.guardrails.detectors import Detector, build_detector
from llmops.pipeline.guardrails.readings import Finding
from llmops.settings import GuardrailRule, GuardrailSettings, Stage

log = logging.getLogger("llmops.guardrails")
Outcome = Literal["allow", "redact", "block"]
HOLD_CHARS = 64  # a streamed tail kept back until the next chunk, and the word it begins in (_word_start)
LONGEST_HELD = 1024  # a finding still running at the end of the streamed text is held back whole up to this long
UNSEEN_SHARE = 8  # characters a reader does not see count as 1/8 of one in the stream guard's held tail
OFF_LOOP_CHARS = 16_384  # texts that weigh more are checked in a worker thread by the *_async methods
NOT_ASCII_WEIGHT = 16  # a text not ASCII is read several ways (readings.read): up to 17x the CPU
DIGIT_WEIGHT = 4  # an ASCII digit weighs this much more: the PII rule looks at the windows around digits
_NO_DIGITS = bytes.maketrans(b"", b"")


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    text: str  # redacted when outcome is redact
    findings: tuple[tuple[GuardrailRule, Finding], ...] = ()


def redact(text: str, findings: list[Finding]) -> str:
    out, last = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        if f.start < last:  # within the span before: what it goes on past is redacted with it
            last = max(last, f.end)
            continue
        out += [text[last:f.start], f"[REDACTED:{f.kind}]"]
        last = f.end
    return "".join(out) + text[last:]


class Guardrails:
    def __init__(self, settings: GuardrailSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self._rules: list[tuple[GuardrailRule, Detector]] = [(r, build_detector(r)) for r in settings.rules]
        self._stages = frozenset(stage for rule, _ in self._rules for stage in rule.stages)  # any rule's
        if any(rule.detector != "regex" for rule, _ in self._rules):
            readings.prepare()  # the reading tables made at start-up, not by the first request that needs them

    def active(self, stage: Stage) -> bool:
        return stage in self._stages

    def check(self, stage: Stage, text: str, record: bool = True) -> Verdict:
        """Run every rule of `stage` over `text`; the strongest action wins (block > redact > allow)."""
        if stage not in self._stages:  # no rule to run (nothing configured): allowed as it is
            return Verdict("allow", text, ())
        outcome: Outcome = "allow"
        hits: list[tuple[GuardrailRule, Finding]] = []
        for rule, detector in self._rules:
            if stage not in rule.stages:
                continue
            found = detector.find(text)
            hits += [(rule, f) for f in found]
            if found and rule.action == "block":
                outcome = "block"
            elif found and rule.action == "redact" and outcome == "allow":
                outcome = "redact"
        if record:
            self.record(stage, hits)
        if outcome == "redact":
            text = redact(text, [f for rule, f in hits if rule.action == "redact"])
        return Verdict(outcome, text, tuple(hits))

    def record(self, stage: Stage, hits: list[tuple[GuardrailRule, Finding]]) -> None:
        """One metric increment and one log line per rule that found something."""
        by_rule: dict[str, tuple[GuardrailRule, set[str]]] = {}
        for rule, f in hits:
            by_rule.setdefault(rule.name, (rule, set()))[1].add(f.kind)
        for rule, kinds in by_rule.values():
            self.metrics.guardrail_actions.labels(rule.name, stage, rule.action).inc()
            log.info("guardrail %s %s at %s: %s", rule.name, rule.action, stage, ",".join(sorted(kinds)))

    def check_input(self, texts: list[str], param: str = "messages", ids: int = 0) -> list[str]:
        """The input limits, then the input rules; the texts as the model should see them. A refusal names
        `param`, the request field the texts came from."""
        self.check_limits(texts, param, ids)
        return self.check_rules(texts, param)

    def check_limits(self, texts: list[str], param: str = "messages", ids: int = 0) -> None:
        """`max_input_chars` over the texts; `max_input_tokens` over the texts (about 4 characters a token)
        and `ids`, token ids given as such (embeddings' token-array inputs), one for one."""
        total = sum(len(t) for t in texts)
        limit = self.settings.max_input_chars
        if limit is not None and total > limit:
            raise ContentFiltered(f"the input is {total} characters; this server accepts at most {limit}",
                                  param=param)
        token_limit = self.settings.max_input_tokens
        tokens = -(-total // CHARS_PER_TOKEN) + ids
        if token_limit is not None and tokens > token_limit:
            raise ContentFiltered(f"the input is about {tokens} tokens; this server accepts at most "
                                  f"{token_limit}", param=param)

    def check_rules(self, texts: list[str], param: str = "messages") -> list[str]:
        """The input rules alone; the texts as the model should see them."""
        out = []
        for text in texts:
            verdict = self.check("input", text)
            if verdict.outcome == "block":
                raise ContentFiltered(_blocked("input", verdict), param=param)
            out.append(verdict.text)
        if len(texts) > 1:
            self._check_across(texts, param)
        return out

    def _check_across(self, texts: list[str], param: str) -> None:
        """Blocking injection rules over the messages together: a phrase split across two ("Ignore all
        previous" then "instructions") is in neither alone. Only those: PII or a term found across a
        boundary would be two halves of different things."""
        joined: str | None = None
        for rule, detector in self._rules:
            if "input" not in rule.stages or rule.action != "block" or rule.detector != "injection":
                continue
            joined = "\n".join(texts) if joined is None else joined
            found = detector.find(joined)
            if found:
                self.record("input", [(rule, f) for f in found])
                raise ContentFiltered(f"the input was blocked by guardrail {rule.name}", param=param)

    def check_output(self, text: str) -> str:
        verdict = self.check("output", text)
        if verdict.outcome == "block":
            raise ContentFiltered(_blocked("output", verdict))
        return verdict.text

    async def check_input_async(self, texts: list[str], param: str = "messages", ids: int = 0) -> list[str]:
        """`check_input`, the rules in a worker thread when the texts are large (see the module docstring)."""
        self.check_limits(texts, param, ids)
        return await self.check_rules_async(texts, param)

    async def check_rules_async(self, texts: list[str], param: str = "messages") -> list[str]:
        """`check_rules`, in a worker thread when the texts are large."""
        if not self.active("input") or sum(map(_weight, texts)) <= OFF_LOOP_CHARS:
            return self.check_rules(texts, param)
        return await asyncio.to_thread(self.check_rules, texts, param)

    async def check_output_async(self, text: str) -> str:
        """`check_output`, in a worker thread when the text is large."""
        if not self.active("output") or _weight(text) <= OFF_LOOP_CHARS:
            return self.check_output(text)
        return await asyncio.to_thread(self.check_output, text)

    def stream(self) -> StreamGuard:
        return StreamGuard(self)


def _weight(text: str) -> int:
    """What checking `text` costs, in ASCII characters' worth (markup is read a second time, as rendered; a
    digit weighs 1 + DIGIT_WEIGHT: 16k characters of failing card numbers took 10 ms, three times prose)."""
    if text.isascii():
        weight = len(text) + DIGIT_WEIGHT * (len(text) - len(text.encode().translate(_NO_DIGITS, b"0123456789")))
    else:
        weight = len(text) * NOT_ASCII_WEIGHT
    return weight * 2 if readings.marked(text) else weight


def _hold_start(text: str) -> int:
    """Where the held tail starts: HOLD_CHARS characters back, counting those a reader does not see at one
    UNSEEN_SHARE of a character (`readings.unseen_runs`: a phrase's words may stand apart by many blanks or
    invisible characters, and its letters carry many marks: "Ignore", 70 zero-width spaces, "all previous
    instructions" is held whole; a tail of nothing but them is not held a kilobyte at a time, each chunk
    searching it again), at most LONGEST_HELD back; then at the start of the word that falls in
    (`_word_start`)."""
    low = max(0, len(text) - LONGEST_HELD)
    need, end = HOLD_CHARS * UNSEEN_SHARE, len(text)  # in UNSEEN_SHARE-ths of a character seen
    for start, stop in reversed(readings.unseen_runs(text, low)):
        seen = (end - stop) * UNSEEN_SHARE
        if seen >= need:
            break
        need -= seen
        if stop - start >= need:
            return _word_start(text, stop - need)
        need -= stop - start
        end = start
    return _word_start(text, max(low, end - -(-need // UNSEEN_SHARE)))


def _word_start(text: str, cut: int) -> int:
    """`cut`, moved back to the start of the word it falls in (a run of characters that are neither spaces
    nor of a script written without spaces, where each character is a word), if that is at most LONGEST_HELD
    back: an address is found only once it is whole (an e-mail's top-level domain), so a long one not yet
    found must not be sent in part. A longer word is cut where it is (see `StreamGuard.feed`)."""
    if cut == 0 or cut >= len(text) or _BREAK.match(text, cut - 1) or _BREAK.match(text, cut):
        return cut
    low = max(0, cut - LONGEST_HELD)
    before = text[low:cut]
    if before.isascii():
        space = max(before.rfind(" "), before.rfind("\n"), before.rfind("\t"))
    else:
        last = _BREAK.search(before[::-1])
        space = len(before) - 1 - last.start() if last is not None else -1
    if space >= 0:
        return low + space + 1
    return 0 if low == 0 else cut


# what ends a word: a space (a zero-width one too), CJK punctuation, or a character of a script written
# without spaces (each is a word of its own)
_BREAK = re.compile(f"[\\s\u180e\u200b\u3000-\u303f\uff01-\uff65{readings.NO_SPACES}]")


def _blocked(stage: str, verdict: Verdict) -> str:
    rules = sorted({rule.name for rule, _ in verdict.findings if rule.action == "block"})
    return f"the {stage} was blocked by guardrail {', '.join(rules)}"


class StreamGuard:
    """The output rules over a stream: `feed` each chunk and send what it returns; `flush` at the end."""

    def __init__(self, guardrails: Guardrails) -> None:
        self._g = guardrails
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending += text
        verdict = self._g.check("output", self._pending, record=False)
        if verdict.outcome == "block":
            self._g.record("output", list(verdict.findings))
            raise ContentFiltered(_blocked("output", verdict))
        cut = _hold_start(self._pending)
        for _, f in verdict.findings:  # never cut through a finding: it is redacted whole, later...
            if f.start < cut < f.end and cut - f.start <= LONGEST_HELD:
                cut = f.start
        if cut == 0:
            return ""
        # ...unless it is longer than LONGEST_HELD (an address whose last label goes on and on): held whole,
        # it would be searched again with every chunk (quadratic, on the event loop: 46 s for 64 K letters
        # streamed 4 at a time). What has come of it is redacted now, the rest searched afresh.
        done = [(rule, f if f.end <= cut else Finding(f.kind, f.start, cut))
                for rule, f in verdict.findings if f.start < cut]  # counted once, when sent
        self._g.record("output", done)
        emitted = redact(self._pending[:cut], [f for rule, f in done if rule.action == "redact"])
        self._pending = self._pending[cut:]
        return emitted

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return self._g.check_output(rest) if rest else ""
