"""Detectors: each finds spans in a text. Pure functions of the text, no I/O, so they run per streamed
chunk as well as on whole requests and answers.

- injection: rules for the known prompt-injection phrasings (instruction override, system-prompt
  extraction, role hijack, fake chat-template markers), plus any classifier plugged in by settings;
- pii: e-mail addresses, phone numbers, payment card numbers (13-19 digits passing the Luhn check), IBANs
  (passing the ISO 13616 mod-97 check) and US Social Security numbers (3-2-4 digits in groups, a number
  the SSA could issue), each found span labelled for redaction;
- blocklist: words or phrases on word boundaries, case-insensitive, their words apart by any whitespace;
- regex: the operator's own patterns.

Injection, PII and blocklist rules read a text as a reader sees it (readings.py: look-alikes, invisible
characters, marks, other scripts); the spans they report are the text's own. The regex rule reads the text
as it is.

Every built-in pattern runs in linear time on any input (tests/unit/test_guardrail_linear.py runs them
over adversarial inputs of growing size): an unbounded repeat is possessive (`++`, `*+`, no backtracking
into it) and, where a match could start at every character of a run (`%%%%...` before an `@`), a
lookbehind lets it start only at the run's first character; everything else is bounded ({m,n}). Line
patterns use horizontal whitespace ([ \t]) so that `^` over 30,000 newlines does not rescan the rest of
the text from every line. The operator's `regex` patterns are theirs to keep linear.

The PII patterns are searched in rewritten forms, and only where a match can be (around the text's digits and
its '@'s): prose costs a scan for those. tests/unit/test_pii_fast.py holds them to the patterns as first
written, kept in the comment above `_Form`."""

from __future__ import annotations

import importlib
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from llmops.errors import ConfigError
from llmops.pipeline.guardrails import readings
from llmops.pipeline.guardrails.readings import Finding
from llmops.settings import GuardrailRule


class Detector(Protocol):
    def find(self, text: str) -> list[Finding]: ...


class InjectionClassifier(Protocol):
    """The pluggable part of injection detection: a model that scores a text from 0 (benign) to 1."""

    def score(self, text: str) -> float: ...


_OVERRIDE = r"(?:ignore|disregard|forget|skip|override|bypass)"
# up to three determiners ("all your", "all of the", "any of these"): one alone let "ignore all your previous
# instructions" pass
_DETS = r"(?:(?:all|any|the|your|my|of|these|those|each|every|their)\s+){0,3}"
_PRIOR = rf"{_DETS}(?:previous|prior|above|earlier|preceding|original|initial|system)"
_RULES = r"(?:instructions?|prompts?|rules|directions|guidelines|directives|context|constraints)"
INJECTION_PATTERNS = (
    rf"\b{_OVERRIDE}\s+{_PRIOR}\s+(?:\w+\s+)?{_RULES}",
    rf"\b{_OVERRIDE}\s+{_DETS}{_RULES}\b",
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
    r"^[ \t]*+#{2,}+[ \t]*+(?:system|instruction)s?[ \t]*+:?[ \t\r]*+$",  # \r: a CRLF line
)


