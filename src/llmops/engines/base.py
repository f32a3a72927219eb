"""The engine interface: small on purpose.

An engine is loaded once (`start`), closed once (`close`), reports `health`, and streams outputs. Text
engines implement `TextEngine`. Engines never see OpenAI schemas: the pipeline translates requests into
the plain dataclasses below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Message:
    role: str
    content: str


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


@dataclass(frozen=True)
class TextRequest:
    """Either a raw `prompt` (completions) or `messages` (chat), never both."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated text. The last chunk of a stream has `finish_reason` and `usage` set."""

    text: str
    finish_reason: FinishReason | None = None
    usage: TokenUsage | None = None


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
