"""The fast chunk encoder writes exactly the bytes the protocol's pydantic models give."""

from __future__ import annotations

import json

import pytest

from llmops.api.chunks import ChunkEncoder
from llmops.api.sse import event
from llmops.protocol.chat import ChatChunkChoice, ChatCompletionChunk, ChatDelta
from llmops.protocol.common import Usage
from llmops.protocol.completions import Completion, CompletionChoice

TEXTS = ["", "hello", " world", 'quote " and \\ backslash', "new\nline\ttab\r\b\f", "\x00\x01\x1f\x7f",
         "émoji 🦙 中文 \u2028 \u2029", "</script>", "{\"json\": [1, 2]}", "\ud7ff\ue000\uffff"]
IDS = [("chatcmpl-abc", 1_700_000_000, "gemma"), ('we"ird\\id', 0, "módel/ü \n x")]


def chat(chunk_id: str, created: int, model: str, choices: list[ChatChunkChoice],
         usage: Usage | None = None) -> bytes:
    return event(ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=choices, usage=usage))


def completion(chunk_id: str, created: int, model: str, choices: list[CompletionChoice],
               usage: Usage | None = None) -> bytes:
    return event(Completion(id=chunk_id, created=created, model=model, choices=choices, usage=usage))


@pytest.mark.parametrize(("chunk_id", "created", "model"), IDS)
@pytest.mark.parametrize("text", TEXTS)
def test_chat_text_role_and_finish_equal_the_models(chunk_id: str, created: int, model: str, text: str) -> None:
    enc = ChunkEncoder("chat", chunk_id, created, model)
    want = chat(chunk_id, created, model, [ChatChunkChoice(index=2, delta=ChatDelta(content=text))])
    assert enc.text(2, text) == want
    assert enc.piece(0, text, None) == enc.text(0, text)
    assert enc.role(1) == chat(chunk_id, created, model,
                               [ChatChunkChoice(index=1, delta=ChatDelta(role="assistant", content=""))])
    for reason in ("stop", "length"):
        want = chat(chunk_id, created, model, [ChatChunkChoice(index=0, delta=ChatDelta(), finish_reason=reason)])
        assert enc.finish(0, reason) == want
        assert enc.piece(0, text, reason) == want  # a chat finish carries no text


@pytest.mark.parametrize(("chunk_id", "created", "model"), IDS)
@pytest.mark.parametrize("text", TEXTS)
def test_completions_text_and_finish_equal_the_models(chunk_id: str, created: int, model: str, text: str) -> None:
    enc = ChunkEncoder("completions", chunk_id, created, model)
    assert enc.text(3, text) == completion(chunk_id, created, model,
                                           [CompletionChoice(index=3, text=text, finish_reason=None)])
    for reason in ("stop", "length"):
        assert enc.piece(0, text, reason) == completion(
            chunk_id, created, model, [CompletionChoice(index=0, text=text, finish_reason=reason)])


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_usage_event_equals_the_models(kind: str) -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=64, total_tokens=76)
    enc = ChunkEncoder(kind, "id-1", 5, "m")  # type: ignore[arg-type]
    make = chat if kind == "chat" else completion
    assert enc.usage(usage) == make("id-1", 5, "m", [], usage)


def test_events_are_valid_json_that_round_trips_the_text() -> None:
    enc = ChunkEncoder("chat", "x", 1, "m")
    for text in TEXTS:
        raw = enc.text(0, text)
        assert raw.startswith(b"data: ")
        assert raw.endswith(b"\n\n")
        assert json.loads(raw[6:])["choices"][0]["delta"]["content"] == text


def test_a_tool_call_choice_goes_through_its_model_in_the_same_frame() -> None:
    from llmops.api.tool_calls import call_deltas
    from llmops.engines.base import ToolCallDelta

    calls = call_deltas([ToolCallDelta(0, "call_1", "get_weather", '{"city": "Paris"}')])
    choice = ChatChunkChoice(index=0, delta=ChatDelta(content=None, tool_calls=calls))
    enc = ChunkEncoder("chat", "id-1", 5, "m")
    assert enc.choice(choice) == chat("id-1", 5, "m", [choice])
