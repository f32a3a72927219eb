"""Detectors: each finds spans in a text. Pure functions of the text, no I/O, so they run per streamed
chunk as well as on whole requests and answers.

- injection: rules for the known prompt-injection phrasings (instruction override, system-prompt
  extraction, role hijack, fake chat-template markers), plus any classifier plugged in by settings;
- pii: e-mail addresses, phone numbers, payment card numbers (13-19 digits passing the Luhn check) and
  IBANs (passing the ISO 13616 mod-97 check), each found span labelled for redaction;
- blocklist: words or phrases on word boundaries, case-insensitive;
- regex: the operator's own patterns.

Every built-in pattern runs in linear time on any input (tests/unit/test_guardrail_linear.py runs them
over adversarial inputs of growing size): an unbounded repeat is possessive (`++`, `*+`, no backtracking
into it) and, where a match could start at every character of a run (`%%%%...` before an `@`), a
lookbehind lets it start only at the run's first character; everything else is bounded ({m,n}). Line
patterns use horizontal whitespace ([ \t]) so that `^` over 30,000 newlines does not rescan the rest of
the text from every line. The operator's `regex` patterns are theirs to keep linear."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from llmops.errors import ConfigError
from llmops.settings import GuardrailRule


@dataclass(frozen=True)
class Finding:
    kind: str  # injection, email, phone, card, iban, blocklist, regex
    start: int
    end: int


class Detector(Protocol):
    def find(self, text: str) -> list[Finding]: ...


class InjectionClassifier(Protocol):
    """The pluggable part of injection detection: a model that scores a text from 0 (benign) to 1."""

    def score(self, text: str) -> float: ...


_OVERRIDE = r"(?:ignore|disregard|forget|skip|override|bypass)"
_PRIOR = r"(?:all\s+|any\s+|the\s+|your\s+|my\s+)?(?:previous|prior|above|earlier|preceding|original|initial|system)"
_RULES = r"(?:instructions?|prompts?|rules|directions|guidelines|directives|context|constraints)"
INJECTION_PATTERNS = (
    rf"\b{_OVERRIDE}\s+{_PRIOR}\s+{_RULES}",
    rf"\b{_OVERRIDE}\s+(?:all\s+|any\s+|the\s+|your\s+|these\s+|those\s+)?{_RULES}\b",
    rf"\b(?:stop|quit|cease|no\s+longer)\s+(?:following|obeying|respecting)\s+(?:all\s+|any\s+|the\s+|your\s+)?"
    rf"(?:\w+\s+)?{_RULES}",
    r"\b(?:system|admin|administrator|developer|security|safety)\s+override\b",
    r"\byou\s+(?:now\s+)?(?:have|had|are\s+under)\s+no\s+(?:rules|restrictions|limits|limitations|filters|guidelines|"
    r"content\s+polic(?:y|ies))",
    rf"\b{_OVERRIDE}\s+(?:all\s+|everything\s+)?(?:that\s+)?(?:you\s+were\s+|you've\s+been\s+)?(?:told|said)\b",
    r"\b(?:reveal|show|print|display|output|repeat|leak|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+"
    r"(?:full\s+|hidden\s+|secret\s+|initial\s+|original\s+)?(?:system\s+prompt|system\s+message|instructions|prompt)",
    r"\bwhat\s+(?:is|was|are)\s+your\s+(?:system\s+prompt|initial\s+instructions|hidden\s+instructions)",
    r"\byou\s+are\s+now\s+(?:in\s+)?(?:dan|developer\s+mode|jailbroken|unrestricted|an?\s+unfiltered)",
    r"\b(?:developer|god|jailbreak|dan)\s+mode\s+(?:enabled|activated|on(?=\s*(?:[.!,:;]|$)))",
    r"\bdo\s+anything\s+now\b",
    r"\bpretend\s+(?:that\s+)?you\s+(?:are|have)\s+no\s+(?:rules|restrictions|guidelines|filters|limits)",
    r"\b(?:act|respond|behave)\s+(?:as\s+if|like)\s+you\s+(?:have|had)\s+no\s+(?:rules|restrictions|filters)",
    r"\bnew\s+(?:system\s+)?instructions?\s*:",
    r"<\|im_start\|>[ \t\r\n]{0,64}system|\[/?INST\]|<<SYS>>",
    r"^[ \t]*+#{2,}+[ \t]*+(?:system|instruction)s?[ \t]*+:?[ \t]*+$",
)


def _possessive(pattern: str) -> str:
    r"""`\s+` -> `\s++`: every such whitespace run in these patterns is followed by a word, never by more
    whitespace, so giving none back cannot lose a match."""
    return re.sub(r"\\s\+(?![+?])", lambda m: m.group() + "+", pattern)


# What re.IGNORECASE matches to the patterns' ASCII letters, one character for one (so offsets hold): the
# upper-case letters, and the four others Unicode case-folds onto them (long s, Kelvin sign, dotless i,
# dotted capital I).
_FOLD = str.maketrans({**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)},
                       "\u017f": "s", "\u212a": "k", "\u0131": "i", "\u0130": "i"})


def _fast(pattern: str) -> tuple[re.Pattern[str], bool]:
    """The pattern for a folded text (lower-case literals, no IGNORECASE) without its leading `\\b`, and
    whether it had one: a pattern that starts with literals is then searched for their first characters
    at C speed, where a leading `\\b` or IGNORECASE made the engine try it at every position (a megabyte
    of "(1(1(1..." took 0.7 s of the injection rule's time, with the GIL held)."""
    bounded = pattern.startswith(r"\b")
    return re.compile(_possessive(pattern[2:] if bounded else pattern).lower(), re.M), bounded


class InjectionDetector:
    def __init__(self, classifier: InjectionClassifier | None = None, threshold: float = 0.5) -> None:
        self._patterns = [_fast(p) for p in INJECTION_PATTERNS]
        self._classifier, self._threshold = classifier, threshold

    def find(self, text: str) -> list[Finding]:
        folded = text.translate(_FOLD)
        found = [Finding("injection", start, end) for p, bounded in self._patterns
                 for start, end in _matches(p, folded, bounded)]
        if not found and self._classifier is not None and self._classifier.score(text) >= self._threshold:
            found.append(Finding("injection", 0, len(text)))
        return found


def _matches(pattern: re.Pattern[str], text: str, bounded: bool) -> Iterator[tuple[int, int]]:
    """`pattern`'s matches in `text`, as finditer gives them; with `bounded`, only those starting at a word
    boundary (every such pattern starts with a letter: the character before is not a word character). A
    match refused for that is searched past by one character, so one starting inside it is still found."""
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        start, end = m.span()
        if bounded and start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            pos = start + 1
            continue
        yield start, end
        pos = end if end > start else end + 1


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# starts only where a run of local-part characters starts (the lookbehind covers the whole class)
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*\.[A-Za-z]{2,}+\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.I)  # mod-97 keeps it honest
_PHONE = re.compile(r"(?<![\w+])(?<![A-Za-z]-)"  # not inside a word, nor a code like SN-2024-000123
                    r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}|\(\d{1,4}\)[ .-]?\d{2,4}|\d{2,4})"
                    r"(?:[ .-]\d{2,6}){1,5}(?!\w)|(?<![\w+])\+\d{8,15}(?!\w)")


