"""A real, deterministic embeddings engine with no ML dependencies, for tests and demos (the embeddings
twin of `fake.FakeTextEngine`). A text's vector is its hashed bag of lower-case words, unit length, so equal
word sets give equal vectors and shared words give a positive cosine; token-id lists hash their ids. Its
tokens are the words (or the ids): option `max_seq_length` refuses longer inputs as a real model does.
`calls` in the health detail counts engine calls."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import EmbeddingResult, EngineHealth
from llmops.engines.embeddings import InputTooLong, check_token_ids
from llmops.errors import InvalidRequest


class FakeEmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(32, ge=2, le=4096, description="the vector length")
    vocab_size: int | None = Field(None, ge=1, description="token ids must be below it, as a real model's "
                                   "vocabulary (none: any id the protocol allows)")
    max_seq_length: int | None = Field(None, ge=1, description="tokens (words, or ids) an input may have, as a "
                                       "real model's; longer inputs are refused, 400 (none: no limit)")


def _vector(words: Sequence[str], size: int) -> list[float]:
    out = [0.0] * size
    for word in words:
        out[int(hashlib.sha256(word.encode()).hexdigest(), 16) % size] += 1.0
    norm = math.sqrt(sum(x * x for x in out)) or 1.0
    return [x / norm for x in out]


class FakeEmbeddingEngine:
    Options = FakeEmbeddingOptions
    max_batch = 64
    capacity = 4  # requests at once (admission's default)

    def __init__(self, model_name: str, options: FakeEmbeddingOptions) -> None:
        self.model_name, self.options = model_name, options
        self.dimensions_allowed = (options.size,)
        self.vocab_size = options.vocab_size
        self.calls = 0
        self._state = EngineHealth("loading")

    async def start(self) -> None:
        self._state = EngineHealth("ready")

    async def close(self) -> None:
        self._state = EngineHealth("closed")

    def health(self) -> EngineHealth:
        return EngineHealth(self._state.state, {"calls": self.calls})

    async def decode(self, items: Sequence[Sequence[int]]) -> list[str]:
        """Each id as a word: "12 7" (the words this engine embeds for them)."""
        check_token_ids(items, self.vocab_size)
        return [" ".join(map(str, ids)) for ids in items]

    async def embed(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None) -> EmbeddingResult:
        if dimensions is not None and dimensions not in self.dimensions_allowed:
            raise InvalidRequest(f"this model's vectors have {self.options.size} dimensions", param="dimensions")
        check_token_ids(inputs, self.vocab_size)
        items = [re.findall(r"\w+", x.lower()) if isinstance(x, str) else [str(i) for i in x] for x in inputs]
        limit = self.options.max_seq_length
        for index, words in enumerate(items):
            if limit is not None and len(words) > limit:
                raise InputTooLong(index, len(words), limit)
        self.calls += 1
        return EmbeddingResult([_vector(words, self.options.size) for words in items],
                               sum(len(words) for words in items))