def _possessive(pattern: str) -> str:
    r"""`\s+` -> `\s++`: every such whitespace run in these patterns is followed by a word, never by more
    whitespace, so giving none back cannot lose a match."""
    return re.sub(r"\\s\+(?![+?])", lambda m: m.group() + "+", pattern)




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
        """The patterns' matches in the text as the rules read it (`readings.read`); spans are the text's own."""
        found = readings.read(text, self._search, markup=True)
        if not found and self._classifier is not None and self._classifier.score(text) >= self._threshold:
            found.append(Finding("injection", 0, len(text)))
        return found

    def _search(self, read: str) -> list[Finding]:
        folded = read.lower()  # ASCII: its look-alikes are read already, case alone is left
        return [Finding("injection", start, end) for p, bounded in self._patterns
                for start, end in _matches(p, folded, bounded)]


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
    compact = iban.replace(" ", "").replace("-", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:  # a letter the pattern's IGNORECASE let in, no base-36 digit: the Kelvin sign, 'İ'
        return False


# The PII patterns as first written (tests/unit/test_pii_fast.py keeps them, and holds what follows to finding
# exactly what they find, spans and all):
#   email (?<![\w.%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*\.[A-Za-z]{2,}+\b
#   card  (?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])                             and the Luhn check
#   iban  \b[A-Z]{2}\d{2}(?:(?:-[A-Z0-9]{4}){2,7}(?:-[A-Z0-9]{1,3})?|(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b,
#         IGNORECASE                                                     and mod-97
#   ssn   (?<![\d-])\d{3}([ -])\d{2}\1\d{4}(?![\d-])                          and no 000, 666 or 9xx area,
#                                                                        00 group or 0000 serial
#   phone (?<![\w+])(?<![A-Za-z]-)(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}|\(\d{1,4}\)[ .-]?\d{2,4}|\d{2,4})
#         (?:[ .-]\d{2,6}){1,5}(?!\w)|(?<![\w+])\+\d{8,15}(?!\w)               and 9-15 digits (8 after + or ()
# A leading lookbehind or \b, or IGNORECASE, makes the engine try a pattern at every position (20-40 ns each:
# 170 ms a megabyte for the four, the GIL held). Here:
# - card, IBAN and phone need digits: they are searched only in the windows of the text around its digits,
#   joined into one string (prose without digits costs a scan for them, under 1 ms a megabyte);
# - each of those is written in two forms that find the same matches: one starting with the match's first
#   character (its lookbehind moved after it), the other with the character before the match that the
#   lookbehind allows, consumed (the match is then group 1). The engine skips at C speed to the characters a
#   form starts with and tries the form only there, so each is searched in the form that starts on fewer of
#   the characters at hand: digit runs (1111...) cost nothing to the second card form, prose nothing to the
#   first;
# - an e-mail needs an '@': each one, where they are few, is looked at on its own;
# - the repeats' first iterations are written out (X{12,18} is X 12 times then X{0,6}, tried in the same
#   order), so that the common attempt, which fails within them, costs single-character steps and not a
#   repeat's set-up; `?+`, `{m,n}+` where giving characters back can never help (a separator is not a digit,
#   a \b cannot fall between two letters, the groups after a phone's head start with a separator).
_L = "A-Za-z0-9._%+-"  # an address's local part
_EMAIL_REST = r"@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*\.[A-Za-z]{2,}+\b"
_CARD_REST = r"[ -]?+\d" * 12 + r"(?:[ -]?+\d){0,6}(?![\d-])"
_AZ, _AZ09 = "A-Za-z\u0130\u0131\u017f\u212a", "A-Za-z0-9\u0130\u0131\u017f\u212a"  # [A-Z], [A-Z0-9] IGNORECASE
# an IBAN's groups of four apart by single spaces or none (as printed), or by a hyphen each (every one: a
# UUID's hyphens, between groups of 8 and 12, read as an IBAN's 1 time in 500)
_IBAN_SPACED = rf" ?+[{_AZ09}]{{4}} ?+[{_AZ09}]{{4}}(?: ?+[{_AZ09}]{{4}}){{0,5}}(?: ?+[{_AZ09}]{{1,3}}+)?\b"
_IBAN_HYPHENED = rf"-[{_AZ09}]{{4}}-[{_AZ09}]{{4}}(?:-[{_AZ09}]{{4}}){{0,5}}(?:-[{_AZ09}]{{1,3}}+)?\b"
_IBAN_REST = rf"(?:{_IBAN_HYPHENED}|{_IBAN_SPACED})"
# After a '+': its first digits whole (1-3) and what may follow them, or else a run of 2-7 digits: the heads'
# ends in the order the pattern as written reaches them, none tried twice.
_PLUS_HEAD = r"(?:\d{1,3}+(?!\d)[ .-]?+(?:\(\d{1,4}+\)[ .-]?+)?+\d{1,4}+|\d{2,7}+)"
_PAREN_HEAD = r"\d{1,4}+\)[ .-]?+\d{2,4}+"
_PHONE_LONG = r"[ .-]\d{2,6}+(?:[ .-]\d{2,6}+){0,4}(?!\w)"
Spans = list[tuple[int, int]]
_REACH = 64  # more than any card, IBAN or phone match reaches from where it is tried (a phone: 51 characters)
_CHUNK = 16_384  # characters searched in one call at most (the GIL is held through each)


class _Form:
    """One form of a pattern: where its finding is (`group`, less `back` characters before it), and, for a
    form that consumes the character before the match, `at_start`: the form for a match at the text's start,
    which has none. Each is compiled twice: as written, and with re.ASCII for ASCII texts, where they mean
    the same and the engine tells digits, word characters and boundaries without Unicode's tables."""

    def __init__(self, pattern: str, group: int = 0, back: int = 0, at_start: _Form | None = None) -> None:
        self.pattern, self.ascii = re.compile(pattern), re.compile(pattern, re.ASCII)
        self.group, self.back, self.at_start = group, back, at_start

    def spans(self, text: str, lo: int = 0, hi: int | None = None, chunk: int | None = None) -> Spans:
        """The findings in text[lo:hi] as finditer over the whole text finds them, where no match runs across
        lo and the lookarounds see at hi what they would see at the text's end. With `chunk`, each search
        call reaches at most `chunk` + _REACH characters (for patterns whose matches reach less than _REACH
        from where they are tried): the matches tried before the chunk's end are those of the whole text's
        search, and the next chunk's search starts after the last of them or at the chunk's end, where the
        whole text's search would go on from."""
        hi = len(text) if hi is None else hi
        ascii_ = text.isascii()
        found: Spans = []
        pos = lo
        if self.at_start is not None:
            pos = max(lo - 1, 0)
            start = self.at_start.ascii if ascii_ else self.at_start.pattern
            if lo == 0 and (m := start.match(text, 0, hi)) is not None:
                found.append(m.span())
                pos = m.end()
        pattern, g, back = self.ascii if ascii_ else self.pattern, self.group, self.back
        while True:
            stop = min(pos + (chunk or hi), hi)
            ms = [m for m in pattern.finditer(text, pos, min(stop + _REACH, hi)) if m.start() < stop]
            found += [(m.start(g) - back, m.end(g)) for m in ms]
            if stop >= hi:
                return found
            pos = max(ms[-1].end() if ms else pos, stop)


_EMAIL_FIRST = _Form(rf"[{_L}](?<![\w.%+-][{_L}])[{_L}]*+{_EMAIL_REST}")
_EMAIL_AFTER = _Form(rf"[^\w.%+-]([{_L}]++{_EMAIL_REST})", 1, at_start=_EMAIL_FIRST)
_CARD_FIRST = _Form(rf"\d(?<![\d-]\d){_CARD_REST}")
_CARD_AFTER = _Form(rf"[^\d-](\d{_CARD_REST})", 1, at_start=_CARD_FIRST)
_SSN = _Form(r"\d(?<![\d-]\d)\d\d([ -])\d\d\1\d{4}+(?![\d-])")
_IBAN_DIGIT = _Form(rf"\d(?<=\b[{_AZ}]{{2}}\d)\d{_IBAN_REST}", back=2)  # from its check digits
_IBAN_FIRST = _Form(rf"[{_AZ}](?<=\b[{_AZ}])[{_AZ}]\d\d{_IBAN_REST}")
# a phone's first character is followed by a digit in every branch: (?=\d) turns most attempts away at once
_PHONE_FIRST = _Form(rf"[+(\d](?=\d)(?<![\w+][+(\d])(?:(?<![A-Za-z]-[+(\d])(?:(?<=\d)\d{{1,3}}+|"
                     rf"(?<=\+){_PLUS_HEAD}|(?<=\(){_PAREN_HEAD}){_PHONE_LONG}|(?<=\+)\d{{8,15}}+(?!\w))")
_PHONE_AFTER = _Form(rf"[^\w+](?=[+(\d]\d)((?<![A-Za-z]-)(?:\d{{2,4}}+|\+{_PLUS_HEAD}|\({_PAREN_HEAD})"
                     rf"{_PHONE_LONG}|\+\d{{8,15}}+(?!\w))", 1, at_start=_PHONE_FIRST)

_LOCAL_RUN = re.compile(rf"[{_L}]*+")
_EMAIL_AT = re.compile(rf"[{_L}]++{_EMAIL_REST}")  # at the start of the local part before an '@'
_BEFORE_LOCAL = re.compile(r"[\w.%+-]")  # what the lookbehind refuses before a local part
# '@'s less than 1024 characters apart share a window (4096 of them are found in one call, then the next)
_AT_CLUSTER = re.compile(r"@(?:[^@]{0,1023}+@){0,4095}+")
_ADDRESS_RUN = re.compile(rf"[{_L}@]*+")
_DIGIT_CLUSTER = re.compile(r"\d(?:\D{0,127}+\d){0,4095}+")  # 128 non-digits or more end one, as in _GAP
_DIGIT_MASK = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))  # ASCII digits to 1, the rest 0
_GAP = b"0" * 128
# for counting the characters each form is tried at: digits to 0, letters to a, these to themselves, the rest
# (and what is not ASCII) to a space
_CLASSES = bytes(48 if chr(c).isdigit() else 97 if chr(c).isalpha() else c if chr(c) in "_+(-.%" else 32
                 for c in range(128)) + b" " * 128


