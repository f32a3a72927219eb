"""Eval scorers, dataset loading and the online evaluator, in-process. The embedding and judge endpoints are
small fakes behind httpx's MockTransport speaking the OpenAI wire format."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.engines.base import Message
from llmops.errors import ConfigError
from llmops.eval.dataset import load_rows, load_spec, parse_rows
from llmops.eval.models import combine, embedding_scorer, judge_scorer, pairwise, parse_grade
from llmops.eval.online import OnlineEvaluator
from llmops.eval.scorers import Item, ScorerError, build
from llmops.observability.metrics import Metrics
from llmops.settings import EvalScorer, OnlineEval, RouteConfig, load_settings

EVALS = Path(__file__).resolve().parents[2] / "evals"


def score(kind: str, answer: str, item: Item, **spec: Any) -> float | None:
    return asyncio.run(build(EvalScorer(kind=kind, **spec), None).score(answer, item))  # type: ignore[arg-type]


def test_exact_and_contains() -> None:
    item = Item("capital of France?", "Paris")
    assert score("exact", "  paris. ", item) == 1.0
    assert score("exact", "Paris", item, ignore_case=False) == 1.0
    assert score("exact", "The capital is Paris", item) == 0.0
    assert score("contains", "The capital is Paris.", item) == 1.0
    assert score("contains", "Parisian food", item) == 0.0  # whole words only
    assert score("contains", "It has seven days", Item("q", "7|seven")) == 1.0  # alternatives
    assert score("contains", "anything", Item("q")) is None  # no reference: not applicable
    assert score("contains", "yes", Item("q"), reference="yes") == 1.0  # the spec's reference


def test_regex_uses_the_rows_pattern() -> None:
    row = Item("Reply yes", "yes", {"pattern": r"^\W*[Yy]es\W*$"})
    assert score("regex", "Yes.", row) == 1.0
    assert score("regex", "Yes, of course", row) == 0.0
    assert score("regex", "Yes", Item("q", "yes")) is None
    assert score("regex", "abc123", Item("q"), pattern=r"\d+") == 1.0
    with pytest.raises(ScorerError, match="bad pattern"):
        score("regex", "x", Item("q", None, {"pattern": "("}))


def test_json_valid_and_schema() -> None:
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"const": "Alice"}, "age": {"const": 30}}}
    item = Item("extract", None, {"schema": schema})
    assert score("json_valid", '{"a": 1}', item) == 1.0
    assert score("json_valid", '```json\n{"a": 1}\n```', item) == 1.0
    assert score("json_valid", "name: Alice", item) == 0.0
    assert score("json_schema", '{"name": "Alice", "age": 30}', item) == 1.0
    assert score("json_schema", '{"name": "Alice", "age": "30"}', item) == 0.0
    assert score("json_schema", "not json", item) == 0.0
    wrapped = 'JSON: {"name": "Alice", "age": 30} as asked'
    assert score("json_schema", wrapped, item) == 0.0  # strict: the whole answer must be JSON
    assert score("json_schema", wrapped, item, json_in_text=True) == 1.0
    assert score("json_valid", "x [1, 2 } {bad", item, json_in_text=True) == 0.0
    assert score("json_schema", "{}", Item("q")) is None
    with pytest.raises(ConfigError, match="bad JSON schema"):
        build(EvalScorer(kind="json_schema", json_schema={"type": "nonsense"}), None)


def test_numeric() -> None:
    assert score("numeric", "About 3.14159 I think", Item("pi?", "3.14")) == 1.0
    assert score("numeric", "It is 1,000", Item("q", "1000")) == 1.0
    assert score("numeric", "42", Item("q", "41"), rel_tol=0.0, abs_tol=0.5) == 0.0
    assert score("numeric", "no number", Item("q", "7")) == 0.0
    assert score("numeric", "7", Item("q", "Paris")) is None


def test_scorer_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="needs a model"):
        EvalScorer(kind="judge")
    with pytest.raises(ValueError, match="not a regular expression"):
        EvalScorer(kind="regex", pattern="(")
    with pytest.raises(ValueError, match="needs a base_url"):
        OnlineEval(scorers=[EvalScorer(kind="judge", model="m")])


def fake_openai(handler: Callable[[dict[str, Any]], dict[str, Any]], calls: list[dict[str, Any]]) -> openai.AsyncOpenAI:
    def respond(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append({"path": request.url.path, **body})
        return httpx.Response(200, json=handler(body))

    return openai.AsyncOpenAI(base_url="http://fake/v1", api_key="x", max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.MockTransport(respond)))


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    vectors = {"Paris": [1.0, 0.0], "It is Paris": [0.8, 0.6], "Berlin": [0.0, 1.0]}
    data = [{"object": "embedding", "index": i, "embedding": vectors[t]} for i, t in enumerate(body["input"])]
    return {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 2, "total_tokens": 2}}


def chat(text: str) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def test_embedding_similarity_against_a_fake_endpoint() -> None:
    calls: list[dict[str, Any]] = []
    scorer = embedding_scorer(fake_openai(embeddings, calls), "embed")
    assert asyncio.run(scorer("It is Paris", Item("q", "Paris"))) == pytest.approx(0.8)
    assert asyncio.run(scorer("Berlin", Item("q", "Paris"))) == 0.0
    assert asyncio.run(scorer("x", Item("q"))) is None
    assert calls[0] == {"path": "/v1/embeddings", "model": "embed", "input": ["It is Paris", "Paris"],
                        "encoding_format": "float"}
    assert len(calls) == 2  # no reference: no call


def test_single_answer_judge() -> None:
    calls: list[dict[str, Any]] = []
    scorer = judge_scorer(fake_openai(lambda body: chat("Correct and brief. Score: 10"), calls), "judge", "Be right.")
    assert asyncio.run(scorer("Paris", Item("Capital of France?", "Paris"))) == 1.0
    prompt = calls[0]["messages"][0]["content"]
    assert "Be right." in prompt
    assert "Capital of France?" in prompt
    assert "Paris" in prompt
    assert parse_grade("meh. Score: 1") == 0.0
    with pytest.raises(ScorerError, match="no 'Score: N'"):
        parse_grade("I like it")


def test_pairwise_swaps_order_so_position_bias_cannot_win() -> None:
    calls: list[dict[str, Any]] = []
    always_first = fake_openai(lambda body: chat("The first is better. [[A]]"), calls)
    item = Item("Capital of France?", "Paris")
    assert asyncio.run(pairwise(always_first, "judge", "r", item, "Paris", "Berlin")) == 0.5
    assert len(calls) == 2
    first_prompt, second_prompt = (c["messages"][0]["content"] for c in calls)
    assert first_prompt.index("Paris\n\nAnswer B") < first_prompt.index("Berlin")
    assert second_prompt.index("Berlin\n\nAnswer B") < second_prompt.index("Answer B:\nParis")

    def knows(body: dict[str, Any]) -> dict[str, Any]:  # prefers the answer saying Paris, wherever it is
        answer_a = body["messages"][0]["content"].split("Answer A:\n")[1].split("\n")[0]
        return chat("[[A]]" if answer_a == "Paris" else "[[B]]")

    assert asyncio.run(pairwise(fake_openai(knows, []), "judge", "r", item, "Paris", "Berlin")) == 1.0
    assert asyncio.run(pairwise(fake_openai(knows, []), "judge", "r", item, "Berlin", "Paris")) == 0.0
    assert combine("C", "C") == 0.5
    assert combine("A", "C") == 0.75


def test_malformed_rows_are_reported_with_line_numbers(tmp_path: Path) -> None:
    lines = ['{"id": "a", "input": "q", "reference": "r"}', "", "{not json", '{"id": "b"}',
             '{"id": "a", "input": "again"}', '{"id": "c", "input": "q", "extra": 1}',
             '{"id": "d", "messages": [{"role": "user", "content": "hi"}]}']
    rows, errors = parse_rows(lines)
    assert [r.id for r in rows] == ["a", "d"]
    assert [e.line for e in errors] == [3, 4, 5, 6]
    assert "not JSON" in str(errors[0])
    assert "needs input, messages or variables" in str(errors[1])
    assert "repeats" in str(errors[2])
    assert "extra" in str(errors[3])
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines))
    assert len(load_rows(path, "skip")[0]) == 2
    with pytest.raises(ConfigError, match=r"d.jsonl:line 3: not JSON"):
        load_rows(path, "fail")


@pytest.mark.parametrize(("spec", "dev", "heldout"), [("facts.yaml", 100, 30), ("extraction.yaml", 15, 5)])
def test_shipped_datasets_load_cleanly(spec: str, dev: int, heldout: int) -> None:
    loaded = load_spec(EVALS / spec)
    rows, errors = load_rows(loaded.path("dev"), "fail")
    held, held_errors = load_rows(loaded.path("heldout"), "fail")
    assert (len(rows), len(held), errors, held_errors) == (dev, heldout, [], [])
    assert not {r.id for r in rows} & {r.id for r in held}
    assert not {r.input for r in rows} & {r.input for r in held}  # the held-out split is new questions
    for row in rows + held:  # every reference passes its own scorers
        item = Item(row.input or "", row.reference, row.metadata)
        for s in loaded.scorers:
            if s.kind == "json_schema":
                assert score("json_schema", row.reference or "", item) == 1.0
            elif s.kind == "contains":
                assert score("contains", (row.reference or "").split("|")[0], item) == 1.0


def test_online_evaluator_samples_scores_and_exports() -> None:
    metrics = Metrics()
    route = RouteConfig(name="chat", variants=[{"model": "a"}, {"model": "b"}],  # type: ignore[list-item]
                        online_eval=OnlineEval(sample=0.5, window=2, scorers=[EvalScorer(kind="regex",
                                                                                         pattern="Paris")]))
    pending: list[Coroutine[Any, Any, None]] = []
    draws = iter([0.1, 0.9, 0.2, 0.3, 0.4])
    evaluator = OnlineEvaluator([route], metrics, pending.append, rng=lambda: next(draws))
    question = [Message("user", "Capital of France?")]
    evaluator.observe("chat", "a", question, "Paris")  # sampled (0.1 < 0.5)
    evaluator.observe("chat", "a", question, "Paris")  # not sampled (0.9)
    evaluator.observe("chat", "b", question, "Lyon")
    evaluator.observe("chat", "a", question, "Lyon")
    evaluator.observe("chat", "a", question, "Lyon")  # window 2: the first Paris drops out
    evaluator.observe("other", "a", question, "Paris")  # route without online eval: ignored
    evaluator.observe(None, "a", question, "Paris")
    assert len(pending) == 4  # nothing scored on the caller's time

    async def drain() -> None:
        for work in pending:
            await work

    asyncio.run(drain())
    value = metrics.registry.get_sample_value
    assert value("llmops_eval_score", {"route": "chat", "variant": "a", "scorer": "regex"}) == 0.0
    assert value("llmops_eval_score", {"route": "chat", "variant": "b", "scorer": "regex"}) == 0.0
    assert value("llmops_eval_samples_total", {"route": "chat", "variant": "a", "scorer": "regex"}) == 3


def short_reading_embeddings(limit: int, refusal: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    """An embeddings endpoint reading at most `limit` words per input, refusing longer ones with `refusal`
    (an OpenAI error object) as a real model does; a text's vector counts its words Paris and Berlin."""
    def respond(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        words = [re.findall(r"\w+", text) for text in body["input"]]
        for index, said in enumerate(words):
            if len(said) > limit:
                return httpx.Response(400, json={"error": {**refusal, "param": refusal.get("param", f"input.{index}")}})
        data = [{"object": "embedding", "index": i, "embedding": [float(w.count("Paris")), float(w.count("Berlin"))]}
                for i, w in enumerate(words)]
        return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"],
                                         "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    return respond


OURS = {"message": "Invalid 'input.0': this model's maximum context length is 8 tokens, however the input has 20 "
                   "tokens (special tokens included). Embed it in shorter pieces.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}
VLLM = {"message": "This model's maximum context length is 8 tokens. However, you requested 20 tokens in the input "
                   "for embedding generation. Please reduce the length of the input.",
        "type": "BadRequestError", "param": None, "code": 400}


def recording(respond: Callable[[httpx.Request], httpx.Response], calls: list[list[str]]) -> openai.AsyncOpenAI:
    def record(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content)["input"])
        return respond(request)

    return openai.AsyncOpenAI(base_url="http://fake/v1", api_key="x", max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.MockTransport(record)))


