"""The real Gemma 3 270M GGUF on llama.cpp (xllamacpp), one thread, greedy and seeded generation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from llmops.engines.base import Message, SamplingParams, TextRequest
from llmops.engines.llamacpp import LlamaCppEngine, LlamaCppOptions
from llmops.errors import ContextLengthExceeded
from tests.model.conftest import require, run


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    require("xllamacpp")
    e = LlamaCppEngine("gemma", LlamaCppOptions(n_threads=1, n_parallel=2, context_length=512))
    await e.start()
    yield e
    await e.close()


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_greedy_completion_and_token_counts(engine: LlamaCppEngine) -> None:
    prompt = "The capital of France is"
    text, prompt_tokens, completion_tokens, finish = await run(
        engine, TextRequest("r", SamplingParams(max_tokens=12, temperature=0), prompt=prompt))
    assert text.strip()
    assert prompt_tokens == len(await engine.tokenize(prompt))
    assert completion_tokens == 12
    assert finish == "length"


async def test_chat_through_fallback_template_answers(engine: LlamaCppEngine) -> None:
    assert engine.health().detail["chat_template"] == "fallback"
    msgs = (Message("user", "What is the capital of France?"),)
    text, _, _, finish = await run(engine, TextRequest("r", SamplingParams(max_tokens=30, temperature=0),
                                                       messages=msgs))
    assert text.strip()
    assert "<|im" not in text
    assert not text.startswith(" ")
    assert finish in ("stop", "length")


async def test_same_seed_same_text(engine: LlamaCppEngine) -> None:
    def req() -> TextRequest:
        return TextRequest("r", SamplingParams(max_tokens=16, temperature=0.9, seed=1234), prompt="Once upon a time")

    assert (await run(engine, req()))[0] == (await run(engine, req()))[0]


async def test_context_length_is_checked(engine: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthExceeded):
        await run(engine, TextRequest("r", SamplingParams(max_tokens=600), prompt="hi"))


async def test_internal_listener_refuses_requests_without_its_key(engine: LlamaCppEngine) -> None:
    address = engine.internal_address
    assert address is not None
    assert address.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(base_url=address) as c:
        for path in ("/v1/chat/completions", "/completion", "/v1/completions"):
            r = await c.post(path, json={"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 401, path
        assert (await c.get("/v1/models")).status_code == 401
