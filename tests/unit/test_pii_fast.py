"""The PII rule searches only the windows of a text that can hold a match, in rewritten forms of its patterns
(see detectors.py): it must find exactly what the patterns as first written find, with their checks, over the
whole text: the same kinds and spans, so the same redactions (and the same error, where the checks raise one).
REFERENCE below is a copy of the rule as it was before that rewrite."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from unittest import mock

import pytest
from bench.guardrails import labelled
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmops.observability.metrics import Metrics
from llmops.pipeline.guardrails import Guardrails, redact
from llmops.pipeline.guardrails import detectors as d
from llmops.pipeline.guardrails.readings import one_for_one
from llmops.settings import GuardrailRule, GuardrailSettings

# -- the reference: the rule as first written ----------------------------------------------------------------

REF_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*\.[A-Za-z]{2,}+\b")
REF_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
REF_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:(?:-[A-Z0-9]{4}){2,7}(?:-[A-Z0-9]{1,3})?|"
                      r"(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b", re.I)
REF_PHONE = re.compile(r"(?<![\w+])(?<![A-Za-z]-)"
                       r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}|\(\d{1,4}\)[ .-]?\d{2,4}|\d{2,4})"
                       r"(?:[ .-]\d{2,6}){1,5}(?!\w)|(?<![\w+])\+\d{8,15}(?!\w)")
REF_SSN = re.compile(r"(?<![\d-])\d{3}([ -])\d{2}\1\d{4}(?![\d-])")
Found = list[tuple[str, int, int]]


def ref_luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def ref_iban_ok(iban: str) -> bool:
    compact = re.sub("[ -]", "", iban).upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:  # fixed in both: this raised, and the guardrail with it (a 500)
        return False


def ref_ssns(text: str) -> Found:
    found = []
    for m in REF_SSN.finditer(text):
        digits = "".join(str(int(c)) for c in re.sub(r"\D", "", m.group()))
        if digits[:3] not in ("000", "666") and digits[0] != "9" and digits[3:5] != "00" and digits[5:] != "0000":
            found.append(("ssn", m.start(), m.end()))
    return found


REF_DATE = re.compile(r"(19|20)\d\d([.-])[01]?\d\2[0-3]?\d(?!\d)|[0-3]?\d([.-])[01]?\d\3(19|20)\d\d(?!\d)")


def ref_phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return (8 if text.startswith(("+", "(")) else 9) <= len(digits) <= 15 and not REF_DATE.match(text)


def ref_phones(text: str) -> Found:
    found = []
    for m in REF_PHONE.finditer(text):
        if ref_phone_ok(m.group()):
            found.append(("phone", m.start(), m.end()))
            continue
        pos = m.start()
        while (date := REF_DATE.match(text, pos)) is not None:  # a phone matched afresh after each date
            pos = date.end() + 1
            again = REF_PHONE.match(text, pos) if pos < len(text) else None
            if again is None:
                break
            if ref_phone_ok(again.group()):
                found.append(("phone", again.start(), again.end()))
                break
    out: Found = []
    for f in sorted(found, key=lambda f: f[1]):  # a phone after a date may run on over the next match
        if not out or f[1] >= out[-1][2]:
            out.append(f)
    return out


def ref_cards(text: str) -> Found:
    found: Found = []
    for m in REF_CARD.finditer(text):
        if ref_luhn_ok(re.sub(r"\D", "", m.group())):
            found.append(("card", m.start(), m.end()))
        else:
            # the parts of it written as cards that pass (the same step after both searches: tested on its own)
            found += [("card", s, e) for s, e in d._card_parts(text, m.start(), m.end())]
    return found


REF_FINDERS: dict[str, Callable[[str], Found]] = {
    "email": lambda t: [("email", m.start(), m.end()) for m in REF_EMAIL.finditer(t)],
    "iban": lambda t: [("iban", m.start(), m.end()) for m in REF_IBAN.finditer(t) if ref_iban_ok(m.group())],
    "card": ref_cards,
    "ssn": ref_ssns,
    "phone": ref_phones,
}


def ref_merge_free(kept: Found, new: Found) -> Found:
    out: Found = []
    i = 0
    for f in new:
        while i < len(kept) and kept[i][2] <= f[1]:
            out.append(kept[i])
            i += 1
        clashes = (i < len(kept) and kept[i][1] < f[2]) or (bool(out) and out[-1][2] > f[1])
        if not clashes:
            out.append(f)
    return out + kept[i:]


def reference(text: str, entities: Iterable[str] = ("email", "phone", "card", "iban", "ssn")) -> Found | str:
    try:
        found: Found = []
        for kind in [k for k in ("email", "iban", "card", "ssn", "phone") if k in set(entities)]:
            found = ref_merge_free(found, REF_FINDERS[kind](text))
        return found
    except ValueError as exc:
        return f"ValueError: {exc}"


def fast(text: str, entities: Iterable[str] = ("email", "phone", "card", "iban", "ssn")) -> Found | str:
    try:
        return [(f.kind, f.start, f.end) for f in d.PiiDetector(entities).find(text)]
    except ValueError as exc:
        return f"ValueError: {exc}"


def each_kind(text: str, finders: dict[str, Callable[[str], Found]]) -> dict[str, Found | str]:
    """Each kind's findings on its own, before the kinds are merged (which would hide overlaps)."""
    out: dict[str, Found | str] = {}
    for kind, finder in finders.items():
        try:
            out[kind] = finder(text)
        except ValueError as exc:
            out[kind] = f"ValueError: {exc}"
    return out


