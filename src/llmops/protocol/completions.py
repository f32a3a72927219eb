"""POST /v1/completions (legacy text completions): request, response and stream chunk."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from llmops.protocol.common import INT32_MAX, SamplingFields, Usage, unset_is_none
from llmops.protocol.unions import one_of

# The most prompts one request may send, and the most choices it may make (prompts x n): they all run under
# the request's one admission slot, as n's choices do. A module constant until a setting
# (`limits.max_prompts`) takes its place.
MAX_PROMPTS = 32

PromptList = Annotated[list[Annotated[str, Field(json_schema_extra={"minLength": 1})]],
                       Field(json_schema_extra={"minItems": 1, "maxItems": MAX_PROMPTS})]


class CompletionRequest(SamplingFields):
    prompt: Annotated[str | PromptList, one_of("a string or a list of strings")] = Field(
        json_schema_extra={"minLength": 1},  # the string form's; the rule is _not_empty's
        description=f"one prompt, or a list of up to {MAX_PROMPTS}: each gets n choices, numbered prompt index "
        "x n + j. Token-id prompts (a list of integers, or of integer lists) are refused with a 400: send text")
    max_tokens: int | None = Field(None, ge=0, le=INT32_MAX, description="0 only with echo: the prompt alone")
    best_of: int | None = Field(None, le=INT32_MAX, description="only equal to n (a no-op): candidates are not "
                                "ranked; less than n is invalid, as OpenAI's")
    echo: bool = Field(False, description="each choice's text starts with its prompt (streamed as the choice's "
                       "first chunk); with logprobs, the prompt's tokens come first (the first one's logprob null), "
                       "where the model's engine can score a prompt (else 400)")

    logprobs: int | None = Field(None, ge=0, le=5, description="each generated token's log probability and "
                                 "its 0..5 likeliest alternatives, in the legacy shape (engines that report them)")

    _best_of_unset = field_validator("best_of", mode="before")(unset_is_none)

    @field_validator("echo", mode="before")
    @classmethod
    def _echo_null_is_false(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("best_of")
    @classmethod
    def _best_of_covers_n(cls, v: int | None, info: ValidationInfo) -> int | None:
        """OpenAI returns the best n of best_of candidates: fewer candidates than n is a 400 naming best_of
        (n is validated first; when it is invalid its own error is the answer)."""
        n = info.data.get("n")
        if v is not None and n is not None and v < n:
            raise PydanticCustomError("best_of_below_n", "best_of must be greater than or equal to n ({n}), "
                                      "got {best_of}", {"n": n, "best_of": v})
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, v: Any) -> Any:
        """Token ids (OpenAI takes a list of ints, or of int lists) are refused as such: the engines, the
        guardrails, the cache and echo take text (engines/base.py TextRequest.prompt), and the client was told
        "Input should be a valid string" about a `prompt.str` it never sent."""
        if isinstance(v, list) and any(isinstance(x, list) or (isinstance(x, int) and not isinstance(x, bool))
                                       for x in v):
            raise PydanticCustomError("unsupported_prompt", "token-id prompts are not supported: send the prompt "
                                      "as text")
        return v

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: str | list[str]) -> str | list[str]:
        """One rule for both forms: `""`, `[]` and `[""]` are all no prompt (`[""]` was accepted); a list holds
        at most MAX_PROMPTS."""
        if not v or (isinstance(v, list) and not all(v)):
            raise PydanticCustomError("empty_prompt", "the prompt must not be empty")
        if isinstance(v, list) and len(v) > MAX_PROMPTS:
            raise PydanticCustomError("too_many_prompts", "a request takes at most {most} prompts, got {count}",
                                      {"most": MAX_PROMPTS, "count": len(v)})
        return v

    def prompts(self) -> list[str]:
        """The prompts, in order (one, for a string)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def sampling_fields(self) -> dict[str, Any]:
        """As SamplingFields', and, for echo with logprobs, the prompt's tokens scored with as many
        alternatives."""
        return {**super().sampling_fields(), "prompt_logprobs": self.logprobs if self.echo else None}

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_count(self) -> int | None:
        return self.logprobs

    def unsupported_field(self) -> str | None:
        """As SamplingFields', and `best_of` above n: ranking candidates (by their logprobs) is not
        implemented. best_of equal to n asks for the n answers n gives, and is accepted."""
        refused = super().unsupported_field()
        if refused is None and self.best_of is not None and self.best_of != self.n:
            return "best_of"
        return refused


class CompletionLogprobs(BaseModel):
    """The legacy shape: parallel lists, one place per token (api/logprobs.py writes it)."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for the prompt's first token (echo): nothing "
                                               "before it predicts it")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="where each token starts, in characters from the start of the "
                                   "choice's text (with echo, the prompt's tokens come first)")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
