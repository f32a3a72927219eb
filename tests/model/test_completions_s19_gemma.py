"""Several prompts and echo on the real default engine (Gemma 3 270M on llama.cpp, one thread), through the
official openai client on the in-process app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers import ready_client, write_config
from tests.model.conftest import require

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    require("xllamacpp")
    cfg = write_config(tmp_path_factory.mktemp("s19") / "gemma.yaml", [
        {"name": MODEL, "engine": "llamacpp", "options": {"n_threads": 1, "n_parallel": 2, "context_length": 512}}])
    with ready_client(Path(cfg), timeout=300) as tc:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=tc, max_retries=0)


def test_two_prompts_get_two_choices_in_order(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    done = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in done.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in done.choices)
    echoed = client.completions.create(model=MODEL, prompt=prompts, max_tokens=2, temperature=0, echo=True)
    assert [c.index for c in echoed.choices] == [0, 1]
    assert [c.text[:len(p)] for c, p in zip(echoed.choices, prompts, strict=True)] == prompts  # each in its place
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=1).usage for p in prompts]
    assert done.usage is not None
    assert done.usage.prompt_tokens == sum(u.prompt_tokens for u in alone if u is not None)  # llama.cpp's counts


def test_echo_and_the_prompt_alone(client: openai.OpenAI) -> None:
    done = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, echo=True)
    assert done.choices[0].text.startswith("The sky is")
    alone = client.completions.create(model=MODEL, prompt=["The sky is", "Grass is"], max_tokens=0, echo=True)
    assert [c.text for c in alone.choices] == ["The sky is", "Grass is"]
    assert alone.usage is not None
    assert alone.usage.completion_tokens == 0


def test_echo_with_logprobs_is_a_400_on_llama_cpp(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="The sky is", max_tokens=0, echo=True, logprobs=1)
    assert info.value.body["param"] == "echo"  # type: ignore[index]
