"""What the Open Inference Protocol routes and /v1/classifications share: the body declared JSON (a cross-site
form or text/plain POST is refused, as api/direct.py refuses it), find the model (the key's permission first:
403, then 404, 503), check top_k, then the pipeline's stages before admission (pipeline/classify.py: the
image count, budget, cache; a cache hit decodes nothing), then the images decoded within the model's limits and
the request's pixel budget on the media side's own threads (media/workers.py: never the event loop nor
asyncio's default executor, which the stores use; a bad image is a 400 and its budget reservation given back),
then admission, the batcher, cost per image, metrics, and the cache store. The routes only parse their wire
format and format the answer."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from llmops.api import deps
from llmops.api.direct import json_content
from llmops.api.disconnect import cancel_on_disconnect
from llmops.engines.base import Classes as EngineClasses
from llmops.engines.base import ClassifyEngine, ClassifyRequest
from llmops.errors import InvalidRequest
from llmops.media.image_input import MAX_REQUEST_PIXELS, ImageLimits, decode_images
from llmops.media.workers import DecodeThreads
from llmops.pipeline import stages
from llmops.pipeline.classify import ClassifyWork
from llmops.pipeline.classify import classify as run_classify
from llmops.pipeline.context import RequestContext
from llmops.pipeline.services import Services
from llmops.protocol.wire import TYPE_ERROR, wrong_type
from llmops.settings import ModelConfig

M = TypeVar("M", bound=BaseModel)
Classes = list[list[dict[str, Any]]]  # per image: [{"label", "score", "index"}, ...] best first
# Decoded images are scaled down to this many times the model's input side (their shorter side) before the next
# is decoded: room for any processor's resize before its crop (ResNet's 256 for 224), so the model sees nearly
# the same pixels, without holding a request's images at full size. A module constant, not a setting.
KEEP_SIDE_FACTOR = 2


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
    config: ModelConfig
    engine: ClassifyEngine


def target(request: Request, name: str | None) -> Target:
    """The named classify model (the first configured one when None), allowed for this key, loaded. The key's
    permission is checked first, as chat's and embeddings' are: a key kept to other models gets the same 403
    for a model that exists and one that does not, and learns nothing of which do."""
    pool = deps.pool(request)
    name = name or pool.default_model("classify")
    deps.authorize(request, name)
    pool.config(name, "classify")
    served, engine = pool.classify_engine(name)
    return Target(served.config, engine)


def require_json(request: Request, *, untyped: bool, what: str = "JSON, sent with Content-Type: application/json"
                 ) -> None:
    """400 unless the body is declared JSON (application/json or application/*+json: api/direct.json_content,
    what the other JSON routes require). A page on another site can POST text/plain, a form or multipart to a
    server on the loopback without a CORS preflight; those are refused. `untyped`: a body with no Content-Type
    at all is accepted too (Triton's client sends none), but not from a browser page on another origin
    (`trusted_origin`): such a page can send an untyped body (a Blob with no type) without a preflight, and a
    browser names its origin on every cross-origin POST."""
    if json_content(request.scope):
        return
    if untyped and "content-type" not in request.headers and trusted_origin(request):
        return
    raise InvalidRequest(f"the request body must be {what}")


def trusted_origin(request: Request) -> bool:
    """Whether a body a browser sends without a CORS preflight (untyped, multipart) may be taken: no `Origin`
    (not a browser, or a browser's same-origin request that omits it), this server's own (its host and port
    as the request's `Host` names them; the scheme is not compared, as a TLS proxy in front changes it), or
    one `web.cors_origins` allows. `Origin: null` (a sandboxed frame, a file page) is another origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    scheme, sep, rest = origin.partition("://")
    if sep and scheme in ("http", "https") and host and rest.lower() == host.lower():
        return True
    return origin in deps.settings(request).web.cors_origins


def decode_threads(request: Request) -> DecodeThreads:
    """The app's threads for decoding client media, made on the first request that needs them; closed with
    the app (`close_decode_threads`, from app.py's lifespan)."""
    state = request.app.state
    threads: DecodeThreads | None = getattr(state, "decode_threads", None)
    if threads is None:
        threads = state.decode_threads = DecodeThreads()
    return threads


def close_decode_threads(app: Any) -> None:
    threads: DecodeThreads | None = getattr(app.state, "decode_threads", None)
    if threads is not None:
        threads.close()


def parse_json(raw: bytes, model: type[M]) -> M:
    """The body as `model` (its content type is checked by `require_json`); 400 naming the first problem."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise InvalidRequest(f"request body is not valid JSON: {first['msg']}") from None
        param = ".".join(str(p) for p in first["loc"]) or None
        where = f"'{param}'" if param else "the request body"
        expected = wrong_type(first)  # as api/direct.py invalid_request says it
        if expected is not None and param is not None:
            raise InvalidRequest(f"invalid type for {where}: {expected}", param=param, code=TYPE_ERROR) from None
        raise InvalidRequest(f"invalid value for {where}: {first['msg']}", param=param) from None


def top_k(tgt: Target, requested: Any, param: str) -> int:
    labels = len(tgt.engine.labels)
    if requested is None:
        return min(tgt.config.limits.classify.default_top_k, labels)
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= labels:
        raise InvalidRequest(f"{param} must be an integer from 1 to {labels} (the model's classes)", param=param)
    return requested


def image_limits(tgt: Target) -> ImageLimits:
    """The model's limits on uploaded images; a request's images may hold at least one image at the per-image
    limit, and each is kept at KEEP_SIDE_FACTOR times the model's input side (all of it before the model loads)."""
    c = tgt.config.limits.classify
    keep_side = KEEP_SIDE_FACTOR * max(tgt.engine.input_shape[1:])
    return ImageLimits(c.max_image_bytes, c.max_pixels, tuple(c.formats),
                       max_request_pixels=max(MAX_REQUEST_PIXELS, c.max_pixels), keep_side=keep_side or None)


async def classify(request: Request, tgt: Target, inputs: ClassifyInputs, k: int, count_param: str,
                   ctx: RequestContext | None = None) -> Classified:
    """The stages before admission on the encoded images (the image count, the key's budget, the cache), then
    the images decoded, then the model."""
    job = ClassifyRequest(f"clf-{uuid.uuid4().hex}", (), inputs.pixels, k)
    work = ClassifyWork(tgt.config.name, job, inputs.fingerprint(), count_param, count=inputs.count)
    services = deps.services(request)
    call = await stages.prepare(services, ctx or deps.context(request), work)
    if call.hit is not None:
        return Classified(call.config.name, call.hit["classes"], call.headers())
    result = await cancel_on_disconnect(request, _decoded_then_run(request, services, call, work, tgt, inputs))
    classes = [[{"label": x.label, "score": x.score, "index": x.index} for x in labels] for labels in result]
    await stages.cache_store(services, call, {"classes": classes})
    return Classified(call.served, classes, call.headers())


async def _decoded_then_run(request: Request, services: Services, call: stages.Call, work: ClassifyWork,
                            tgt: Target, inputs: ClassifyInputs) -> EngineClasses:
    if inputs.pixels is None:
        try:
            images = await decode_threads(request).run(decode_images, inputs.encoded, image_limits(tgt),
                                                       deadline=call.deadline, waiting="its images were decoded")
            work.with_images(images)
        except BaseException:  # a bad image, the deadline, a disconnect: nothing ran, nothing is charged
            stages.settle_unused(services, call)
            raise
    return await run_classify(services, call, work)
