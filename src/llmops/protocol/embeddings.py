"""POST /v1/embeddings: request and response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmops.protocol.common import INT32_MAX, Usage, too_many
from llmops.protocol.fields import refused_field
from llmops.protocol.unions import one_of
from llmops.protocol.wire import WireModel

TokenIds = list[int]  # each 0 .. INT32_MAX (the engine checks its own vocabulary's size)


class EmbeddingRequest(WireModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: Annotated[str | list[str] | TokenIds | list[TokenIds],
                     one_of("a string, a list of strings, a list of token ids or a list of token-id lists")]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1, le=INT32_MAX)
    user: str | None = Field(None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _few_enough(cls, v: Any) -> Any:
        """A list of texts or id lists of at most MAX_ITEMS (a flat list of ids is one input, any length)."""
        if isinstance(v, list) and not all(isinstance(x, int) for x in v[:1]):
            too_many(v)
        return v

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v:
                raise ValueError("input must not be empty")
        elif not v:
            raise ValueError("input must hold at least one item")
        elif any(isinstance(x, str) and not x for x in v) or any(isinstance(x, list) and not x for x in v):
            raise ValueError("input items must not be empty")
        else:
            _check_token_ids(v)
        return v

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of items: each a text or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        ids = [x for x in self.input if isinstance(x, int)]
        if len(ids) == len(self.input):
            return [ids]
        return [x for x in self.input if not isinstance(x, int)]

    def unsupported_field(self) -> str | None:
        return refused_field("embeddings", dict(self.model_extra or {}))


def _check_token_ids(v: list[Any]) -> None:
    """Every token id in 0 .. INT32_MAX: ids index a vocabulary, and tokenizers and torch index in 32 bits
    (the largest vocabularies are near 2**18). min and max: one pass each in C, not one per id here."""
    lists = [v] if isinstance(v[0], int) else [x for x in v if isinstance(x, list)]  # texts: none
    for ids in lists:
        if min(ids) < 0 or max(ids) > INT32_MAX:
            raise ValueError(f"token ids must be between 0 and {INT32_MAX}")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


__all__ = ["Embedding", "EmbeddingList", "EmbeddingRequest", "EmbeddingUsage", "Usage"]