def fast_finder(kind: str) -> Callable[[str], Found]:
    return lambda text: [(f.kind, f.start, f.end) for f in d.PII_FINDERS[kind](text, d._Digits(text))]


FAST_FINDERS = {kind: fast_finder(kind) for kind in d.PII_FINDERS}


# -- texts built from the characters and pieces that matter --------------------------------------------------

PIECES = ["jane.doe", "a", "@", "@", "example", "ex-ample", ".", ".", "com", "org", "c", "uk", "x", "A", "Z", "_",
          "%", "+", "+", "-", "-", " ", " ", "  ", "\n", "(", ")", "/", ",", "'", "1", "0", "9", "12", "123", "1234",
          "12345", "123456", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "DE", "de", "DE89",
          "3704", "0044", "0532", "0130", "00", "GB82WEST12345698765432", "de89 3704 0044 0532 0130 00",
          "FR14 2004 1010 0505 0001 3M02 606", "+1 415-555-0132", "(020) 7946 0958", "+44", "+919876543210",
          "2024-05-01", "SN-", "de89-3704-0044-0532-0130-00", "cf766ede-4ad3-4fb5-a554-83e395679759",
          "123-45-6789", "078 05 1120", "666-12-3456", "123-00-4567", "1234-5",
          "\u00e9", "\u0663", "\u0661\u0662\u0663\u0664", "\u017f", "\u0131", "\u0130", "\u212a",
          "\u00df", "x" * 130, "word " * 30, "-" * 70, "1" * 20]
TEXTS = (st.lists(st.sampled_from(PIECES), max_size=30).map("".join)
         | st.lists(st.sampled_from(PIECES), max_size=30).map(" ".join))
ALL = ("email", "phone", "card", "iban", "ssn")
ENTITIES = st.sampled_from([ALL, ("email",), ("phone",), ("card",), ("iban",), ("ssn",), ("ssn", "phone"),
                            ("card", "phone"), ("email", "iban")])


@settings(max_examples=700, deadline=None)
@example("You can reach me at jane.doe@example.org, +1 415-555-0132, 4111 1111 1111 1111.", ALL)
@example("x@foo.com.bar@y.com a@b.cc-dd.1 _x@y.com \u00e9x@y.com x@y.c\u00e9", ALL)  # '@'s close: windows
@example("x@foo.com.bar@y.com@z.io a@b.cc-dd.1 _x@y.com \u00e9x@y.com x@y.c\u00e9" + " " * 2000, ALL)  # each '@' alone
@example("DE89 3704 0044 0532 0130 00 de89370400440532013000 GB82WEST12345698765432", ALL)
@example("DE89 370\u212a 0044 0532 0130 00", ALL)  # raised ValueError in iban_ok (a 500): no IBAN now
@example("\u0661\u0662\u0663\u0664 5678 9012 3456 +\u0664\u0664 20 7946 0958 (020) 7946 0958", ALL)
@example("+12 123)1123456112345123@" * 3 + "x" * 130 + "1231234123123\nAB1234" * 3, ALL)
@example("12 12 12 12 12 12 1x 2024-05-01 2024-05-01-12 SN-2024-000123 a-12 345 678 90", ALL)
@given(TEXTS, ENTITIES)
def test_the_rule_finds_what_the_patterns_as_written_find(text: str, entities: tuple[str, ...]) -> None:
    """On the text as the rule reads it (`readings.one_for_one`: these pieces hold no marks or invisible
    characters, so the reading is one for one)."""
    assert fast(text, entities) == reference(one_for_one(text), entities)
    assert each_kind(text, FAST_FINDERS) == each_kind(text, REF_FINDERS)


