"""Scorers: each turns an answer into a score in [0, 1], or None when it does not apply (no reference to
compare with). A scorer that cannot score (its judge is down) raises ScorerError: the report counts it, never
as a zero. Built from EvalScorer specs, so a dataset composes them and a route's live traffic reuses them."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from llmops.errors import ConfigError
from llmops.settings import EvalScorer

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class ScorerError(Exception):
    """The scorer could not score this answer (an endpoint failed, a judge said nothing parseable). `said`
    is what the judge answered, when that is the problem: content, kept out of the message (which online
    evaluation logs) and added by the offline report (`detail`)."""

    def __init__(self, message: str, said: str | None = None) -> None:
        super().__init__(message)
        self.said = said

    def detail(self) -> str:
        return f"{self} (said {self.said[:80]!r})" if self.said is not None else str(self)


@dataclass(frozen=True)
class Item:
    """What a scorer sees besides the answer: the question, the reference and the row's metadata."""

    question: str
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


ScoreFn = Callable[[str, Item], Awaitable[float | None]]


@dataclass(frozen=True)
class Scorer:
    label: str
    kind: str
    score: ScoreFn
    client: Any = None  # the endpoint's client (embedding, judge), closed with `close`

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def normalise(text: str, ignore_case: bool) -> str:
    text = " ".join(text.split()).strip(" .!\"'")
    return text.casefold() if ignore_case else text


def _reference(spec: EvalScorer, item: Item) -> str | None:
    return item.reference if item.reference is not None else spec.reference


def exact(spec: EvalScorer, answer: str, item: Item) -> float | None:
    ref = _reference(spec, item)
    if ref is None:
        return None
    return float(normalise(answer, spec.ignore_case) == normalise(ref, spec.ignore_case))


def contains(spec: EvalScorer, answer: str, item: Item) -> float | None:
    ref = _reference(spec, item)
    if ref is None:
        return None
    options = [normalise(r, spec.ignore_case) for r in ref.split("|")]  # "|" separates accepted answers
    found = normalise(answer, spec.ignore_case)
    return float(any(o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", found) for o in options))


def regex(spec: EvalScorer, answer: str, item: Item) -> float | None:
    pattern = spec.pattern or item.metadata.get("pattern")
    if pattern is None:
        return None
    flags = re.IGNORECASE if spec.ignore_case else 0
    try:
        return float(re.search(pattern, answer, flags) is not None)
    except re.error as exc:
        raise ScorerError(f"bad pattern {pattern!r}: {exc}") from exc


def parse_json(answer: str, in_text: bool = False) -> Any:
    """The answer as JSON, allowing a ``` fence around it (models add one); with `in_text`, the first JSON
    object or array anywhere in it. ValueError if there is none."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    try:
        return json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        if not in_text:
            raise
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c in "{["):
        try:
            return decoder.raw_decode(text, start)[0]
        except ValueError:
            continue
    raise ValueError("no JSON object or array in the answer")


def json_valid(spec: EvalScorer, answer: str, item: Item) -> float | None:
    try:
        parse_json(answer, spec.json_in_text)
    except ValueError:
        return 0.0
    return 1.0


def json_schema(spec: EvalScorer, answer: str, item: Item) -> float | None:
    schema = spec.json_schema or item.metadata.get("schema")
    if schema is None:
        return None
    try:
        value = parse_json(answer, spec.json_in_text)
    except ValueError:
        return 0.0
    import jsonschema

    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def first_number(text: str) -> float | None:
    match = _NUMBER.search(text)
    return float(match.group(0).replace(",", "")) if match else None


def numeric(spec: EvalScorer, answer: str, item: Item) -> float | None:
    ref = _reference(spec, item)
    expected = first_number(ref) if ref is not None else None
    if expected is None:
        return None
    got = first_number(answer)
    return float(got is not None and math.isclose(got, expected, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol))


LOCAL: dict[str, Callable[[EvalScorer, str, Item], float | None]] = {
    "exact": exact, "contains": contains, "regex": regex, "json_valid": json_valid, "json_schema": json_schema,
    "numeric": numeric,
}


def build(spec: EvalScorer, default_base_url: str | None) -> Scorer:
    """A scorer from its spec; embedding and judge scorers ask a model at `base_url` (or the default)."""
    if spec.kind in LOCAL:
        check_spec(spec)
        fn = LOCAL[spec.kind]

        async def local(answer: str, item: Item) -> float | None:
            return fn(spec, answer, item)

        return Scorer(spec.label(), spec.kind, local)
    from llmops.eval.models import model_scorer

    remote, client = model_scorer(spec, default_base_url)
    return Scorer(spec.label(), spec.kind, remote, client)


def check_spec(spec: EvalScorer) -> None:
    if spec.kind == "regex" and spec.pattern is not None:
        try:
            re.compile(spec.pattern)
        except re.error as exc:
            raise ConfigError(f"scorer {spec.label()}: bad pattern: {exc}") from exc
    if spec.kind == "json_schema" and spec.json_schema is not None:
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(spec.json_schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"scorer {spec.label()}: bad JSON schema: {exc.message}") from exc
    if spec.kind in ("embedding", "judge") and not spec.model:
        raise ConfigError(f"scorer {spec.label()}: {spec.kind} needs a model")
