"""POST /v1/chat/completions: request, response and stream chunk."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmops.protocol.common import INT32_MAX, SamplingFields, Usage, too_many
from llmops.protocol.fields import Endpoint
from llmops.protocol.json_schema import schema_problem
from llmops.protocol.unions import one_of
from llmops.protocol.wire import WireModel

FinishReason = Literal["stop", "length", "tool_calls"]

Role = Literal["system", "developer", "user", "assistant", "tool"]


def _kind_refused(data: Any, supported: str, what: str) -> None:
    """A 400 saying plainly that an object of another `type` than `supported` is not supported (where it
    was told the value "should be a valid string")."""
    if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] != supported:
        raise PydanticCustomError("unsupported_type", "{what} of type '{kind}' are not supported: only '{supported}'",
                                  {"what": what, "kind": data["type"][:64], "supported": supported})


class TextPart(WireModel):
    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        _kind_refused(data, "text", "content parts")  # image_url, input_audio, file: text only
        return data


class FunctionCall(WireModel):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(description="JSON text")


class ToolCallParam(WireModel):
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Role
    content: Annotated[str | list[TextPart] | None, one_of("a string or a list of text parts")] = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = Field(None, description="assistant turns: the calls it made")
    tool_call_id: str | None = Field(None, max_length=128, description="tool turns: the call answered")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class PromptRef(WireModel):
    """A versioned prompt from the server's registry; its messages come before the request's own."""

    id: str = Field(min_length=1, max_length=64)
    version: str | None = Field(None, max_length=64, description="default: the latest, or the experiment's pick")
    variables: dict[str, Annotated[str | int | float | bool, one_of("a string, a number or a boolean")]] = \
        Field(default_factory=dict)


def _compilable(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    problem = schema_problem(schema) if schema is not None else None
    if problem is not None:
        raise ValueError(problem)
    return schema


class JsonSchemaFormat(WireModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    _schema_compiles = field_validator("schema_")(_compilable)


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class FunctionDef(WireModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _parameters_compile = field_validator("parameters")(_compilable)


class ToolDef(WireModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data: Any) -> Any:
        _kind_refused(data, "function", "tool_choice objects")  # allowed_tools, custom: not implemented
        return data


ToolChoice = Annotated[Literal["none", "auto", "required"] | NamedToolChoice | None,
                       one_of("'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}")]


class ChatCompletionRequest(SamplingFields):
    ENDPOINT: ClassVar[Endpoint] = "chat"

    messages: list[ChatMessage] = Field(default_factory=list)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    prompt: PromptRef | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    logprobs: bool | None = Field(None, description="each generated token's log probability (engines that "
                                  "report them: llama.cpp)")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="0..20 likeliest alternatives per token, "
                                     "with logprobs: true")

    @field_validator("messages", mode="before")
    @classmethod
    def _few_enough(cls, v: Any) -> Any:
        too_many(v)
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        """OpenAI's rule: alternatives are asked for with `logprobs: true` (0 asks for none, and is accepted)."""
        if v and not info.data.get("logprobs"):
            raise PydanticCustomError("top_logprobs_without_logprobs",
                                      "'logprobs' must be true when 'top_logprobs' is set")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        """A field's validator, not the model's: the error then names `tool_choice` (a model validator's has
        no location, and was answered as a body that is not a JSON object)."""
        if "tools" not in info.data:  # the tools are invalid: their own error is the answer
            return choice
        tools = info.data["tools"] or []
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in [t.function.name for t in tools]:
                raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")
        elif choice == "required" and not tools:
            raise ValueError("tool_choice 'required' needs tools")
        return choice

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def tier(self) -> str | None:
        return self.service_tier


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _ToolCallsWhenAny(BaseModel):
    """Leaves `tool_calls` out of the JSON when there are none, as OpenAI does."""

    @model_serializer(mode="wrap")
    def _omit_no_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)
        return out


class AssistantMessage(_ToolCallsWhenAny):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(description="natural log; -9999.0 for a token the model gives no probability")
    bytes: list[int] | None = Field(description="the token's UTF-8 bytes (a token may hold part of a character)")


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the likeliest tokens at this place, top_logprobs of them")


class ChoiceLogprobs(BaseModel):
    """A choice's tokens with their log probabilities (api/logprobs.py writes it)."""

    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str = ""


class ToolCallDeltaOut(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(_ToolCallsWhenAny):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
