"""POST /v1/completions (legacy text completions): request, response and stream chunk."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmops.protocol.common import SamplingFields, Usage


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(min_length=1)

    def prompt_text(self) -> str | None:
        """The prompt, or None when a list of several prompts was sent (not supported)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
