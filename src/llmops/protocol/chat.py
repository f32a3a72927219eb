"""POST /v1/chat/completions: request, response and stream chunk."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmops.protocol.common import SamplingFields, Usage

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class PromptRef(BaseModel):
    """A versioned prompt from the server's registry; its messages come before the request's own."""

    id: str = Field(min_length=1, max_length=64)
    version: str | None = Field(None, max_length=64, description="default: the latest, or the experiment's pick")
    variables: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(default_factory=list)
    max_completion_tokens: int | None = Field(None, ge=1)
    prompt: PromptRef | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
