"""One classification request on its way through, for both the Open Inference Protocol and
/v1/classifications:

    model + key permission → decode (off the event loop, within limits: a bad image is a 400 before
    anything is counted) → budget and breaker → cache lookup (identical images, same top_k)
    → admission → engine (deadline, disconnect) → cost per image + metrics → cache store

The routes only parse their wire format into `ClassifyInputs` and format the `Classified` result.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.request_meta import RequestMeta, request_meta
from llmops.engines.base import ClassifyEngine, ClassifyRequest, Label
from llmops.errors import DeadlineExceeded, InvalidRequest, LLMOpsError, ModelNotFound
from llmops.media.image_input import ImageLimits, decode_images
from llmops.middleware.observe import log_fields
from llmops.observability.inference import InferenceObserver
from llmops.observability.metrics import rejection_reason
from llmops.scheduling.pool import Served
from llmops.settings import ModelConfig

Classes = list[list[dict[str, Any]]]  # per image: [{"label", "score", "index"}, ...] best first


@dataclass
class ClassifyInputs:
    """What a request sends: encoded images with where each came from (for error messages), or `pixels`,
    the model's own input tensor (float32 numpy [N, C, H, W])."""

    encoded: list[tuple[bytes, str]] = field(default_factory=list)
    pixels: Any = None

    @property
    def count(self) -> int:
        return len(self.encoded) if self.pixels is None else int(self.pixels.shape[0])

    def fingerprint(self) -> list[str]:
        if self.pixels is not None:
            return [f"pixels:{list(self.pixels.shape)}:{hashlib.sha256(self.pixels.tobytes()).hexdigest()}"]
        return [hashlib.sha256(data).hexdigest() for data, _ in self.encoded]


@dataclass
class Classified:
    model: str
    classes: Classes
    headers: dict[str, str]


@dataclass
class Target:
    served: Served
    engine: ClassifyEngine

    @property
    def config(self) -> ModelConfig:
        return self.served.config


def target(request: Request, name: str | None) -> Target:
    """The named classify model (the first configured one when None), loaded, and allowed for this key."""
    if name is None:
        name = next((m.name for m in deps.settings(request).models if m.kind == "classify"), "")
    served = deps.pool(request).get(name, "classify")
    if not isinstance(served.engine, ClassifyEngine):
        raise ModelNotFound(f"model {name!r} does not classify images", param="model")
    deps.authorize(request, name)
    return Target(served, served.engine)


def top_k(cfg: ModelConfig, engine: ClassifyEngine, requested: Any, param: str) -> int:
    if requested is None:
        return min(cfg.limits.classify.default_top_k, len(engine.labels))
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= len(engine.labels):
        raise InvalidRequest(f"{param} must be an integer from 1 to {len(engine.labels)} (the model's classes)",
                             param=param)
    return requested


def check_count(cfg: ModelConfig, count: int, param: str) -> None:
    limit = cfg.limits.classify.max_images
    if count > limit:
        raise InvalidRequest(f"{count} images in one request; the limit is {limit}", param=param)
    if count < 1:
        raise InvalidRequest("no images to classify", param=param)


def image_limits(cfg: ModelConfig) -> ImageLimits:
    c = cfg.limits.classify
    return ImageLimits(c.max_image_bytes, c.max_pixels, tuple(c.formats))


async def classify(request: Request, tgt: Target, inputs: ClassifyInputs, k: int) -> Classified:
    cfg = tgt.config
    images: list[Any] = []
    if inputs.pixels is None:
        images = await asyncio.to_thread(decode_images, inputs.encoded, image_limits(cfg))
    cacher = deps.cacher(request)
    key = cacher.key(request, "classify", {"model": cfg.name, "top_k": k, "inputs": inputs.fingerprint()}, True)
    accountant = deps.accountant(request)
    charge = await accountant.admit(deps.api_key(request), cfg)  # a cached answer passes the budget too
    obs = InferenceObserver(request.app.state.metrics, request.app.state.tracer, cfg.name, log_fields(request.scope))
    meta = request_meta(request, cfg)
    classified, engine_s, status = 0, 0.0, "error"
    try:
        hit = await cacher.get(key, cfg.name)
        if hit is not None:
            status = "success"
            return Classified(cfg.name, hit["classes"], {"X-Cache": "hit"})
        job = ClassifyRequest(f"clf-{uuid.uuid4().hex}", tuple(images), inputs.pixels, k)
        classes, engine_s = await cancel_on_disconnect(request, _classify(tgt, job, meta, obs))
        classified, status = inputs.count, "success"
        await cacher.put(key, {"classes": classes})
        return Classified(cfg.name, classes, {**meta.headers(), "X-Cache": "miss" if key else "bypass"})
    except LLMOpsError as exc:
        status = rejection_reason(exc.code) or ("cancelled" if exc.code == "cancelled" else "error")
        raise
    finally:
        accountant.settle(charge, images=classified, engine_s=engine_s)
        obs.classified(status, inputs.count if status == "success" else 0)


async def _classify(tgt: Target, job: ClassifyRequest, meta: RequestMeta,
                    obs: InferenceObserver) -> tuple[Classes, float]:
    async with tgt.served.admission.slot(meta.deadline, meta.priority) as ticket:
        meta.admitted(ticket)
        obs.admitted(ticket)
        obs.metrics.batch_size.labels(tgt.config.name).observe(job.count)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(max(0.0, meta.deadline - time.monotonic())):
                (result,) = await tgt.engine.classify([job])
        except TimeoutError:
            raise DeadlineExceeded("the classification ran past its deadline") from None
        return [[_label(label) for label in labels] for labels in result], time.perf_counter() - started


def _label(label: Label) -> dict[str, Any]:
    return {"label": label.label, "score": label.score, "index": label.index}