class _Digits:
    """The text's windows around its digits, joined into one string (`text`): each window runs _REACH
    characters beyond its first and last digits, so every card, IBAN or phone match (each holds digits) lies
    in one window with all that its lookarounds see, and none reaches a join. Digits less than 128 characters
    apart share a window. `count`: how many digits (0), letters (a), '_', '+', '(' and '-' the windows hold,
    for picking each pattern's form."""

    def __init__(self, text: str) -> None:
        n = len(text)
        if text.isascii():  # the digits' clusters found in the mask at memchr speed
            windows, mask = [], text.encode().translate(_DIGIT_MASK)
            start = mask.find(b"1")
            while start >= 0:
                end = mask.find(_GAP, start)
                end = n if end < 0 else end
                windows.append((max(0, start - _REACH), min(n, end + _REACH)))
                start = mask.find(b"1", end)
        else:
            windows = []
            for m in _DIGIT_CLUSTER.finditer(text):  # a cluster of 4096 digits or more comes in parts
                lo, hi = max(0, m.start() - _REACH), min(n, m.end() + _REACH)
                if windows and lo < windows[-1][1]:
                    lo = windows.pop()[0]
                windows.append((lo, hi))
        self.text = text if windows == [(0, n)] else "".join(text[lo:hi] for lo, hi in windows)
        self.starts: list[int] = []
        self.shifts: list[int] = []
        joined = 0
        for lo, hi in windows:
            self.starts.append(joined)
            self.shifts.append(lo - joined)
            joined += hi - lo
        self.ascii = self.text.encode("ascii", "replace")  # anything else as '?'
        self.is_ascii = self.text.isascii()
        classes = self.ascii.translate(_CLASSES)
        self.count = {c: classes.count(c.encode()) for c in "0a_+(-"}

    def checked(self, spans: Spans, fast: Callable[[bytes], bool], slow: Callable[[str], bool],
                parts: Callable[[str, int, int], Spans] | None = None) -> Spans:
        """The spans whose text passes the check (`fast` on the ASCII bytes of those that are ASCII: no '?',
        which no card, IBAN or phone match holds), where they are in the original text. With `parts`, a span
        that fails gives the parts of it that `parts` finds (`_card_parts`)."""
        a, t = self.ascii, self.text
        if self.is_ascii:
            ok = [(s, e) for s, e in spans if fast(a[s:e])]
        else:
            ok = [(s, e) for s, e in spans if (fast(b) if b"?" not in (b := a[s:e]) else slow(t[s:e]))]
        if parts is not None and len(ok) < len(spans):
            passed = set(ok)
            ok = sorted(ok + [p for span in spans if span not in passed for p in parts(t, *span)])
        if len(self.shifts) == 1:
            shift = self.shifts[0]
            return [(s + shift, e + shift) for s, e in ok]
        starts, shifts = self.starts, self.shifts
        return [(s + (d := shifts[bisect_right(starts, s) - 1]), e + d) for s, e in ok]


