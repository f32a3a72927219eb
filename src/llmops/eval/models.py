"""Scorers that ask a model over an OpenAI-compatible API: embedding similarity to the reference
(/v1/embeddings), and LLM-as-judge with a rubric, single-answer (a 1-10 grade) or pairwise (which of two
answers is better, asked in both orders so that a judge that prefers a position cannot decide alone)."""

from __future__ import annotations

import math
import re
from typing import Literal

import openai

from llmops.errors import ConfigError
from llmops.eval.scorers import Item, ScoreFn, ScorerError
from llmops.eval.targets import client_for
from llmops.settings import EvalScorer

DEFAULT_RUBRIC = "A good answer is correct, complete and concise, and follows the instructions in the question."
_GRADE = re.compile(r"(?:score|grade|rating)\s*[:=]?\s*\**\s*(10|[1-9])\b", re.IGNORECASE)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")

SINGLE = """You are grading an answer to a question. {rubric}

Question:
{question}
{reference}
Answer:
{answer}

Reply with one short sentence of reasoning, then "Score: N" where N is an integer from 1 (worst) to 10 (best)."""

PAIRWISE = """You are comparing two answers to the same question. {rubric}

Question:
{question}
{reference}
Answer A:
{first}

Answer B:
{second}

Reply with one short sentence of reasoning, then the verdict: [[A]] if A is better, [[B]] if B is better,
[[C]] for a tie."""


def _reference_block(item: Item) -> str:
    return f"\nA reference answer (correct, maybe phrased differently):\n{item.reference}\n" if item.reference else ""


def model_scorer(spec: EvalScorer, default_base_url: str | None) -> tuple[ScoreFn, openai.AsyncOpenAI]:
    """The scoring function and its client (the caller closes it)."""
    base_url = spec.base_url or default_base_url
    if not spec.model or not base_url:
        raise ConfigError(f"scorer {spec.label()}: {spec.kind} needs a model and a base_url (or --server)")
    client = client_for(base_url, spec.api_key_env)
    if spec.kind == "embedding":
        return embedding_scorer(client, spec.model, spec.reference), client
    return judge_scorer(client, spec.model, spec.rubric or DEFAULT_RUBRIC), client


def cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norm == 0:
        raise ScorerError("an embedding is all zeros")
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm


MAX_WINDOWS = 2048  # pieces one long text is split into at most: OpenAI's limit on inputs per request


class _TooLong(ScorerError):
    """The embedding model refused an input as longer than it reads."""


def _too_long(exc: openai.APIError) -> bool:
    """A 400 saying an input is longer than the model reads: this server's and OpenAI's code
    `context_length_exceeded`, or (vLLM, older OpenAI) no code and "maximum context length" in the message."""
    return isinstance(exc, openai.BadRequestError) and (
        exc.code == "context_length_exceeded" or "maximum context length" in (exc.message or "").lower())


async def _embed(client: openai.AsyncOpenAI, model: str, texts: list[str]) -> list[list[float]]:
    """One request's vectors, in the order of `texts`."""
    try:
        reply = await client.embeddings.create(model=model, input=texts, encoding_format="float")
    except openai.APIError as exc:
        error = _TooLong if _too_long(exc) else ScorerError
        raise error(f"embedding model {model}: {exc.message}") from exc
    vectors = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
    if len(vectors) != len(texts):
        raise ScorerError(f"embedding model {model} returned {len(vectors)} vectors for {len(texts)} inputs")
    return vectors


def windows(text: str, count: int) -> list[str]:
    """`text` in at most `count` consecutive pieces of (nearly) equal length: itself for one, whole words when
    it has at least `count` words (whitespace becomes one space), else characters. Whitespace-only pieces
    are left out."""
    if count <= 1:
        return [text]
    words = text.split()
    if len(words) >= count:
        size = math.ceil(len(words) / count)
        return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    size = math.ceil(len(text) / count)
    return [piece for piece in (text[i:i + size] for i in range(0, len(text), size)) if piece.strip()]


def mean_direction(vectors: list[list[float]], weights: list[int]) -> list[float]:
    """The weighted mean of the vectors made unit length (all-zero ones left out): the direction of the
    whole, whatever the lengths the model gives its vectors."""
    total = [0.0] * len(vectors[0])
    for vector, weight in zip(vectors, weights, strict=True):
        norm = math.sqrt(sum(x * x for x in vector))
        if norm > 0:
            total = [t + weight * x / norm for t, x in zip(total, vector, strict=True)]
    return total


