"""The real Gemma 3 270M GGUF through transformers (dequantized, converted once and cached)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmops.engines.base import Message, SamplingParams, TextRequest
from llmops.engines.transformers import TransformersEngine, TransformersOptions
from llmops.errors import ContextLengthExceeded
from tests.model.conftest import require, run

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[TransformersEngine]:
    require("transformers")
    require("torch")
    e = TransformersEngine("gemma-hf", TransformersOptions(n_threads=1, context_length=256))
    await e.start()
    yield e
    await e.close()


async def test_greedy_completion_and_token_counts(engine: TransformersEngine) -> None:
    prompt = "The capital of France is"
    text, prompt_tokens, completion_tokens, finish = await run(
        engine, TextRequest("r", SamplingParams(max_tokens=8, temperature=0), prompt=prompt))
    assert text.strip()
    assert prompt_tokens == engine.count_tokens(prompt)
    assert completion_tokens == 8
    assert finish == "length"


async def test_chat_through_fallback_template(engine: TransformersEngine) -> None:
    msgs = (Message("user", "What is the capital of France?"),)
    text, _, completion_tokens, finish = await run(
        engine, TextRequest("r", SamplingParams(max_tokens=16, temperature=0), messages=msgs))
    assert text.strip()
    assert "\nUser:" not in text
    assert 0 < completion_tokens <= 16
    assert finish in ("stop", "length")


async def test_same_seed_same_text(engine: TransformersEngine) -> None:
    def req() -> TextRequest:
        return TextRequest("r", SamplingParams(max_tokens=8, temperature=0.9, seed=99), prompt="Once upon a time")

    assert (await run(engine, req()))[0] == (await run(engine, req()))[0]


async def test_context_length_is_checked(engine: TransformersEngine) -> None:
    with pytest.raises(ContextLengthExceeded):
        await run(engine, TextRequest("r", SamplingParams(max_tokens=300), prompt="hi"))


async def test_concurrent_requests_decode_as_one_batch(engine: TransformersEngine) -> None:
    prompts = ["The capital of France is", "Once upon a time", "The best way to cook rice is", "Dogs are"]
    budgets = [4, 6, 8, 5]
    results = await asyncio.gather(*(
        run(engine, TextRequest(f"r{i}", SamplingParams(max_tokens=b, temperature=0), prompt=p))
        for i, (p, b) in enumerate(zip(prompts, budgets, strict=True))))
    assert max(engine.health().detail["recent_batch_sizes"]) > 1  # type: ignore[call-overload]
    for (text, prompt_tokens, completion_tokens, finish), p, b in zip(results, prompts, budgets, strict=True):
        assert text.strip()
        assert prompt_tokens == engine.count_tokens(p)
        assert completion_tokens <= b
        assert finish == "length" or completion_tokens < b


async def test_leaving_one_row_early_leaves_the_others(engine: TransformersEngine) -> None:
    async def abandon() -> None:
        it = engine.generate(TextRequest("a", SamplingParams(max_tokens=30, temperature=0), prompt="One two three"))
        await anext(it)
        await it.aclose()

    keep = asyncio.create_task(run(engine, TextRequest("k", SamplingParams(max_tokens=12, temperature=0),
                                                       prompt="Four five six")))
    await abandon()
    text, _, completion_tokens, _ = await keep
    assert text.strip()
    assert completion_tokens > 1
