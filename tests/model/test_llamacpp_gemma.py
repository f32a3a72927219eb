"""The real Gemma 3 270M GGUF on llama.cpp (xllamacpp), one thread, greedy and seeded generation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from llmops.engines import llamacpp
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


async def test_prompt_sent_as_text_or_as_tokens_gives_the_same_answer_and_counts(
        engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def req() -> TextRequest:
        return TextRequest("r", SamplingParams(max_tokens=10, temperature=0), prompt="The capital of France is")

    as_text = await run(engine, req())  # short prompt: sent as text, llama.cpp counts it
    monkeypatch.setattr(llamacpp, "TOKENIZER_MARGIN", 10_000)  # no bound fits: counted over the listener first
    as_tokens = await run(engine, req())
    assert as_text == as_tokens
    assert as_text[1] == len(await engine.tokenize("The capital of France is"))


async def test_a_request_that_does_not_stream_gets_the_same_answer_in_one_piece(engine: LlamaCppEngine) -> None:
    def req(stream: bool) -> TextRequest:
        return TextRequest("r", SamplingParams(max_tokens=16, temperature=0), prompt="Once upon a time", stream=stream)

    chunks = [c async for c in engine.generate(req(False))]
    assert len(chunks) == 2  # the whole text, then the finish with usage
    assert chunks[0].text == (await run(engine, req(True)))[0]
    assert chunks[1].usage is not None
    assert chunks[1].usage.completion_tokens == 16


async def test_requests_beyond_the_slots_wait_in_llama_cpp_queue_and_complete(engine: LlamaCppEngine) -> None:
    assert engine.capacity == 2 * engine.options.n_parallel  # queue_ahead defaults to n_parallel
    reqs = [TextRequest(f"r{i}", SamplingParams(max_tokens=8, temperature=0), prompt=f"Count to {i}:")
            for i in range(engine.capacity)]
    results = await asyncio.gather(*(run(engine, r) for r in reqs))
    assert [r[2] for r in results] == [8] * engine.capacity