async def _embed_long(client: openai.AsyncOpenAI, model: str, text: str) -> list[float]:
    """`text`'s vector, in as many windows as the model needs to read it all (1, 2, 4, ...): each window's
    unit vector, weighted by its words, averaged. ScorerError when even one-character pieces (or
    MAX_WINDOWS of them) are refused."""
    count = 1
    while True:
        pieces = windows(text, count)
        try:
            vectors = await _embed(client, model, pieces)
        except _TooLong:
            if count >= MAX_WINDOWS or max(len(p) for p in pieces) <= 1:
                raise
            count *= 2
            continue
        return vectors[0] if len(vectors) == 1 else mean_direction(vectors, [max(1, len(p.split())) for p in pieces])


def embedding_scorer(client: openai.AsyncOpenAI, model: str, fallback: str | None = None) -> ScoreFn:
    """Cosine similarity of the answer's and the reference's embeddings (the row's, else `fallback`).

    Both are embedded in one request. A text longer than the embedding model reads (all-MiniLM: 256 tokens)
    is refused, 400 context_length_exceeded, rather than cut to its beginning: it is then embedded in
    windows, consecutive pieces of equal word counts, halved (2, 4, 8, ... windows, one request each) until
    the model reads every one, and its vector is the mean of the windows' unit vectors weighted by their
    words, so every part of a long answer counts, none twice (no overlap). The client cannot know the
    model's limit or tokenizer (any OpenAI-compatible endpoint), so the refusal is what finds the size: a
    long text costs about log2(its tokens / the limit) + 2 requests more, a short one nothing."""
    async def score(answer: str, item: Item) -> float | None:
        reference = item.reference if item.reference is not None else fallback
        if reference is None:
            return None
        if not answer.strip():
            return 0.0
        try:
            vectors = await _embed(client, model, [answer, reference])
        except _TooLong:  # one of them, or both: each in the windows it needs
            vectors = [await _embed_long(client, model, answer), await _embed_long(client, model, reference)]
        return max(0.0, min(1.0, cosine(vectors[0], vectors[1])))

    return score


async def _ask_judge(client: openai.AsyncOpenAI, model: str, prompt: str) -> str:
    try:
        reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=96, temperature=0, seed=0)
    except openai.APIError as exc:
        raise ScorerError(f"judge {model}: {exc.message}") from exc
    return (reply.choices[0].message.content or "") if reply.choices else ""


def parse_grade(text: str) -> float:
    """'Score: 7' → 7/10 scaled to [0, 1] as (7 - 1) / 9."""
    found = _GRADE.findall(text)
    if not found:
        raise ScorerError("the judge gave no 'Score: N'", said=text)
    return (int(found[-1]) - 1) / 9


def judge_scorer(client: openai.AsyncOpenAI, model: str, rubric: str) -> ScoreFn:
    async def score(answer: str, item: Item) -> float | None:
        prompt = SINGLE.format(rubric=rubric, question=item.question, reference=_reference_block(item),
                               answer=answer)
        return parse_grade(await _ask_judge(client, model, prompt))

    return score


def parse_verdict(text: str) -> Literal["A", "B", "C"]:
    found = _VERDICT.findall(text)
    if not found:
        raise ScorerError(f"the judge gave no [[A]]/[[B]]/[[C]] verdict (said {text[:80]!r})")
    verdict: Literal["A", "B", "C"] = found[-1]
    return verdict


def combine(first_order: str, swapped: str) -> float:
    """First answer's score from the two verdicts: asked (x, y) then (y, x). A win only counts when both
    orders agree; a judge that always picks one position gives a tie."""
    x = {"A": 1.0, "B": 0.0, "C": 0.5}[first_order]
    y = {"A": 0.0, "B": 1.0, "C": 0.5}[swapped]
    return (x + y) / 2


async def pairwise(client: openai.AsyncOpenAI, model: str, rubric: str, item: Item, first: str,
                   second: str) -> float:
    """1.0: `first` is better in both orders; 0.0: `second` is; 0.5 a tie or an order-dependent verdict
    (0.75 / 0.25 when one order ties)."""
    def prompt(a: str, b: str) -> str:
        return PAIRWISE.format(rubric=rubric, question=item.question, reference=_reference_block(item),
                               first=a, second=b)

    one = parse_verdict(await _ask_judge(client, model, prompt(first, second)))
    two = parse_verdict(await _ask_judge(client, model, prompt(second, first)))
    return combine(one, two)