_GROUP = re.compile(r"[^ -]++")  # a card's digit group


# How cards are written: one run of digits, or groups of these sizes (Visa/Mastercard, Amex, Diners, 19 digits)
_CARD_SHAPES = (*((n,) for n in range(19, 12, -1)), (4, 4, 4, 4, 3), (4, 4, 4, 4), (4, 6, 5), (4, 6, 4))


def _card_parts(text: str, start: int, end: int) -> Spans:
    """Within a card match that failed the Luhn check, the runs of its digit groups written as a card is
    (`_CARD_SHAPES`) that pass it, leftmost first: a card beside another number ("Visa 4111111111111111 123",
    "qty 2 4111 1111 1111 1111") was one match that failed, and nothing was found. Groups of other sizes
    (a table's numbers, a timestamp) are never taken for a card."""
    groups = [m.span() for m in _GROUP.finditer(text, start, end)]
    sizes = tuple(b - a for a, b in groups)
    if len(groups) < 2 or max(sizes) < 4:  # one group is the match itself; every shape has a group of 4+
        return []
    out: Spans = []
    i = 0
    while i < len(groups):
        for shape in _CARD_SHAPES:
            j = i + len(shape)
            if sizes[i:j] == shape and (groups[i][0], groups[j - 1][1]) != (start, end) and \
                    _luhn(text[groups[i][0]:groups[j - 1][1]]):
                out.append((groups[i][0], groups[j - 1][1]))
                i = j
                break
        else:
            i += 1
    return out


