"""The engine interface: small on purpose.

An engine is loaded once (`start`), closed once (`close`), reports `health`, and streams outputs. Text
engines implement `TextEngine`. Engines never see OpenAI schemas: the pipeline translates requests into
the plain dataclasses below.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: default_max_tokens, capped by the context left
    default_max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; k: each token's log probability and its k likeliest alternatives
    # None: the prompt is not scored; k: each prompt token's log probability and its k likeliest alternatives,
    # sent before the answer (completions' echo with logprobs; engines whose capabilities say prompt_logprobs)
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class StructuredOutput:
    """The answer must be JSON: any object (`json_object`), or one that matches `schema` (`json_schema`)."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolSpec:
    """Functions the model may call. `choice`: auto, none, required, or the one function's name."""

    functions: tuple[dict[str, Any], ...]  # OpenAI `{"type": "function", "function": {...}}` definitions
    choice: str = "auto"
    parallel: bool = True


@dataclass(frozen=True)
class TextRequest:
    """Either a raw `prompt` (completions) or `messages` (chat), never both."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    structured: StructuredOutput | None = None
    tools: ToolSpec | None = None
    stream: bool = True  # False: the caller wants only the whole answer (engines may skip per-token delivery)


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call as it streams: the first piece of call `index` carries its id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# The log probability of a prompt's first token, which nothing before it predicts (OpenAI sends null there)
UNSCORED = math.nan


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability (natural log) and, at its position, the likeliest tokens the
    model could have written there, best first (as many as the request asked for; none for an alternative
    itself). `bytes`: the token's UTF-8 bytes (a token may hold part of a character)."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated text. The last chunk of a stream has `finish_reason` and `usage` set.
    `logprobs`: the tokens whose text this chunk carries, when the request asked for them.
    `prompt_logprobs`: the prompt's tokens, scored, when the request asked for them (`sampling.prompt_logprobs`):
    in the stream's first chunk, before any text; the first token's logprob is UNSCORED."""

    text: str
    finish_reason: FinishReason | None = None
    usage: TokenUsage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class TextCapabilities:
    """What a text engine honours beyond plain generation. A request that needs more gets 400 naming the
    field. An engine declares it as a `capabilities` attribute; one that does not has none of them."""

    structured_output: bool = False  # response_format json_object / json_schema
    tools: bool = False  # tools, tool_choice, parallel_tool_calls, tool turns in the history
    logprobs: bool = False  # logprobs (and top_logprobs): each generated token's log probability
    prompt_logprobs: bool = False  # the prompt's tokens scored too (completions' echo with logprobs)


NO_CAPABILITIES = TextCapabilities()


def capabilities(engine: object) -> TextCapabilities:
    found = getattr(engine, "capabilities", NO_CAPABILITIES)
    return found if isinstance(found, TextCapabilities) else NO_CAPABILITIES


@dataclass
class EngineHealth:
    state: Literal["loading", "ready", "failed", "closed"]
    detail: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What every engine does: load, close, say how it is."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> EngineHealth: ...


@runtime_checkable
class TextEngine(Engine, Protocol):
    """An engine that generates text. `generate` raises ContextLengthExceeded before yielding anything
    when the prompt plus max_tokens does not fit; closing the iterator early stops generation."""

    context_length: int

    def generate(self, request: TextRequest) -> AsyncIterator[TextChunk]: ...


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


@runtime_checkable
class EmbeddingEngine(Engine, Protocol):
    """An engine that turns texts (or token ids of its own vocabulary) into vectors, a batch per call.
    `dimensions`: the vector length asked for (None: the model's own); engines that cannot shorten
    vectors list only their own size in `dimensions_allowed`."""

    max_batch: int
    dimensions_allowed: tuple[int, ...]

    async def embed(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None) -> EmbeddingResult: ...

    async def decode(self, items: Sequence[Sequence[int]]) -> list[str]:
        """Token-id inputs as the texts the model reads (what the input guardrails check); InvalidRequest for
        an id outside the vocabulary, as `embed` would."""
        ...


@dataclass(frozen=True)
class ImageRequest:
    request_id: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    n: int = 1
    seed: int | None = None  # None: a random seed per image


@dataclass(frozen=True)
class ImageResult:
    images: list[bytes]  # PNG files
    seeds: list[int]
    filtered: bool = False  # the safety checker flagged one of them: the request must not get them


StepCallback = Callable[[int, int], None]  # (steps done, total steps), called from the engine's thread


def same_shape(a: ImageRequest, b: ImageRequest) -> bool:
    """Requests that can share one pipeline call (prompts, negative prompts and seeds may differ)."""
    return (a.width, a.height, a.steps, a.guidance_scale) == (b.width, b.height, b.steps, b.guidance_scale)


@runtime_checkable
class ImageEngine(Engine, Protocol):
    """An engine that draws images, several same-shape requests in one call. `cancelled` is polled between
    denoising steps; when it answers True the run stops and raises RequestCancelled."""

    async def generate_images(self, requests: Sequence[ImageRequest], on_step: StepCallback | None = None,
                              cancelled: Callable[[], bool] | None = None) -> list[ImageResult]: ...


@dataclass(frozen=True)
class ClassifyRequest:
    """Images to classify: decoded RGB PIL `images`, or `pixels`, the model's own input tensor (a float32
    numpy array [N, C, H, W], already preprocessed), never both."""

    request_id: str
    images: tuple[Any, ...] = ()
    pixels: Any = None
    top_k: int = 5

    @property
    def count(self) -> int:
        return len(self.images) if self.pixels is None else int(self.pixels.shape[0])


@dataclass(frozen=True)
class Label:
    label: str
    score: float  # softmax probability
    index: int  # the class id


Classes = list[list[Label]]  # per image, its top-k labels, best first


@runtime_checkable
class ClassifyEngine(Engine, Protocol):
    """An engine that classifies images, several requests in one model call. `labels` are its classes by id;
    `input_shape` is the (C, H, W) its preprocessing produces, the shape a raw `pixels` tensor must have."""

    labels: list[str]
    input_shape: tuple[int, int, int]

    async def classify(self, requests: Sequence[ClassifyRequest]) -> list[Classes]: ...