@pytest.mark.parametrize("refusal", [OURS, VLLM], ids=["context_length_exceeded", "maximum-context-length-message"])
def test_embedding_similarity_of_a_text_longer_than_the_model_reads(refusal: dict[str, Any]) -> None:
    """A long answer is scored from windows the model reads, not failed: half of it says Paris, half Berlin,
    so its direction is halfway between (cos 45° to the reference Paris)."""
    calls: list[list[str]] = []
    scorer = embedding_scorer(recording(short_reading_embeddings(8, refusal), calls), "embed")
    answer = "Paris " * 10 + "Berlin\n" * 10
    assert asyncio.run(scorer(answer, Item("q", "Paris"))) == pytest.approx(0.5 ** 0.5)
    assert calls[0] == [answer, "Paris"]  # one request, as for short texts: refused
    assert calls[1:4] == [[answer], [" ".join(["Paris"] * 10), " ".join(["Berlin"] * 10)],  # 1, 2: refused
                          ["Paris Paris Paris Paris Paris"] * 2 + ["Berlin Berlin Berlin Berlin Berlin"] * 2]
    assert calls[4:] == [["Paris"]]  # the short reference, whole
    calls.clear()
    assert asyncio.run(scorer("Paris " * 30, Item("q", "Paris " * 9))) == pytest.approx(1.0)  # both too long
    assert asyncio.run(scorer("Paris", Item("q", "Paris"))) == 1.0
    assert calls[-1] == ["Paris", "Paris"]  # short texts: one request, as before


