"""Pieces shared by the chat and completions schemas."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from llmops.protocol.fields import Endpoint, is_unset, refused_field
from llmops.protocol.unions import one_of
from llmops.protocol.wire import WireModel

MAX_STOP_SEQUENCES = 4
INT32_MAX = 2**31 - 1  # the most any count field takes: engines count in 32 bits, and cost arithmetic stays finite
MAX_ITEMS = 2048  # a request's messages, or embeddings inputs, at most (OpenAI's limit for both): each item costs
# Python work in several stages (templates, guardrails, counting) before an engine could refuse the request


def too_many(value: Any) -> None:
    """Refuse `value` (a field's raw value, before its items are validated) when it is a list longer than
    MAX_ITEMS: before any per-item work (OpenAI's words)."""
    if isinstance(value, list) and len(value) > MAX_ITEMS:
        raise PydanticCustomError("array_too_long", "array too long. Expected an array with maximum length "
                                  "{limit}, but got an array with length {length} instead.",
                                  {"limit": MAX_ITEMS, "length": len(value)})

# Options OpenAI accepts as null meaning "unset": null here means the default.
NULLABLE_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0,
                                     "frequency_penalty": 0.0, "n": 1, "stream": False}

Stop = Annotated[str | list[str] | None, one_of(f"a string or a list of at most {MAX_STOP_SEQUENCES} strings")]


def unset_is_none(v: Any) -> Any:
    """A declared field that protocol/fields.py refuses takes what OpenAI clients send for an unset option
    (null, false, empty) as unset, as `refused_field` does for the undeclared ones."""
    return None if is_unset(v) else v


class StreamOptions(WireModel):
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SamplingFields(WireModel):
    """Sampling parameters common to chat and completions requests."""

    model_config = ConfigDict(extra="allow")
    ENDPOINT: ClassVar[Endpoint] = "completions"

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Stop = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="a 64-bit integer, as OpenAI's")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=INT32_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator(*NULLABLE_DEFAULTS, mode="before")
    @classmethod
    def _null_is_default(cls, v: Any, info: Any) -> Any:
        return NULLABLE_DEFAULTS[info.field_name] if v is None else v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        """One rule for both forms: `"stop": ""` is the list `[""]`, an empty sequence the answer would stop
        at before its first token (it was accepted, and every answer came back empty)."""
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def unsupported_field(self) -> str | None:
        """The first field this request sets that the server does not honour (protocol/fields.py), if any."""
        return refused_field(self.ENDPOINT, dict(self.model_extra or {}))

    def logprob_count(self) -> int | None:
        """How many alternatives each generated token's log probability comes with; None: no logprobs."""
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
            "logprobs": self.logprob_count(),
        }

    def tier(self) -> str | None:
        """The service tier asked for (chat's `service_tier`; completions take none)."""
        return None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
