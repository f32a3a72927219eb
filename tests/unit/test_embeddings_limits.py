"""Embeddings robustness: token ids are checked (the protocol's range, the model's vocabulary) and refused for
that request only; an input longer than the model reads is refused (400 context_length_exceeded naming it),
not cut; one request that fails in the sentence-transformers engine's batch fails alone (a stub
model stands in for sentence-transformers); a large answer's body is written off the event loop, byte for
byte as JSONResponse would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from llmops.api import embeddings as api_embeddings
from llmops.engines import embeddings as st_engine
from llmops.errors import ContextLengthExceeded, EngineError, InvalidRequest
from llmops.protocol.embeddings import EmbeddingList
from tests.helpers import ready_client, write_config
from tests.unit.test_api import assert_error

EMBED = "/v1/embeddings"
LARGE = 100  # inputs: 1,600 numbers with 16 dimensions, above api.embeddings.OFF_LOOP_VALUES
MODELS: list[dict[str, Any]] = [
    {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16}},
    {"name": "vocab", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16, "vocab_size": 100}},
    {"name": "short", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16, "max_seq_length": 4}},
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with ready_client(write_config(tmp_path / "emb.yaml", MODELS, state={"backend": "memory"}), 30) as c:
        yield c


# --- token ids ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids", [[[-1, 5, 6]], [[10**30]], [[2**31]], [-1, 5], [[1, 2], [3, -4]]])
def test_token_ids_outside_the_protocols_range_are_a_400(client: TestClient, ids: Any) -> None:
    assert_error(client.post(EMBED, json={"model": "emb", "input": ids}), 400, param="input")


def test_token_ids_outside_the_models_vocabulary_are_a_400(client: TestClient) -> None:
    assert_error(client.post(EMBED, json={"model": "vocab", "input": [[1, 100]]}), 400, param="input")
    assert client.post(EMBED, json={"model": "vocab", "input": [[0, 99]]}).status_code == 200
    assert client.post(EMBED, json={"model": "emb", "input": [[0, 2**31 - 1]]}).status_code == 200


# --- inputs longer than the model reads (the fake engine's tokens: words, or ids) -----------------------------

def _too_long(resp: Any, param: str, tokens: int, limit: int = 4) -> None:
    err = assert_error(resp, 400, param=param, code="context_length_exceeded")
    assert err["type"] == "invalid_request_error"
    assert f"'{param}'" in err["message"]
    assert f"maximum context length is {limit} tokens" in err["message"]
    assert f"has {tokens} tokens" in err["message"]


@pytest.mark.parametrize(("given", "param", "tokens"), [
    ("one two three four five", "input", 5),  # one text
    (["a b", "one two three four five six", "c"], "input.1", 6),  # a list: the item's place in it
    (["one two three four five"], "input.0", 5),
    ([1, 2, 3, 4, 5], "input", 5),  # one list of token ids
    ([[1], [1, 2, 3], [1, 2, 3, 4, 5, 6, 7]], "input.2", 7),
])
def test_an_input_longer_than_the_model_reads_is_a_400(client: TestClient, given: Any, param: str,
                                                       tokens: int) -> None:
    _too_long(client.post(EMBED, json={"model": "short", "input": given}), param, tokens)


def test_an_input_at_the_limit_is_embedded_and_counted(client: TestClient) -> None:
    _too_long(client.post(EMBED, json={"model": "short", "input": ["a", "b c d e f"]}), "input.1", 5)
    at_limit = (("one two three four", 4), ([1, 2, 3, 4], 4), (["a b c d", "e f"], 6), ([[1, 2, 3, 4], [5]], 5))
    for given, tokens in at_limit:
        resp = client.post(EMBED, json={"model": "short", "input": given})
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert client.post(EMBED, json={"model": "emb", "input": "word " * 5000}).status_code == 200  # no limit set
    assert client.get("/ready").json()["models"]["short"]["calls"] == 4  # the refused request is not an engine call


# --- the sentence-transformers engine's batch, on a stub model ------------------------------------------------

BAD_ID = 13  # in the vocabulary, but the stub tokenizer cannot decode it (as a broken tokenizer might)


class _Tokenizer:
    def __len__(self) -> int:
        return 1000

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[str]]:
        return {"input_ids": text.split()}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if min(ids) < 0 or BAD_ID in ids:
            raise OverflowError("number too small to fit in target type")  # what the real tokenizer said
        return " ".join(f"t{i}" for i in ids)


class _Model:
    """Stands in for SentenceTransformer: 4 dimensions; a text holding "poison" fails its forward pass."""

    max_seq_length = 256

    def __init__(self, path: str, device: str) -> None:
        self.tokenizer = _Tokenizer()
        self.passes: list[list[str]] = []

    def get_sentence_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts: list[str], **_: Any) -> list[list[float]]:
        self.passes.append(list(texts))
        if any("poison" in t for t in texts):
            raise RuntimeError("the forward pass failed")
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


@pytest.fixture
async def engine(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(st_engine, "require", lambda module, extra: SimpleNamespace(SentenceTransformer=_Model))
    monkeypatch.setattr(st_engine, "resolve_weights", lambda model: Path(model))
    eng = st_engine.SentenceTransformersEngine("stub", st_engine.EmbeddingOptions(model="stub", batch_timeout_s=0.5))
    await eng.start()
    yield eng
    await eng.close()


async def _together(engine: Any, bad: Sequence[str | Sequence[int]]) -> list[Any]:
    """Six good requests and `bad`, queued in one go (one batch)."""
    calls = [engine.embed([f"good request {i}"]) for i in range(6)]
    calls.insert(3, engine.embed(bad))
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_a_request_whose_forward_pass_fails_fails_alone(engine: Any) -> None:
    results = await _together(engine, ["poison"])
    assert isinstance(results.pop(3), EngineError)
    assert all(r.vectors == [[1.0, 0.0, 0.0, 0.0]] for r in results), results
    assert engine.batches == 1
    assert engine._model.passes[0] == ["good request 0", "good request 1", "good request 2", "poison",
                                       "good request 3", "good request 4", "good request 5"]  # one batch, then alone


async def test_a_request_whose_inputs_fail_fails_alone(engine: Any) -> None:
    results = await _together(engine, [[BAD_ID, 5, 6]])
    assert isinstance(results.pop(3), EngineError)
    assert all(r.vectors == [[1.0, 0.0, 0.0, 0.0]] for r in results), results
    assert len(engine._model.passes) == 1  # the others' one forward pass, without it


async def test_the_engine_refuses_ids_outside_its_vocabulary(engine: Any) -> None:
    assert engine.vocab_size == 1000
    for ids in ([-1, 5, 6], [1000], [10**30]):
        with pytest.raises(InvalidRequest) as refused:
            await engine.embed([ids])
        assert refused.value.param == "input"
    results = await _together(engine, [[-1, 5, 6]])
    assert isinstance(results.pop(3), InvalidRequest)
    assert all(not isinstance(r, BaseException) for r in results)
    assert (await engine.embed([[999]])).prompt_tokens == 1


async def test_token_ids_are_decoded_on_the_engines_thread(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the input guardrails read of token ids: the tokenizer's text, decoded on the thread that runs the
    forward passes (a fast tokenizer must not decode while another thread encodes with it)."""
    threads: list[str] = []
    decode = _Tokenizer.decode

    def spy(self: _Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> str:
        threads.append(threading.current_thread().name)
        return decode(self, ids, skip_special_tokens)

    monkeypatch.setattr(_Tokenizer, "decode", spy)
    assert await engine.decode([[5, 6], [7]]) == ["t5 t6", "t7"]
    assert set(threads) == {"embed-stub_0"}
    with pytest.raises(InvalidRequest):
        await engine.decode([[1000]])  # outside the vocabulary, as embed() says
    with pytest.raises(EngineError, match="embedding failed"):
        await engine.decode([[BAD_ID]])


async def test_an_input_longer_than_the_model_reads_fails_alone(engine: Any) -> None:
    """The stub model reads 256 tokens (its tokenizer splits on spaces, no special tokens)."""
    assert engine.max_input_tokens == 256
    assert engine.health().detail["max_input_tokens"] == 256
    results = await _together(engine, ["ok", "word " * 300])
    refused = results.pop(3)
    assert isinstance(refused, ContextLengthExceeded)
    assert (refused.param, refused.code) == ("input.1", "context_length_exceeded")
    assert "maximum context length is 256 tokens, however the input has 300 tokens" in refused.message
    assert all(r.vectors == [[1.0, 0.0, 0.0, 0.0]] for r in results), results
    assert engine._model.passes == [[f"good request {i}" for i in range(6)]]  # one forward pass, without it
    at_limit = await engine.embed(["word " * 256, [5] * 256])
    assert at_limit.prompt_tokens == 512  # counted, not cut
    for ids in ([5] * 257, [BAD_ID] * 300):  # too many ids: refused before they are decoded
        with pytest.raises(ContextLengthExceeded) as info:
            await engine.embed([[1, 2], ids])
        assert info.value.param == "input.1"


async def test_token_ids_are_counted_as_the_model_reads_them(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids are decoded and tokenised again, with the model's special tokens: 255 ids can be 257 tokens."""
    monkeypatch.setattr(_Tokenizer, "__call__", lambda self, text, add_special_tokens=True: {
        "input_ids": ["[CLS]", *text.split(), "[SEP]"] if add_special_tokens else text.split()})
    assert (await engine.embed([[5] * 254])).prompt_tokens == 254  # 256 with [CLS] and [SEP]: usage counts the ids
    with pytest.raises(ContextLengthExceeded, match="has 257 tokens"):
        await engine.embed([[5] * 255])


async def test_a_default_prompt_leaves_less_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """encode() puts the model's default prompt before every text: its tokens come off the limit."""
    class _Prompted(_Model):
        prompts = {"query": "query: find", "document": ""}
        default_prompt_name = "query"

    monkeypatch.setattr(st_engine, "require", lambda module, extra: SimpleNamespace(SentenceTransformer=_Prompted))
    monkeypatch.setattr(st_engine, "resolve_weights", lambda model: Path(model))
    eng = st_engine.SentenceTransformersEngine("stub", st_engine.EmbeddingOptions(model="stub"))
    await eng.start()
    try:
        assert eng.max_input_tokens == 254
        with pytest.raises(ContextLengthExceeded, match="maximum context length is 254 tokens"):
            await eng.embed(["word " * 255])
    finally:
        await eng.close()


# --- the answer's body ------------------------------------------------------------------------------------

def test_a_large_answer_is_written_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    on_loop: list[bool] = []
    encode = api_embeddings._encode

    def spy(vector: list[float], encoding: str | None) -> list[float] | str:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return encode(vector, encoding)

    monkeypatch.setattr(api_embeddings, "_encode", spy)
    inputs = [f"text number {i}" for i in range(LARGE)]
    resp = client.post(EMBED, json={"model": "emb", "input": inputs})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == len(inputs)
    assert on_loop == [False] * len(inputs)
    assert LARGE * 16 > api_embeddings.OFF_LOOP_VALUES


@pytest.mark.parametrize("count", [1, 3, LARGE])
@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_the_body_is_what_jsonresponse_renders(client: TestClient, count: int, encoding: str | None) -> None:
    body: dict[str, Any] = {"model": "emb", "input": [f"words {i} and more {i * 7}" for i in range(count)]}
    if encoding is not None:
        body["encoding_format"] = encoding
    resp = client.post(EMBED, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    expected = JSONResponse(EmbeddingList.model_validate(resp.json()).model_dump()).body
    assert resp.content == expected