FORMS = {"email": [d._EMAIL_FIRST, d._EMAIL_AFTER], "card": [d._CARD_FIRST, d._CARD_AFTER],
         "iban": [d._IBAN_DIGIT, d._IBAN_FIRST], "phone": [d._PHONE_FIRST, d._PHONE_AFTER], "ssn": [d._SSN]}
REF_PATTERNS = {"email": REF_EMAIL, "card": REF_CARD, "iban": REF_IBAN, "phone": REF_PHONE, "ssn": REF_SSN}


@settings(max_examples=500, deadline=None)
@example("12345678901234 1234567890123 x1234567890123-", 3)
@given(TEXTS, st.integers(min_value=1, max_value=40))
def test_every_form_matches_where_its_pattern_as_written_does(text: str, chunk: int) -> None:
    """Each form, whichever the rule picks for a text, whole and searched in small chunks (the e-mail forms
    are not chunked: their matches have no bounded length)."""
    for kind, forms in FORMS.items():
        expected = [m.span() for m in REF_PATTERNS[kind].finditer(text)]
        for form in forms:
            assert form.spans(text) == expected, (kind, form.pattern.pattern)
            if kind != "email":
                assert form.spans(text, chunk=chunk) == expected, (kind, form.pattern.pattern, chunk)


@settings(max_examples=300, deadline=None)
@example("x@foo.com.bar@y.com@z.io a@b.cc ", 1, 0)  # a match running past the next part's start
@example("x@foo.com.bar@y.com@z.io a@b.cc ", 7, 0)
@given(TEXTS, st.integers(min_value=1, max_value=24), st.integers(min_value=0, max_value=3))
def test_small_chunks_and_clusters_find_the_same(text: str, chunk: int, cluster: int) -> None:
    """The parts that bound each regex call (16K characters, 4096 digits or '@'s a cluster) made tiny: the
    joins between them must not change what is found."""
    digits = re.compile(rf"\d(?:\D{{0,127}}+\d){{0,{cluster}}}+")
    ats = re.compile(rf"@(?:[^@]{{0,1023}}+@){{0,{cluster}}}+")
    with (mock.patch.object(d, "_CHUNK", chunk), mock.patch.object(d, "_DIGIT_CLUSTER", digits),
          mock.patch.object(d, "_AT_CLUSTER", ats)):
        assert fast(text * 3) == reference(one_for_one(text * 3))
        assert each_kind(text * 3, FAST_FINDERS) == each_kind(text * 3, REF_FINDERS)


@pytest.mark.parametrize("which", ["pii", "injection"])
def test_the_labelled_set_finds_and_redacts_the_same(which: str) -> None:
    guard = Guardrails(GuardrailSettings(rules=[GuardrailRule(name="pii", detector="pii", action="redact")]),
                       Metrics())
    for row in labelled(which):
        text = row["text"]
        expected = reference(text)
        assert fast(text) == expected, text
        assert not isinstance(expected, str)
        findings = [d.Finding(kind, start, end) for kind, start, end in expected]
        assert guard.check("input", text, record=False).text == redact(text, findings)


def test_prose_without_digits_or_at_signs_is_not_searched() -> None:
    """The common case costs a scan for digits and '@' (no pattern runs), so it is fast whatever its size."""
    text = "The quick brown fox jumps over the lazy dog. " * 20_000
    with mock.patch.object(d._Form, "spans", side_effect=AssertionError("searched")):
        assert d.PiiDetector(["email", "phone", "card", "iban"]).find(text) == []


def test_an_iban_shape_with_a_letter_no_base_36_digit_is_no_iban_not_an_error() -> None:
    """The Kelvin sign and 'İ' match [A-Z] under IGNORECASE; int(c, 36) refused them, and the request failed."""
    assert not d.iban_ok("DE89 370\u212a 0044 0532 0130 00")
    found = d.PiiDetector(["iban"]).find("IBAN DE89 370\u212a 0044 0532 0130 00 and DE89 3704 0044 0532 0130 00")
    assert [f.kind for f in found] == ["iban"]