def _emails(text: str, _: _Digits | None) -> Iterable[Finding]:
    """Where '@'s are few (fewer than one in 64 characters), each is looked at on its own: the only match
    that can hold it starts where the run of local-part characters before it starts (a match's local part
    is such a run, whole, and the lookbehind refuses any start within one), unless an earlier match covers
    that start. Elsewhere, the windows around them are searched."""
    ats, n = text.count("@"), len(text)
    rev = text[::-1] if ats else ""  # rev[n - 1 - i] is text[i]: the local part is matched backwards
    if ats * 64 > n:
        yield from _dense_emails(text, rev)
        return
    covered, at = 0, text.find("@")
    while at >= 0:
        start = n - _LOCAL_RUN.match(rev, n - at).end()  # type: ignore[union-attr]
        if (covered <= start < at and not (start and _BEFORE_LOCAL.match(text, start - 1))
                and (m := _EMAIL_AT.match(text, start)) is not None):
            yield Finding("email", start, m.end())
            covered = m.end()
        at = text.find("@", at + 1)


def _dense_emails(text: str, rev: str) -> Iterable[Finding]:
    """Windows from the local part before the first '@' of a cluster to the character after the address
    characters that follow its last (the one the final \\b sees), each searched in the cheaper form, in parts
    of about _CHUNK characters cut before an '@': a part ends just after the '@' that starts the next (a
    match holding that '@' cannot end there, so the part finds the matches whose '@' is before it), and the
    next part starts at that '@'s local part, or after the last match if that covers it."""
    windows: list[tuple[int, int]] = []
    n = len(text)
    for c in _AT_CLUSTER.finditer(text):
        if windows and c.end() < windows[-1][1]:
            continue  # within the last window's run of address characters (not scanned again)
        lo = n - _LOCAL_RUN.match(rev, n - c.start()).end()  # type: ignore[union-attr]
        hi = min(n, _ADDRESS_RUN.match(text, c.end()).end() + 1)  # type: ignore[union-attr]
        if windows and lo < windows[-1][1]:
            windows[-1] = (windows[-1][0], hi)
        else:
            windows.append((lo, hi))
    for lo, hi in windows:
        ascii_ = text[lo:hi].encode("ascii", "replace")
        classes = ascii_.translate(_CLASSES)
        local = len(ascii_) - classes.count(b" ") - classes.count(b"_") - classes.count(b"(")
        form = _EMAIL_FIRST if local < len(ascii_) - local else _EMAIL_AFTER
        start = covered = lo
        while True:
            first = text.find("@", start, hi)
            cut = text.find("@", max(start + _CHUNK, first + 1), hi)
            for s, e in form.spans(text, max(start, covered), hi if cut < 0 else cut + 1):
                yield Finding("email", s, e)
                covered = e
            if cut < 0:
                break
            start = n - _LOCAL_RUN.match(rev, n - cut).end()  # type: ignore[union-attr]


def _cards(_: str, digits: _Digits | None) -> Iterable[Finding]:
    if digits is None or not digits.starts:
        return []
    count = digits.count  # of the characters each form is tried at
    first, after = count["0"], len(digits.ascii) - count["0"] - count["-"]
    spans = (_CARD_FIRST if first <= after else _CARD_AFTER).spans(digits.text, chunk=_CHUNK)
    return [Finding("card", s, e) for s, e in digits.checked(spans, _luhn_ascii, _luhn, _card_parts)]


def _ibans(_: str, digits: _Digits | None) -> Iterable[Finding]:
    if digits is None or not digits.starts:
        return []
    form = _IBAN_DIGIT if digits.count["0"] <= digits.count["a"] else _IBAN_FIRST
    spans = form.spans(digits.text, chunk=_CHUNK)
    return [Finding("iban", s, e) for s, e in digits.checked(spans, _iban_ascii, iban_ok)]


