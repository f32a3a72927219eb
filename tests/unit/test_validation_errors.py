"""Request-validation errors name the client's own parameter and say plainly what is wrong.

Found by an outside trial: `"stop": ""` was accepted and emptied every answer (`[""]` was a 400); errors in
fields that take several forms named pydantic's internal branch (`messages.0.content.str`, `prompt.str`,
`input.str`, `tool_choice.literal['none','auto','required']`) and gave the first branch's complaint ("Input
should be a valid string" for a list of content parts). protocol/unions.py `one_of` wraps every such field.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import pkgutil
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, WrapValidator

from llmops import protocol
from llmops.api import chat, classifications, completions, embeddings, images, inference_v2
from llmops.app import create_app
from llmops.protocol import unions
from llmops.settings import load_settings
from tests.unit.test_api import assert_error

CHAT, COMPLETIONS, EMBED = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
USER = [{"role": "user", "content": "hi"}]
INPUT_FORMS = "a string, a list of strings, a list of token ids or a list of token-id lists"
ACCEPTS_INPUT = f"Input should be {INPUT_FORMS}"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    models = [{"name": "fake", "engine": "fake"},
              {"name": "fake-tiny-context", "engine": "fake", "options": {"context_length": 16}},
              {"name": "emb", "kind": "embeddings", "engine": "fake-embeddings", "options": {"size": 16}}]
    settings = load_settings(None, models=models, state={"backend": "memory"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, path: str, extra: dict[str, Any]) -> Any:
    bases: dict[str, dict[str, Any]] = {CHAT: {"model": "fake", "messages": USER},
                                        COMPLETIONS: {"model": "fake", "prompt": "hi"},
                                        EMBED: {"model": "emb", "input": "hi"}}
    base = bases[path]
    return client.post(path, json={**base, **extra})


CASES = [
    # 1. an empty stop sequence, in either form, on either endpoint
    (CHAT, {"stop": ""}, "stop", "invalid value for 'stop': Value error, stop sequences must not be empty"),
    (CHAT, {"stop": [""]}, "stop", "invalid value for 'stop': Value error, stop sequences must not be empty"),
    (COMPLETIONS, {"stop": ""}, "stop", "invalid value for 'stop': Value error, stop sequences must not be empty"),
    (COMPLETIONS, {"stop": ["x", ""]}, "stop",
     "invalid value for 'stop': Value error, stop sequences must not be empty"),
    (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop",
     "invalid value for 'stop': Value error, at most 4 stop sequences"),
    (CHAT, {"stop": 5}, "stop",
     "invalid type for 'stop': expected a string or a list of at most 4 strings, but got an integer instead"),
    # 2. the client's path, and one message saying what the field accepts when no form fits
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]},
     "messages.0.content.0",
     "invalid value for 'messages.0.content.0': content parts of type 'image_url' are not supported: only 'text'"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}]},
     "messages.0.content.1",
     "invalid value for 'messages.0.content.1': content parts of type 'input_audio' are not supported: only 'text'"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text",
     "missing required parameter 'messages.0.content.0.text'"),
    (CHAT, {"messages": [{"role": "user", "content": ["a"]}]}, "messages.0.content.0",
     "invalid type for 'messages.0.content.0': expected an object, but got a string instead"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     "invalid type for 'messages.0.content': expected a string or a list of text parts, but got an integer instead"),
    (COMPLETIONS, {"prompt": [818, 7217, 563]}, "prompt",
     "invalid value for 'prompt': token-id prompts are not supported: send the prompt as text"),
    (COMPLETIONS, {"prompt": [[818, 7217, 563]]}, "prompt",
     "invalid value for 'prompt': token-id prompts are not supported: send the prompt as text"),
    (COMPLETIONS, {"prompt": 5}, "prompt",
     "invalid type for 'prompt': expected a string or a list of strings, but got an integer instead"),
    (COMPLETIONS, {"prompt": ""}, "prompt", "invalid value for 'prompt': the prompt must not be empty"),
    (COMPLETIONS, {"prompt": [""]}, "prompt", "invalid value for 'prompt': the prompt must not be empty"),
    (COMPLETIONS, {"prompt": []}, "prompt", "invalid value for 'prompt': the prompt must not be empty"),
    (EMBED, {"input": 5}, "input", f"invalid type for 'input': expected {INPUT_FORMS}, but got an integer instead"),
    (EMBED, {"input": [1, "a"]}, "input", f"invalid value for 'input': {ACCEPTS_INPUT}"),
    (EMBED, {"input": []}, "input", "invalid value for 'input': Value error, input must hold at least one item"),
    (CHAT, {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}, "tool_choice",
     "invalid value for 'tool_choice': tool_choice objects of type 'allowed_tools' are not supported: only 'function'"),
    (CHAT, {"tool_choice": "sometimes"}, "tool_choice", "invalid value for 'tool_choice': Input should be 'none', "
     "'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}"),
    (CHAT, {"tool_choice": {"type": "function"}}, "tool_choice.function",
     "missing required parameter 'tool_choice.function'"),
    (CHAT, {"prompt": {"id": "p", "variables": {"who": [1]}}}, "prompt.variables.who",
     "invalid type for 'prompt.variables.who': expected a string, a number or a boolean, but got an array instead"),
    # 3. OpenAI's ranges: best_of >= n (a refused field that takes a no-op value), top_logprobs 0..20, logprobs 0..5
    (COMPLETIONS, {"n": 2, "best_of": 1}, "best_of",
     "invalid value for 'best_of': best_of must be greater than or equal to n (2), got 1"),
    (COMPLETIONS, {"best_of": 0}, "best_of",
     "invalid value for 'best_of': best_of must be greater than or equal to n (1), got 0"),
    (CHAT, {"top_logprobs": 21}, "top_logprobs",
     "invalid value for 'top_logprobs': Input should be less than or equal to 20"),
    (CHAT, {"top_logprobs": -1}, "top_logprobs",
     "invalid value for 'top_logprobs': Input should be greater than or equal to 0"),
    (CHAT, {"top_logprobs": 2}, "top_logprobs",  # alternatives are asked for with logprobs: true, as OpenAI's
     "invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set"),
    (CHAT, {"top_logprobs": 2, "logprobs": False}, "top_logprobs",
     "invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set"),
    (COMPLETIONS, {"logprobs": 6}, "logprobs", "invalid value for 'logprobs': Input should be less than or equal to 5"),
]


@pytest.mark.parametrize(("path", "extra", "param", "message"), CASES,
                         ids=[f"{path.rsplit('/', 1)[1]}-{param}-{i}" for i, (path, _, param, _) in enumerate(CASES)])
def test_errors_name_the_clients_parameter(client: TestClient, path: str, extra: dict[str, Any], param: str,
                                           message: str) -> None:
    response = post(client, path, extra)
    assert response.status_code == 400, response.text
    code = "invalid_type" if message.startswith("invalid type") else None  # a value of the wrong JSON type
    assert response.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": code}


@pytest.mark.parametrize(("path", "extra"), [
    (CHAT, {"stop": "x"}),
    (CHAT, {"stop": ["x", "y"]}),
    (CHAT, {"stop": []}),
    (CHAT, {"stop": None}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
    (CHAT, {"messages": [{"role": "user", "content": None}, *USER]}),
    (CHAT, {"tool_choice": "none"}),
    (CHAT, {"tool_choice": None}),
    (COMPLETIONS, {"prompt": ["hi"]}),
    (COMPLETIONS, {"stop": "x"}),
    (EMBED, {"input": ["a", "b"]}),
    (EMBED, {"input": [1, 2, 3]}),
    (EMBED, {"input": [[1, 2], [3]]}),
    # values of refused fields that ask for nothing more, accepted as OpenAI accepts them
    (COMPLETIONS, {"best_of": 1}),
    (COMPLETIONS, {"best_of": 2, "n": 2}),
    (COMPLETIONS, {"best_of": 1, "stream": True}),
    (COMPLETIONS, {"best_of": None, "n": 2}),
    (CHAT, {"top_logprobs": 0}),
    (CHAT, {"top_logprobs": 0, "logprobs": False}),
    (CHAT, {"top_logprobs": None, "logprobs": None}),
])
def test_every_form_still_accepted(client: TestClient, path: str, extra: dict[str, Any]) -> None:
    response = post(client, path, extra)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("path", "extra", "param"), [
    (COMPLETIONS, {"best_of": 2}, "best_of"),  # candidates ranked by logprob: not implemented
    (COMPLETIONS, {"n": 2, "best_of": 3}, "best_of"),
])
def test_other_values_are_still_refused_by_name(client: TestClient, path: str, extra: dict[str, Any],
                                                param: str) -> None:
    response = post(client, path, extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "unsupported_parameter", "invalid_request_error")


def test_no_op_values_answer_as_without_them(client: TestClient) -> None:
    """best_of = n gives the n answers n alone gives (the fake engine answers deterministically)."""
    plain = post(client, COMPLETIONS, {"n": 2}).json()
    with_best_of = post(client, COMPLETIONS, {"n": 2, "best_of": 2}).json()
    assert [c["text"] for c in with_best_of["choices"]] == [c["text"] for c in plain["choices"]]
    assert len(plain["choices"]) == 2
    chat = post(client, CHAT, {"top_logprobs": 0}).json()
    assert chat["choices"][0]["message"]["content"] == post(client, CHAT, {}).json()["choices"][0]["message"]["content"]
    assert chat["choices"][0]["logprobs"] is None  # logprobs were not asked for


def test_a_prompt_too_long_by_itself_names_the_messages(client: TestClient) -> None:
    """OpenAI names `messages` when the prompt alone fills the context, whatever max_tokens asks for."""
    long = [{"role": "user", "content": "word " * 50}]
    response = client.post(CHAT, json={"model": "fake-tiny-context", "messages": long, "max_tokens": 5})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    short = client.post(CHAT, json={"model": "fake-tiny-context", "messages": USER, "max_tokens": 100})
    assert short.json()["error"]["param"] == "max_tokens"  # here max_tokens is what does not fit


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_one_of(meta: Any) -> bool:
    return isinstance(meta, WrapValidator) and getattr(meta.func, "__module__", None) == unions.__name__


def _unwrapped_unions(tp: Any, path: str, metadata: tuple[Any, ...], seen: set[type]) -> Iterator[str]:
    """Every union of two or more forms under `tp` not wrapped by `one_of` (X | None is no such union)."""
    if typing.get_origin(tp) is typing.Annotated:
        inner, *more = typing.get_args(tp)
        yield from _unwrapped_unions(inner, path, (*metadata, *more), seen)
        return
    if _is_union(tp):
        forms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(forms) > 1 and not any(_is_one_of(m) for m in metadata):
            yield path
        for form in forms:
            yield from _unwrapped_unions(form, path, (), seen)
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return
        seen.add(tp)
        for name, field in tp.model_fields.items():
            yield from _unwrapped_unions(field.annotation, f"{tp.__name__}.{name}", tuple(field.metadata), seen)
    else:
        for arg in typing.get_args(tp):
            yield from _unwrapped_unions(arg, path, (), seen)


def test_every_union_in_a_request_body_is_wrapped() -> None:
    """A union left unwrapped names pydantic's branch again (`x.str`): each request body's fields, nested
    models and item types are walked (the routes' bodies, and the protocol's *Request models a route parses
    itself, as /v2's)."""
    routers = (chat.router, completions.router, embeddings.router, images.router, classifications.router,
               inference_v2.router)
    bodies: set[Any] = {p.field_info.annotation for router in routers for route in router.routes
                        if isinstance(route, APIRoute) for p in route.dependant.body_params}
    for info in pkgutil.iter_modules(protocol.__path__):
        module = importlib.import_module(f"{protocol.__name__}.{info.name}")
        bodies |= {v for k, v in vars(module).items() if k.endswith("Request") and isinstance(v, type)
                   and issubclass(v, BaseModel)}
    names = {getattr(b, "__name__", "") for b in bodies}
    assert {"ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "InferenceRequest"} <= names
    seen: set[type] = set()
    found = [path for body in bodies for path in _unwrapped_unions(body, getattr(body, "__name__", ""), (), seen)]
    assert found == []


# seeds: any 64-bit integer, as OpenAI's API takes them, each a fixed llama.cpp seed ---------------------------------

INT64 = 2**63 - 1
SEEDS = [-(2**63), -(2**32) - 1, -1, 0, 7, 2**32 - 2, 2**32 - 1, 2**32, 2**33 - 1, INT64]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_any_64_bit_seed_is_accepted_as_openai_accepts_it(client: TestClient, path: str) -> None:
    """OpenAI's SDK types a seed as any int and its API takes int64s, negative ones too; n > 1 takes seed + i,
    which may pass 2^63 - 1. What does not fit in 64 bits is a 400 naming the seed."""
    for seed in SEEDS:
        response = post(client, path, {"seed": seed, "n": 2})
        assert response.status_code == 200, (seed, response.text)
    for seed in (INT64 + 1, -(2**63) - 1):
        response = post(client, path, {"seed": seed})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "seed"


def _llama_seeds(engine: Any, body: dict[str, Any]) -> list[int]:
    """The seed each of the request's choices sends llama.cpp (its completion body's `seed`)."""
    from llmops.pipeline.generation import text_requests
    from llmops.protocol.completions import CompletionRequest
    from llmops.settings import ModelConfig

    sent: list[int] = []

    async def stream(payload: dict[str, Any], *args: Any, **kw: Any) -> Any:
        sent.append(payload["seed"])
        return
        yield

    engine._stream = stream
    cfg = ModelConfig(name="m", engine="llamacpp")
    for request in text_requests(CompletionRequest(model="m", prompt="hi", **body), cfg, 4):
        asyncio.run(_drain(engine.generate(request)))
    return sent


async def _drain(chunks: Any) -> None:
    async for _ in chunks:
        pass


def test_no_seed_reaches_llama_cpp_as_its_random_seed() -> None:
    """llama.cpp's seeds are 32-bit and 0xFFFFFFFF (LLAMA_DEFAULT_SEED) draws a random one: seed % 2^32 sent
    -1, 2^32 - 1 and 2^33 - 1 (and choice i's seed + i landing there) as that, and the answers differed
    though a seeded request is cached as deterministic. Every seed is a fixed one, the same each time; a
    seed below 2^32 - 1 is itself, and the n choices' seeds differ."""
    from llmops.engines.llamacpp import LlamaCppEngine, LlamaCppOptions

    random_seed = 2**32 - 1
    if importlib.util.find_spec("xllamacpp") is not None:
        random_seed = importlib.import_module("xllamacpp").LLAMA_DEFAULT_SEED
    assert random_seed == 0xFFFFFFFF
    engine = LlamaCppEngine("m", LlamaCppOptions(context_length=512))
    try:
        for seed in SEEDS:
            sent = _llama_seeds(engine, {"seed": seed, "n": 3})
            assert len(set(sent)) == 3, (seed, sent)
            assert all(0 <= s < random_seed for s in sent), (seed, sent)
            assert sent == _llama_seeds(engine, {"seed": seed, "n": 3})
        for seed in (0, 7, 2**32 - 4):  # below llama.cpp's random seed: as it was
            assert _llama_seeds(engine, {"seed": seed, "n": 3}) == [seed, seed + 1, seed + 2]
    finally:
        engine._executor.shutdown()


# --- item counts: refused before any stage works through the items (an attack run stalled /health with 25,000
# messages or 150,000 inputs a request, each under the body limit) ----------------------------------------------

@pytest.mark.parametrize(("url", "field", "items"), [
    (CHAT, "messages", [{"role": "user", "content": "a"}]),
    (EMBED, "input", ["a"]),
    (EMBED, "input", [[1, 2]]),
])
def test_more_than_2048_items_are_a_400_before_their_items_are_read(client: TestClient, url: str, field: str,
                                                                    items: list[Any]) -> None:
    model = "emb" if url == EMBED else "fake"
    err = assert_error(client.post(url, json={"model": model, field: items * 2049}), 400, param=field)
    assert err["message"] == (f"invalid value for '{field}': array too long. Expected an array with maximum "
                              "length 2048, but got an array with length 2049 instead.")
    at_limit = client.post(url, json={"model": model, field: items * 2048})
    assert at_limit.status_code == 200 or at_limit.json()["error"]["code"] == "context_length_exceeded", at_limit.text


def test_one_input_of_token_ids_is_one_item_however_long(client: TestClient) -> None:
    resp = client.post(EMBED, json={"model": "emb", "input": [7] * 5000})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == 5000
