"""Stream chunks as SSE bytes without a pydantic model per token.

A streamed answer sends one event per piece of text, and all of them share the same id, created time and
model: the encoder renders that frame once and writes each piece's text into it with the standard
library's C string encoder. The bytes are exactly what `sse.event` writes for the protocol's models
(`ChatCompletionChunk`, `Completion`) with the same fields; tests/unit/test_chunks.py holds them equal.
Anything rarer than text, a finish or the usage (a tool-call delta) goes through the models.

`whole_answer` does the same for a non-streamed answer: the JSON `ChatCompletion` / `Completion` give
for it, without the models (four or five per answer, and AssistantMessage's wrap serializer)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from llmops.api.logprobs import chat_logprobs, completion_logprobs
from llmops.engines.base import TokenLogprob
from llmops.pipeline.generation import Collected
from llmops.protocol.common import Usage

_string = json.encoder.encode_basestring  # the C encoder: quotes and escapes, non-ASCII kept as is
StreamKind = Literal["chat", "completions"]
# the finish reasons each answer model accepts (protocol.chat.FinishReason, CompletionChoice.finish_reason)
_FINISH: dict[str, frozenset[str]] = {"chat": frozenset({"stop", "length", "tool_calls"}),
                                      "completions": frozenset({"stop", "length"})}


def _json_str(text: str) -> str:
    return _string(text)


class ChunkEncoder:
    """The events of one streamed chat or completions answer."""

    def __init__(self, kind: StreamKind, chunk_id: str, created: int, model: str) -> None:
        self.kind = kind
        self._sent: dict[int, int] = {}  # completions: characters of each choice sent (its tokens' text_offset)
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self._head = (f'data: {{"id":{_json_str(chunk_id)},"object":"{obj}","created":{int(created)},'
                      f'"model":{_json_str(model)},"choices":[')
        self._tail = '],"usage":null}\n\n' if kind == "chat" else '],"usage":null,"system_fingerprint":null}\n\n'
        self._frames: dict[int, tuple[str, str]] = {}  # choice -> a text event's frame around its text

    def _event(self, choice: str) -> bytes:
        return (self._head + choice + self._tail).encode()

    def _frame(self, index: int) -> tuple[str, str]:
        """What a text event without logprobs holds before and after the text's JSON string, made once per
        choice: each token's event is then one concatenation and one encode."""
        chat = self.kind == "chat"
        before = f'{{"index":{index},"delta":{{"role":null,"content":' if chat else f'{{"index":{index},"text":'
        after = ('}' if chat else '') + ',"finish_reason":null,"logprobs":null}'
        frame = self._frames[index] = (self._head + before, after + self._tail)
        return frame

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        """A piece of the answer, with its tokens' logprobs when the request asked for them."""
        if not logprobs:
            before, after = self._frames.get(index) or self._frame(index)
            return (before + _string(text) + after).encode()
        if self.kind == "chat":
            return self._event(f'{{"index":{index},"delta":{{"role":null,"content":{_json_str(text)}}},'
                               f'"finish_reason":null,"logprobs":{self._logprobs(index, text, logprobs)}}}')
        return self._event(f'{{"index":{index},"text":{_json_str(text)},"finish_reason":null,'
                           f'"logprobs":{self._logprobs(index, text, logprobs)}}}')

    def _logprobs(self, index: int, text: str, tokens: Sequence[TokenLogprob]) -> str:
        if not tokens:
            return "null"
        if self.kind == "chat":
            return json.dumps(chat_logprobs(tokens), separators=(",", ":"), ensure_ascii=False)
        offset = self._sent.get(index, 0)
        self._sent[index] = offset + len(text)
        return json.dumps(completion_logprobs(tokens, offset), separators=(",", ":"), ensure_ascii=False)

    def role(self, index: int) -> bytes:
        """Chat's opening event of a choice: the assistant role, empty content."""
        return self._event(f'{{"index":{index},"delta":{{"role":"assistant","content":""}},'
                           '"finish_reason":null,"logprobs":null}')

    def finish(self, index: int, reason: str, text: str = "") -> bytes:
        """A choice's last event: its finish reason (chat: an empty delta; completions: the chunk's text,
        which engines leave empty)."""
        if self.kind == "chat":
            return self._event(f'{{"index":{index},"delta":{{"role":null,"content":null}},'
                               f'"finish_reason":{_json_str(reason)},"logprobs":null}}')
        return self._event(f'{{"index":{index},"text":{_json_str(text)},"finish_reason":{_json_str(reason)},'
                           '"logprobs":null}')

    def piece(self, index: int, text: str, finish: str | None, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        """What the routes send for one (index, text, finish, logprobs) of the stream."""
        if finish is None:
            if not logprobs:  # nearly every event: `text`'s, inline
                before, after = self._frames.get(index) or self._frame(index)
                return (before + _string(text) + after).encode()
            return self.text(index, text, logprobs)
        if logprobs:  # tokens that came with the finish (engines send them before it): their own event first
            return self.text(index, text, logprobs) + self.finish(index, finish)
        return self.finish(index, finish, text)

    def choice(self, choice: BaseModel) -> bytes:
        """A rarer choice (a tool-call delta) through its model, in the same frame."""
        return self._event(choice.model_dump_json())

    def usage(self, usage: Usage) -> bytes:
        """The closing usage event (no choices)."""
        body = (f'{{"prompt_tokens":{usage.prompt_tokens},"completion_tokens":{usage.completion_tokens},'
                f'"total_tokens":{usage.total_tokens}}}')
        tail = self._tail.replace('"usage":null', '"usage":' + body, 1)
        return (self._head + tail).encode()


def whole_answer(kind: StreamKind, answer_id: str, created: int, model: str, done: Collected) -> bytes | None:
    """A non-streamed answer of text choices (no tool calls, no logprobs: the caller checks) as the bytes
    `model_dump_json()` of the route's model gives (ChatCompletion, Completion: same key order, nulls,
    escapes; tests/unit/test_gateway_cuts_s20.py holds them equal). None where only the model can say it:
    a finish reason it refuses (its ValidationError is the answer) or text that is not valid UTF-8."""
    allowed = _FINISH[kind]
    choices = []
    for i, text in enumerate(done.texts):
        reason = done.finish[i] or "stop"
        if reason not in allowed:
            return None
        body = (f'"message":{{"role":"assistant","content":{_json_str(text)}}}' if kind == "chat"
                else f'"text":{_json_str(text)}')
        choices.append(f'{{"index":{i},{body},"finish_reason":"{reason}","logprobs":null}}')
    obj = "chat.completion" if kind == "chat" else "text_completion"
    prompt, completion = done.prompt_tokens, done.completion_tokens
    out = (f'{{"id":{_json_str(answer_id)},"object":"{obj}","created":{int(created)},"model":{_json_str(model)},'
           f'"choices":[{",".join(choices)}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},'
           f'"total_tokens":{prompt + completion}}},"system_fingerprint":null}}')
    try:
        return out.encode()
    except UnicodeEncodeError:  # a lone surrogate: the model's serializer decides what happens
        return None
