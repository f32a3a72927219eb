"""Log probabilities: llama.cpp's format read into the engine's tokens, both wire shapes, the refusals, and
chat and completions end to end on the fake engine (its made-up logprobs: -0.25, -0.5, -0.75, -1.0 in turn;
alternatives ` alt1`, ` alt2`... each one less likely)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmops.api.chunks import ChunkEncoder
from llmops.app import create_app
from llmops.engines.base import (
    SamplingParams,
    TextCapabilities,
    TextChunk,
    TextRequest,
    TokenLogprob,
    ToolSpec,
)
from llmops.engines.textgen import LOGPROB_FLOOR, strip_leading_space, token_logprobs
from llmops.errors import UnsupportedParameter
from llmops.pipeline.chat_controls import check_capabilities
from llmops.settings import load_settings
from tests.helpers import write_config

# what llama.cpp's server (xllamacpp) sent for " Paris" with logprobs 2
LLAMA = {"content": [{"id": 7042, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115], "logprob": -0.2589,
                      "top_logprobs": [{"id": 7042, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115],
                                        "logprob": -0.2589},
                                       {"id": 260, "token": " the", "bytes": [32, 116, 104, 101], "logprob": -2.76}]}]}


def test_llama_cpp_logprobs_are_read_with_as_many_alternatives_as_asked() -> None:
    [paris] = token_logprobs(LLAMA, 2)
    assert (paris.token, paris.logprob, paris.bytes) == (" Paris", -0.2589, tuple(b" Paris"))
    assert [(a.token, a.logprob) for a in paris.top] == [(" Paris", -0.2589), (" the", -2.76)]
    assert [a.token for a in token_logprobs(LLAMA, 1)[0].top] == [" Paris"]
    assert token_logprobs(LLAMA, 0)[0].top == ()  # logprobs without alternatives


@pytest.mark.parametrize("found", [None, [], "x", {"content": None}, {"content": "x"}, {"content": [3, None]}])
def test_anything_but_a_content_list_is_no_tokens(found: Any) -> None:
    assert token_logprobs(found, 2) == []


def test_the_token_that_ended_the_answer_is_not_listed() -> None:
    """llama.cpp sends the end-of-turn token as an entry with no text and no bytes; OpenAI lists none."""
    found = {"content": [{"token": "Hello", "logprob": -0.1, "bytes": list(b"Hello"), "top_logprobs": []},
                         {"token": "", "logprob": -0.01, "bytes": [], "top_logprobs": []}]}
    assert [t.token for t in token_logprobs(found, 0)] == ["Hello"]


@pytest.mark.parametrize("value", [float("-inf"), float("nan"), None, "x", True, -1e12])
def test_a_log_probability_that_is_not_a_finite_number_is_openais_floor(value: Any) -> None:
    [token] = token_logprobs({"content": [{"token": "a", "logprob": value, "bytes": [300]}]}, 0)
    assert token.logprob == LOGPROB_FLOOR
    assert token.bytes is None
    assert json.dumps(token.logprob) == "-9999.0"  # always valid JSON


async def _chunks(*chunks: TextChunk) -> AsyncIterator[TextChunk]:
    for c in chunks:
        yield c


async def test_stripped_leading_whitespace_keeps_its_tokens_logprobs() -> None:
    space, word = TokenLogprob(" ", -0.1), TokenLogprob("Hi", -0.2)
    out = [c async for c in strip_leading_space(_chunks(TextChunk(" ", logprobs=(space,)),
                                                        TextChunk(" Hi", logprobs=(word,)),
                                                        TextChunk("", finish_reason="stop")))]
    assert [c.text for c in out] == ["Hi", ""]
    assert out[0].logprobs == (space, word)


def _request(logprobs: int | None, tools: ToolSpec | None = None) -> TextRequest:
    return TextRequest("r", SamplingParams(logprobs=logprobs), messages=(), tools=tools)


class _Engine:
    def __init__(self, caps: TextCapabilities) -> None:
        self.capabilities = caps


def test_logprobs_are_refused_where_they_cannot_be_honest() -> None:
    able = _Engine(TextCapabilities(tools=True, logprobs=True))
    check_capabilities(able, [_request(3)])
    check_capabilities(_Engine(TextCapabilities()), [_request(None)])
    refusals = [(_Engine(TextCapabilities()), _request(0), False),  # an engine that has none
                (able, _request(2, ToolSpec(({"type": "function", "function": {"name": "f"}},))), False),
                (able, _request(2), True)]  # output guardrails rewrite the text
    for engine, request, rewritten in refusals:
        with pytest.raises(UnsupportedParameter) as refused:
            check_capabilities(engine, [request], rewritten=rewritten)
        assert refused.value.param == "logprobs"


def test_streamed_completions_count_text_offsets_across_chunks() -> None:
    enc = ChunkEncoder("completions", "cmpl-1", 1, "m")
    first = json.loads(enc.text(0, "ab", (TokenLogprob("a", -1.0), TokenLogprob("b", -2.0)))[6:])
    second = json.loads(enc.text(0, "cd", (TokenLogprob("cd", -0.5, None, (TokenLogprob("cd", -0.5),)),))[6:])
    assert first["choices"][0]["logprobs"] == {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0],
                                               "top_logprobs": [{}, {}], "text_offset": [0, 1]}
    assert second["choices"][0]["logprobs"]["text_offset"] == [2]
    assert second["choices"][0]["logprobs"]["top_logprobs"] == [{"cd": -0.5}]


@pytest.fixture
def fake(tmp_path: Path) -> TestClient:
    models = [{"name": "fake-fixed", "engine": "fake", "options": {"reply": "one two three four five six"},
               "limits": {"max_n": 3}}]
    app = create_app(load_settings(write_config(tmp_path / "c.yaml", models, cache={"enabled": True})))
    return TestClient(app, raise_server_exceptions=False)


def _chat(client: TestClient, **body: Any) -> Any:
    payload = {"model": "fake-fixed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    return client.post("/v1/chat/completions", json=payload)


def _ready(client: TestClient) -> None:
    for _ in range(500):
        if client.get("/ready").status_code == 200:
            return
    raise AssertionError("the fake model never became ready")


def test_chat_answers_each_tokens_logprob_and_its_alternatives(fake: TestClient) -> None:
    with fake:
        _ready(fake)
        answer = _chat(fake, logprobs=True, top_logprobs=2, n=2).json()
        for choice in answer["choices"]:
            content = choice["logprobs"]["content"]
            assert "".join(t["token"] for t in content) == choice["message"]["content"] == "one two three four"
            assert [t["logprob"] for t in content] == [-0.25, -0.5, -0.75, -1.0]
            assert content[1]["top_logprobs"] == [{"token": " two", "logprob": -0.5, "bytes": list(b" two")},
                                                  {"token": " alt1", "logprob": -1.5, "bytes": list(b" alt1")}]
            assert choice["logprobs"]["refusal"] is None
        plain = _chat(fake).json()
        assert plain["choices"][0]["logprobs"] is None
        none = _chat(fake, logprobs=True).json()["choices"][0]["logprobs"]["content"]
        assert [t["top_logprobs"] for t in none] == [[], [], [], []]  # no alternatives asked for


def test_streamed_chat_chunks_carry_their_tokens_logprobs(fake: TestClient) -> None:
    with fake:
        _ready(fake)
        with fake.stream("POST", "/v1/chat/completions", json={
                "model": "fake-fixed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "stream": True, "logprobs": True, "top_logprobs": 1}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        tokens = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["content"]]
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        assert "".join(t["token"] for t in tokens) == text == "one two three"
        assert all(len(t["top_logprobs"]) == 1 for t in tokens)


def test_completions_answer_the_legacy_shape(fake: TestClient) -> None:
    with fake:
        _ready(fake)
        answer = fake.post("/v1/completions", json={"model": "fake-fixed", "prompt": "hi", "max_tokens": 3,
                                                    "logprobs": 2}).json()
        lp = answer["choices"][0]["logprobs"]
        assert lp["tokens"] == ["one", " two", " three"]
        assert lp["text_offset"] == [0, 3, 7]
        assert lp["token_logprobs"] == [-0.25, -0.5, -0.75]
        assert lp["top_logprobs"][2] == {" three": -0.75, " alt1": -1.75}
        assert all(list(top.values()) == sorted(top.values(), reverse=True) for top in lp["top_logprobs"])


def test_logprobs_are_part_of_the_cache_key(fake: TestClient) -> None:
    """A cached answer without logprobs must not answer a request that asks for them (and the other way)."""
    with fake:
        _ready(fake)
        first = _chat(fake, temperature=0)
        assert first.headers["x-cache"] == "miss"
        asked = _chat(fake, temperature=0, logprobs=True)
        assert asked.headers["x-cache"] == "miss"
        assert asked.json()["choices"][0]["logprobs"]["content"]
        again = _chat(fake, temperature=0, logprobs=True)
        assert again.headers["x-cache"] == "hit"
        assert again.json()["choices"][0]["logprobs"] == asked.json()["choices"][0]["logprobs"]


def test_top_logprobs_without_logprobs_and_out_of_range_values_are_invalid(fake: TestClient) -> None:
    with fake:
        _ready(fake)
        for body, param in (({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21},
                                                                    "top_logprobs")):
            r = _chat(fake, **body)
            assert r.status_code == 400, r.json()
            assert r.json()["error"]["param"] == param
        assert _chat(fake, top_logprobs=0).status_code == 200  # no alternatives: nothing asked for
        r = fake.post("/v1/completions", json={"model": "fake-fixed", "prompt": "hi", "logprobs": 6})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "logprobs"