def _ssns(_: str, digits: _Digits | None) -> Iterable[Finding]:
    if digits is None or not digits.starts:
        return []
    spans = _SSN.spans(digits.text, chunk=_CHUNK)
    return [Finding("ssn", s, e) for s, e in digits.checked(spans, _ssn_ascii, _ssn)]


def _ssn(ssn: str) -> bool:
    """`_ssn_ascii` on a match with digits of other scripts (int() reads any decimal digit)."""
    return _ssn_ascii("".join(str(int(c)) for c in re.sub(r"\D", "", ssn)).encode())


def _ssn_ascii(ssn: bytes) -> bool:
    """A number the SSA could issue: no area 000, 666 or 900-999, no group 00, no serial 0000."""
    digits = ssn.translate(None, b" -")
    return digits[:3] not in (b"000", b"666") and digits[:1] != b"9" and digits[3:5] != b"00" and \
        digits[5:] != b"0000"


def _phones(_: str, digits: _Digits | None) -> Iterable[Finding]:
    if digits is None or not digits.starts:
        return []
    count = digits.count
    first = count["0"] + count["+"] + count["("]
    after = len(digits.ascii) - count["0"] - count["a"] - count["_"] - count["+"]
    spans = (_PHONE_FIRST if first <= after else _PHONE_AFTER).spans(digits.text, chunk=_CHUNK)
    found = _disjoint(digits.checked(spans, _phone_ascii, _phone, _after_date))  # a phone after a date may run on
    return [Finding("phone", s, e) for s, e in found]


def _luhn(card: str) -> bool:
    return luhn_ok(re.sub(r"\D", "", card))


def _luhn_ascii(card: bytes) -> bool:
    """`luhn_ok` on a card match's digits, in C: the doubled digits are every other one from the second
    last, and doubling d adds d, less 9 when d >= 5 (so 1 more, modulo 10)."""
    digits = card.translate(None, b" -")
    doubled = digits[len(digits) % 2::2]
    twice = sum(digits) + sum(doubled) - 48 * (len(digits) + len(doubled))
    return (twice + len(doubled.translate(None, b"01234"))) % 10 == 0