def test_embedding_refusals_that_splitting_cannot_help_fail_the_item() -> None:
    """A model that refuses every input as too long ends in ScorerError after a bounded number of requests
    (down to one-character pieces), and any other 400 is not retried at all."""
    calls: list[list[str]] = []
    scorer = embedding_scorer(recording(short_reading_embeddings(-1, OURS), calls), "embed")
    with pytest.raises(ScorerError, match="maximum context length"):
        asyncio.run(scorer("Paris Berlin", Item("q", "Paris")))
    assert len(calls) == 1 + 5  # [both]; the answer whole, in 2 words, then 4, 8 and 16 pieces of characters
    assert calls[-3:] == [["Par", "is ", "Ber", "lin"], ["Pa", "ri", "s ", "Be", "rl", "in"], list("ParisBerlin")]
    calls.clear()
    other = {"message": "model not found", "type": "invalid_request_error", "code": "model_not_found"}
    scorer = embedding_scorer(recording(short_reading_embeddings(-1, other), calls), "embed")
    with pytest.raises(ScorerError, match="model not found"):
        asyncio.run(scorer("Paris", Item("q", "Paris")))
    assert len(calls) == 1


def test_embedding_scorer_reads_a_long_answer_through_this_server() -> None:
    """Against this server's own /v1/embeddings (the fake engine reading at most 8 words an input, refusing
    longer ones as a real model does): a long answer is scored, and it scores as its words say."""
    models = [{"name": "emb", "kind": "embeddings", "engine": "fake-embeddings",
               "options": {"size": 64, "max_seq_length": 8}}]
    with TestClient(create_app(load_settings(None, models=models, state={"backend": "memory"}))) as server:
        def forward(request: httpx.Request) -> httpx.Response:
            reply = server.post(request.url.path, content=request.content,
                                headers={"content-type": "application/json"})
            return httpx.Response(reply.status_code, content=reply.content, headers=reply.headers)

        client = openai.AsyncOpenAI(base_url="http://fake/v1", api_key="x", max_retries=0,
                                    http_client=httpx.AsyncClient(transport=httpx.MockTransport(forward)))
        scorer = embedding_scorer(client, "emb")
        reference = "the capital of France is Paris"
        long_right = " ".join([reference] * 12)  # 72 words
        long_wrong = " ".join(["Berlin lies on the Spree in Germany"] * 12)
        assert server.post("/v1/embeddings", json={"model": "emb", "input": long_right}).json()["error"]["code"] \
            == "context_length_exceeded"
        right = asyncio.run(scorer(long_right, Item("q", reference)))
        wrong = asyncio.run(scorer(long_wrong, Item("q", reference)))
        assert right is not None
        assert wrong is not None
        assert right > 0.9 > 0.5 > wrong
