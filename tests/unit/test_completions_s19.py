"""/v1/completions breadth, through the official openai client on the in-process app and the fake engine:
a list of prompts in one request (n choices each, numbered prompt index x n + j, usage summed, every prompt
counted by guardrails, tokens/min, billing, metrics and the cache), and `echo` (the prompt first, alone with
max_tokens 0, its tokens scored with logprobs where the engine can)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.pipeline.text import TextWork
from llmops.protocol.completions import CompletionRequest
from llmops.settings import ModelConfig, load_settings
from tests.conftest import FAKE_MODELS
from tests.helpers import write_config

MODELS = [*FAKE_MODELS, {"name": "fake-unscored", "engine": "fake", "options": {"prompt_logprobs": False}}]
ADMIN = "admin-secret-for-the-tests"
MAX_PROMPTS = 32  # protocol.completions.MAX_PROMPTS (checked below)


def _ready(config: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(config)), raise_server_exceptions=False) as tc:
        deadline = time.monotonic() + 30
        while tc.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.01)
        yield tc


def _openai(tc: TestClient, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=tc, max_retries=0)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    yield from _ready(write_config(tmp_path / "fake.yaml", MODELS))


@pytest.fixture
def client(app: TestClient) -> openai.OpenAI:
    return _openai(app)


def _words(text: str) -> int:
    return len(text.split())


# several prompts ------------------------------------------------------------------------------------------


def test_several_prompts_get_n_choices_each_numbered_as_openai_does(client: openai.OpenAI) -> None:
    prompts = ["hello there", "good bye now"]
    done = client.completions.create(model="fake", prompt=prompts, n=2, max_tokens=10)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert [c.text for c in done.choices] == ["echo: hello there"] * 2 + ["echo: good bye now"] * 2
    assert done.usage is not None
    # the fake engine counts words: each prompt once (not once per choice), every choice's answer
    assert done.usage.prompt_tokens == _words(prompts[0]) + _words(prompts[1])
    assert done.usage.completion_tokens == 2 * 3 + 2 * 4
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_a_list_of_one_prompt_is_one_prompt(client: openai.OpenAI) -> None:
    one = client.completions.create(model="fake", prompt=["just one"], max_tokens=5)
    assert [(c.index, c.text) for c in one.choices] == [(0, "echo: just one")]
    assert one.usage is not None
    assert one.usage.prompt_tokens == 2


def test_several_prompts_stream_each_chunk_with_its_choice_index(client: openai.OpenAI) -> None:
    prompts = ["alpha beta", "gamma delta epsilon", "zeta"]
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(model="fake", prompt=prompts, n=2, max_tokens=10, stream=True,
                                           stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason is not None:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts == {p * 2 + j: f"echo: {prompts[p]}" for p in range(3) for j in range(2)}
    assert finishes == dict.fromkeys(range(6), "stop")
    assert usage is not None
    assert usage.prompt_tokens == sum(_words(p) for p in prompts)
    assert usage.completion_tokens == 2 * sum(_words(p) + 1 for p in prompts)


def test_logprobs_for_every_choice_of_every_prompt(client: openai.OpenAI) -> None:
    done = client.completions.create(model="fake", prompt=["a b", "c"], max_tokens=5, logprobs=1)
    assert [c.logprobs.tokens if c.logprobs else None for c in done.choices] == [["echo:", " a", " b"],
                                                                                   ["echo:", " c"]]


def test_too_many_prompts_or_choices_are_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt=["x"] * (MAX_PROMPTS + 1), max_tokens=1)
    assert info.value.body["param"] == "prompt"  # type: ignore[index]
    assert f"at most {MAX_PROMPTS} prompts" in info.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:  # fake-fixed's max_n is 3: 11 x 3 choices > 32
        client.completions.create(model="fake-fixed", prompt=["x"] * 11, n=3, max_tokens=1)
    assert info.value.body["param"] == "n"  # type: ignore[index]
    assert "at most 32" in info.value.body["message"]  # type: ignore[index]
    ok = client.completions.create(model="fake-fixed", prompt=["x"] * MAX_PROMPTS, max_tokens=1)
    assert [c.index for c in ok.choices] == list(range(MAX_PROMPTS))
    from llmops.protocol import completions

    assert completions.MAX_PROMPTS == MAX_PROMPTS


@pytest.mark.parametrize("prompt", [[818, 7217, 563], [[818, 7217], [563]]])
def test_token_id_prompts_are_a_400_naming_prompt(client: openai.OpenAI, prompt: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt=prompt, max_tokens=1)
    assert info.value.body["param"] == "prompt"  # type: ignore[index]
    assert "token-id prompts are not supported" in info.value.body["message"]  # type: ignore[index]


def test_every_prompt_goes_through_the_input_guardrails(tmp_path: Path) -> None:
    rules = {"rules": [{"name": "words", "detector": "blocklist", "terms": ["forbidden"]},
                       {"name": "pii", "detector": "pii", "action": "redact", "entities": ["email"]}]}
    for tc in _ready(write_config(tmp_path / "g.yaml", MODELS, guardrails=rules)):
        client = _openai(tc)
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="fake", prompt=["fine", "this is forbidden"], max_tokens=3)
        assert info.value.body["param"] == "prompt"  # type: ignore[index]
        done = client.completions.create(model="fake", prompt=["fine", "mail me at a@b.example"], max_tokens=9,
                                         echo=True)
        assert "a@b.example" not in done.choices[1].text  # the echoed prompt is the one the model saw
        assert done.choices[0].text == "fineecho: fine"


def test_the_output_rules_read_an_echoed_prompt_with_its_answer(tmp_path: Path) -> None:
    """echo sends the prompt back as part of the answer: output rules read it, a match that begins in the
    prompt and ends in the answer included, streamed or not."""
    rules = {"rules": [{"name": "words", "detector": "blocklist", "stages": ["output"], "terms": ["key echo"]},
                       {"name": "pii", "detector": "pii", "stages": ["output"], "action": "redact",
                        "entities": ["email"]}]}
    for tc in _ready(write_config(tmp_path / "g.yaml", MODELS, guardrails=rules)):
        client = _openai(tc)
        done = client.completions.create(model="fake", prompt="mail me at a@b.example", max_tokens=0, echo=True)
        assert done.choices[0].text == "mail me at [REDACTED:email]"
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="fake", prompt="mail me at a@b.example", max_tokens=0, echo=True, stream=True) if c.choices)
        assert streamed == "mail me at [REDACTED:email]"
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="fake", prompt="open my key ", max_tokens=3, echo=True)
        assert info.value.body["code"] == "content_filter"  # type: ignore[index]
        # the fake engine answers "echo: <prompt>": "key echo" spans the prompt and the answer
        assert client.completions.create(model="fake", prompt="open my key ", max_tokens=3).choices[0].text


def test_the_cache_keys_a_list_of_prompts_on_the_whole_list(tmp_path: Path) -> None:
    for tc in _ready(write_config(tmp_path / "c.yaml", MODELS, cache={"enabled": True})):
        _cached_by_list(_openai(tc))


def _cached_by_list(client: openai.OpenAI) -> None:
    def ask(prompts: list[str]) -> tuple[str, list[str]]:
        raw = client.completions.with_raw_response.create(model="fake", prompt=prompts, temperature=0, max_tokens=5)
        return raw.headers["X-Cache"], [c.text for c in raw.parse().choices]

    assert ask(["one", "two"]) == ("miss", ["echo: one", "echo: two"])
    assert ask(["one", "two"]) == ("hit", ["echo: one", "echo: two"])
    assert ask(["two", "one"]) == ("miss", ["echo: two", "echo: one"])
    assert ask(["one"])[0] == "miss"  # not the list's first answer
    assert ask(["one", "two", "three"])[0] == "miss"


def test_metrics_count_every_prompt(app: TestClient, client: openai.OpenAI) -> None:
    def prompt_tokens() -> float:
        for line in app.get("/metrics").text.splitlines():
            if line.startswith('llmops_prompt_tokens_total{model="fake"}'):
                return float(line.split()[-1])
        return 0.0

    before = prompt_tokens()
    done = client.completions.create(model="fake", prompt=["a b c", "d e", "f"], n=2, max_tokens=3)
    assert done.usage is not None
    assert done.usage.prompt_tokens == 6
    assert prompt_tokens() - before == 6


# budgets and tokens/min -------------------------------------------------------------------------------------


def test_the_reservation_covers_every_prompt_times_n_times_max_tokens() -> None:
    config = ModelConfig(name="m", engine="fake", pricing={"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 2.0})
    body = CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 7})
    work = TextWork("completions", body, None, tuple(body.prompts()))
    assert work.choice_count == 6
    assert work.max_completion_tokens(config) == 3 * 2 * 7
    assert work.worst_case_usd(config, 10, 1.0) == pytest.approx((10 * 1.0 + 42 * 2.0) / 1000)
    assert work.texts() == ["a", "b", "c"]
    echo = CompletionRequest.model_validate({"model": "m", "prompt": "a", "echo": True, "max_tokens": 0})
    assert TextWork("completions", echo, None, ("a",)).max_completion_tokens(config) == 0


def test_tokens_per_minute_count_every_prompt(tmp_path: Path) -> None:
    """Each prompt alone fits the key's 20 tokens/min; the three of them in one request (about 9 tokens
    each, estimated from their characters) do not; and what a request used is counted for every prompt."""
    prompt = "word " * 6 + "words"  # 35 characters: about 9 tokens estimated, 7 counted by the fake engine
    cfg = write_config(tmp_path / "tpm.yaml", MODELS, auth={"admin_key": ADMIN, "key_refresh_s": 0})
    for tc in _ready(cfg):
        made = tc.post("/admin/keys", json={"name": "k", "tpm": 20}, headers={"Authorization": f"Bearer {ADMIN}"})
        client = _openai(tc, made.json()["secret"])
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model="fake", prompt=[prompt] * 3, max_tokens=1)
        assert "tokens/min" in info.value.body["message"]  # type: ignore[index]
        done = client.completions.create(model="fake", prompt=[prompt, "x"], max_tokens=1)
        assert done.usage is not None
        assert done.usage.prompt_tokens == 8
        # this minute: 8 prompt + 2 completion tokens used (had one prompt been counted: 7 + 2); the next asks
        # for 9 estimated + 2 reserved: 21 of 20 (20 would pass)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="fake", prompt=prompt + "s", max_tokens=2)


# echo -----------------------------------------------------------------------------------------------------


def test_echo_puts_each_choice_prompt_first(client: openai.OpenAI) -> None:
    done = client.completions.create(model="fake", prompt=["Say:", "Then:"], n=2, max_tokens=2, echo=True)
    assert [c.text for c in done.choices] == ["Say:echo: Say:"] * 2 + ["Then:echo: Then:"] * 2
    assert done.usage is not None
    assert done.usage.completion_tokens == 4 * 2


def test_echo_streams_the_prompt_as_each_choice_first_chunk(client: openai.OpenAI) -> None:
    firsts: dict[int, str] = {}
    texts: dict[int, str] = {}
    for chunk in client.completions.create(model="fake", prompt=["one two", "three"], n=2, max_tokens=3,
                                           echo=True, stream=True):
        for c in chunk.choices:
            firsts.setdefault(c.index, c.text)
            texts[c.index] = texts.get(c.index, "") + c.text
    assert firsts == {0: "one two", 1: "one two", 2: "three", 3: "three"}
    assert texts == {0: "one twoecho: one two", 1: "one twoecho: one two", 2: "threeecho: three",
                     3: "threeecho: three"}


def test_echo_with_max_tokens_zero_is_the_prompt_alone(client: openai.OpenAI) -> None:
    done = client.completions.create(model="fake", prompt=["The sky is", "Grass is"], max_tokens=0, echo=True)
    assert [(c.index, c.text, c.finish_reason) for c in done.choices] == [(0, "The sky is", "length"),
                                                                          (1, "Grass is", "length")]
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, 0)


def test_max_tokens_zero_without_echo_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt="hi", max_tokens=0)
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_echo_with_logprobs_scores_the_prompt_first(client: openai.OpenAI) -> None:
    """lm-evaluation-harness's loglikelihood request: echo, max_tokens 0, logprobs, a list of prompts."""
    done = client.completions.create(model="fake", prompt=["The sky", "is blue today"], max_tokens=0, echo=True,
                                     logprobs=1)
    first, second = (c.logprobs for c in done.choices)
    assert first is not None
    assert second is not None
    assert first.tokens == ["The", " sky"]
    assert first.text_offset == [0, 3]
    assert first.token_logprobs == [None, -0.5]
    assert first.top_logprobs == [None, {" sky": -0.5}]
    assert second.tokens == ["is", " blue", " today"]
    assert second.token_logprobs == [None, -0.5, -0.75]
    answered = client.completions.create(model="fake", prompt="a b", max_tokens=2, echo=True, logprobs=0)
    lp = answered.choices[0].logprobs
    assert answered.choices[0].text == "a becho: a"
    assert lp is not None
    assert lp.tokens == ["a", " b", "echo:", " a"]
    assert lp.text_offset == [0, 1, 3, 8]  # counted from the choice's start, the prompt included
    assert lp.token_logprobs == [None, -0.5, -0.25, -0.5]