_IBAN_DIGITS = {c: str(int(c, 36)) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_COUNTRY = {(a + b).encode(): int(_IBAN_DIGITS[a] + _IBAN_DIGITS[b]) for a in _IBAN_DIGITS for b in _IBAN_DIGITS}


def _iban_ascii(iban: bytes) -> bool:
    """`iban_ok`: with the first four characters moved to the end, a number of digits only is taken whole."""
    compact = iban.translate(None, b" -").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rest = compact[4:]
    if rest.isdigit():
        return (int(rest) * 1_000_000 + _COUNTRY[compact[:2]] * 100 + int(compact[2:4])) % 97 == 1
    return int("".join(map(_IBAN_DIGITS.__getitem__, (rest + compact[:4]).decode()))) % 97 == 1


# a calendar date, its year first or last and its two separators alike: a phone match that starts with one
# is a date and a time ("2026-12-06 07:02:34", "06.12.2026 10:15"), no phone
_DATE_HEAD = r"(?:(?:19|20)\d\d([.-])[01]?\d\1[0-3]?\d|[0-3]?\d([.-])[01]?\d\2(?:19|20)\d\d)(?!\d)"
_DATE, _DATE_ASCII = re.compile(_DATE_HEAD), re.compile(_DATE_HEAD.encode())


def _phone(phone: str) -> bool:
    """9 to 15 digits, 8 after an international prefix or an area code in brackets (a date, 2024-05-01, has
    8 and neither), not starting with a date."""
    return (8 if phone[0] in "+(" else 9) <= len(re.sub(r"\D", "", phone)) <= 15 and _DATE.match(phone) is None


def _after_date(text: str, start: int, end: int) -> Spans:
    """A phone match that failed for starting with a date: a phone matched afresh after the date and one
    separator, where there is one (the date's groups had taken part of its place in the match: "2026-12-06
    06 12 34 56 78"), dates after dates passed over likewise. A date cannot hide a phone."""
    pos = start
    while (date := _DATE.match(text, pos)) is not None:
        pos = date.end() + 1
        phone = _PHONE_FIRST.pattern.match(text, pos) if pos < len(text) else None
        if phone is None:
            return []
        if _phone(phone.group()):
            return [phone.span()]
    return []


def _disjoint(spans: Spans) -> Spans:
    """The sorted spans less those overlapping the one kept before them."""
    kept: Spans = []
    for s, e in spans:
        if not kept or s >= kept[-1][1]:
            kept.append((s, e))
    return kept


def _phone_ascii(phone: bytes) -> bool:
    """`_phone`: every character of a match that is not a digit is one of `+() .-`."""
    return (8 if phone[0] in b"+(" else 9) <= len(phone.translate(None, b"+() .-")) <= 15 and \
        _DATE_ASCII.match(phone) is None


PII_FINDERS: dict[str, Callable[[str, _Digits | None], Iterable[Finding]]] = {
    "email": _emails,
    "iban": _ibans,
    "card": _cards,
    "ssn": _ssns,
    "phone": _phones,
}


class PiiDetector:
    def __init__(self, entities: Iterable[str]) -> None:
        order = ("email", "iban", "card", "ssn", "phone")  # the more specific first: a card is not also a phone
        self._finders = [PII_FINDERS[e] for e in order if e in set(entities)]
        self._digits = bool(set(entities) - {"email"})

    def find(self, text: str) -> list[Finding]:
        """What the finders find in the text as the rules read it (`readings.read`: a fullwidth '@', digits
        split by zero-width spaces, an address against Chinese)."""
        return readings.read(text, self._find)

    def _find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        digits = _Digits(text) if self._digits else None
        for finder in self._finders:  # each finder's spans come in order: one merge pass, not a pairwise check
            found = _merge_free(found, list(finder(text, digits)))
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


class BlocklistDetector:
    """The terms, case-insensitive, in the text as the rules read it (`readings.read`); a term's words apart
    by any whitespace ("secret  plan", "secret\nplan"). A term in ASCII is read as texts are, on the Latin
    reading (look-alikes and letters with diacritics as Latin letters, marks and invisible characters left
    out, other scripts apart: a term against Chinese is found), on word boundaries. Any other term (another
    script, or diacritics, which tell words apart: "g\u00f6t" is not "got") is searched as written, composed or
    decomposed, in the text with its invisible characters left out, on word boundaries where its first or
    last character is a letter of a script written with spaces."""

    def __init__(self, terms: Iterable[str]) -> None:
        latin = [t.split() for t in terms if t.isascii()]
        other = [unicodedata.normalize("NFC", readings.without_invisible(t)).split()
                 for t in terms if not t.isascii()]
        self._latin = _terms([w for w in latin if w], True)
        self._other = _terms([w for w in other if w], False)

    def find(self, text: str) -> list[Finding]:
        found = readings.read(text, self._search_latin, markup=True) if self._latin is not None else []
        if self._other is not None:
            found = readings.union(found, readings.read(text, self._search_other, latin=False))
        return found

    def _search_latin(self, read: str) -> list[Finding]:
        return _found(self._latin, read)

    def _search_other(self, read: str) -> list[Finding]:
        return _found(self._other, read)


def _terms(terms: list[list[str]], latin: bool) -> re.Pattern[str] | None:
    """One pattern for the terms (each a list of words), the longer first where they start alike: the text
    is searched once, whatever the number of terms."""
    if not terms:
        return None
    parts = sorted({_term(words, latin) for words in terms}, key=len, reverse=True)
    return re.compile("|".join(parts), re.I)


def _term(words: list[str], latin: bool) -> str:
    first, last = words[0][0], words[-1][-1]
    before = r"(?<!\w)" if latin or (first.isalnum() and not readings.NO_SPACE.match(first)) else ""
    after = r"(?!\w)" if latin or (last.isalnum() and not readings.NO_SPACE.match(last)) else ""
    written = r"\s++".join("".join(map(_written, word)) for word in words)
    return f"{before}(?:{written}){after}"


def _written(ch: str) -> str:
    """A character as written composed or decomposed ("\u00e9" or "e\u0301")."""
    split = unicodedata.normalize("NFD", ch)
    return re.escape(ch) if split == ch else f"(?:{re.escape(ch)}|{re.escape(split)})"


def _found(pattern: re.Pattern[str] | None, read: str) -> list[Finding]:
    assert pattern is not None
    return [Finding("blocklist", m.start(), m.end()) for m in pattern.finditer(read) if m.end() > m.start()]


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
        return BlocklistDetector(rule.terms)
    return PatternDetector("regex", rule.patterns)