def _cards(text: str) -> Iterable[Finding]:
    for m in _CARD.finditer(text):
        if luhn_ok(re.sub(r"\D", "", m.group())):
            yield Finding("card", m.start(), m.end())


def _phones(text: str) -> Iterable[Finding]:
    for m in _PHONE.finditer(text):
        text_ = m.group()
        digits = re.sub(r"\D", "", text_)
        marked = text_.startswith(("+", "("))  # an international prefix or an area code in brackets
        if (9 if not marked else 8) <= len(digits) <= 15 and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text_):
            yield Finding("phone", m.start(), m.end())


PII_FINDERS: dict[str, Callable[[str], Iterable[Finding]]] = {
    "email": lambda t: (Finding("email", m.start(), m.end()) for m in _EMAIL.finditer(t)),
    "iban": lambda t: (Finding("iban", m.start(), m.end()) for m in _IBAN.finditer(t) if iban_ok(m.group())),
    "card": _cards,
    "phone": _phones,
}


class PiiDetector:
    def __init__(self, entities: Iterable[str]) -> None:
        order = ("email", "iban", "card", "phone")  # the more specific first: a card is not also a phone
        self._finders = [PII_FINDERS[e] for e in order if e in set(entities)]

    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        for finder in self._finders:  # each finder's spans come in order: one merge pass, not a pairwise check
            found = _merge_free(found, list(finder(text)))
        return found


def _merge_free(kept: list[Finding], new: list[Finding]) -> list[Finding]:
    """`kept` (sorted, disjoint) plus the spans of `new` (sorted) that overlap none of them, sorted."""
    out: list[Finding] = []
    i = 0
    for f in new:
        while i < len(kept) and kept[i].end <= f.start:
            out.append(kept[i])
            i += 1
        clashes = (i < len(kept) and kept[i].start < f.end) or (bool(out) and out[-1].end > f.start)
        if not clashes:
            out.append(f)
    return out + kept[i:]


class PatternDetector:
    def __init__(self, kind: str, patterns: Iterable[str], flags: int = 0) -> None:
        self.kind = kind
        self._patterns = [re.compile(p, flags) for p in patterns]

    def find(self, text: str) -> list[Finding]:
        return [Finding(self.kind, m.start(), m.end()) for p in self._patterns for m in p.finditer(text)
                if m.end() > m.start()]


def _load_classifier(path: str) -> InjectionClassifier:
    module, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"guardrail classifier {path!r} cannot be loaded: {exc}") from exc
    classifier: InjectionClassifier = factory()
    return classifier


def build_detector(rule: GuardrailRule) -> Detector:
    if rule.detector == "injection":
        classifier = _load_classifier(rule.classifier) if rule.classifier else None
        return InjectionDetector(classifier, rule.threshold)
    if rule.detector == "pii":
        return PiiDetector(rule.entities)
    if rule.detector == "blocklist":
        return PatternDetector("blocklist", [rf"(?<!\w){re.escape(t)}(?!\w)" for t in rule.terms], re.I)
    return PatternDetector("regex", rule.patterns)