def test_echo_with_logprobs_streams_the_scored_prompt_first(client: openai.OpenAI) -> None:
    chunks = [c for chunk in client.completions.create(model="fake", prompt="a b", max_tokens=1, echo=True,
                                                       logprobs=1, stream=True) for c in chunk.choices]
    assert chunks[0].text == "a b"
    assert chunks[0].logprobs is not None
    assert chunks[0].logprobs.tokens == ["a", " b"]
    assert chunks[0].logprobs.token_logprobs == [None, -0.5]
    assert chunks[1].text == "echo:"
    assert chunks[1].logprobs is not None
    assert chunks[1].logprobs.text_offset == [3]


def test_echo_with_logprobs_is_a_400_where_the_engine_cannot_score_a_prompt(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake-unscored", prompt="a b", max_tokens=0, echo=True, logprobs=1)
    assert info.value.body["param"] == "echo"  # type: ignore[index]
    assert info.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    assert "not supported by this model" in info.value.body["message"]  # type: ignore[index]
    plain = client.completions.create(model="fake-unscored", prompt="a b", max_tokens=1, echo=True)
    assert plain.choices[0].text == "a becho:"  # echo alone needs no scoring


def test_the_schema_documents_the_prompt_forms_and_echo(app: TestClient) -> None:
    schemas = app.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["CompletionRequest"]["properties"]
    forms = request["prompt"]["anyOf"]
    assert {"type": "string"} in forms
    listed = next(f for f in forms if f.get("type") == "array")
    assert listed["maxItems"] == MAX_PROMPTS
    assert listed["items"]["type"] == "string"
    assert request["echo"]["type"] == "boolean"
    assert request["max_tokens"]["anyOf"][0]["minimum"] == 0


async def test_an_upstream_engine_refuses_the_prompt_alone_before_calling_out() -> None:
    """max_tokens 0 reached an upstream as "max_tokens": 256 (0 read as unset): it generated what no one asked
    for; upstreams answer the prompt alone only with their own echo, which is not sent there."""
    from llmops.engines.base import SamplingParams, TextRequest
    from llmops.engines.upstream import UpstreamEngine, UpstreamOptions
    from llmops.errors import UnsupportedParameter

    engine = UpstreamEngine("up", UpstreamOptions(base_url="http://upstream.invalid/v1"))
    with pytest.raises(UnsupportedParameter) as info:
        await anext(engine.generate(TextRequest("r", SamplingParams(max_tokens=0), prompt="The sky is")))
    assert info.value.param == "max_tokens"
