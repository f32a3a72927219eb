"""Pieces shared by the chat and completions schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4

# Fields of the OpenAI API this server does not implement. A request that sets one gets 400 naming it
# rather than an answer that silently ignores it.
UNSUPPORTED_FIELDS = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "logprobs",
                      "top_logprobs", "echo", "best_of", "suffix", "audio", "modalities", "prediction")


class StreamOptions(BaseModel):
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SamplingFields(BaseModel):
    """Sampling parameters common to chat and completions requests."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if len(v) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
            if any(not s for s in v):
                raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def unsupported_field(self) -> str | None:
        """The first unsupported OpenAI field this request sets, if any."""
        extra: dict[str, Any] = self.model_extra or {}
        for name in UNSUPPORTED_FIELDS:
            value = extra.get(name)
            if value not in (None, False, [], {}):
                return name
        return None

    def sampling_fields(self) -> dict[str, Any]:
        """The engine-independent sampling parameters as plain values (max_tokens resolved elsewhere)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": tuple(self.stop_list()),
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }

    def service_tier(self) -> str | None:
        tier = (self.model_extra or {}).get("service_tier")
        return tier if isinstance(tier, str) else None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
