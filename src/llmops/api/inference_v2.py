"""The Open Inference Protocol (KServe V2) REST surface for the classify models.

A classify model takes one input, either
- BYTES, shape [N] (or [N, 1]): N encoded images (PNG, JPEG, WebP, GIF, BMP), each element base64 in JSON
  as KServe's clients send them; or
- FP32, shape [N, C, H, W] or [N, H, W, C]: the model's own input tensor, already preprocessed (resized and
  normalised as the model's image processor does; GET /v2/models/{name} gives C, H and W),
and answers three outputs, each [N, k]: `label` (BYTES), `score` (FP32, softmax probability) and `index`
(INT64, the class id), best first. `parameters.top_k` sets k; `outputs` may ask for some of them only.
A tensor's shape is checked (at most MAX_RANK dimensions, each at most MAX_DIMENSION, at most MAX_ELEMENTS in
all) before any arithmetic on it, so no request makes the loop multiply or print a huge number; its `data`
is flat, or nested exactly as its shape (a ragged nesting is refused even when its count matches).
A body over OFF_LOOP_BYTES is parsed, flattened and checked on the media side's threads (media/workers.py),
not on the event loop: a 1 MB tensor is about 90 ms of Python.
The body is JSON, declared so or not declared at all (Triton's client sends no Content-Type); text/plain, forms,
multipart and an undeclared body from a browser page on another origin, which a page on another site may POST
without a CORS preflight, are refused (api/classifying.require_json).
Each model has one version, MODEL_VERSION; the `/versions/{version}` routes serve it (another version is 404).
Errors are `{"error": "<message>"}` with the same status codes as the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmops import __version__
from llmops.api import deps
from llmops.api.classifying import (
    ClassifyInputs,
    Target,
    classify,
    decode_threads,
    parse_json,
    require_json,
    target,
    top_k,
)
from llmops.errors import InvalidRequest, ModelNotFound
from llmops.pipeline.classify import check_count
from llmops.protocol.inference_v2 import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    RequestInput,
    ResponseOutput,
    ServerMetadata,
    flatten,
)

router = APIRouter()
OUTPUTS = ("label", "score", "index")
_DATATYPES: dict[str, Datatype] = {"label": "BYTES", "score": "FP32", "index": "INT64"}
# Bounds on an input tensor's shape, module constants rather than settings: a classify input has 1, 2 or 4
# dimensions; a dimension is an int32 as Triton's clients send it; and no tensor within limits.max_body_bytes
# (each JSON element at least two bytes) comes near MAX_ELEMENTS, 64 FP32 images of 3x512x512 are 50 M.
MAX_RANK = 8
MAX_DIMENSION = 2**31 - 1
MAX_ELEMENTS = 2**26
_FP32_MAX = 3.4028234663852886e38
MODEL_VERSION = "1"  # each classify model is served at one version, as Triton numbers a model's first
OFF_LOOP_BYTES = 32_768  # bodies larger than this are parsed off the event loop (smaller: the thread hop costs more)


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="llmops", version=__version__, extensions=[])


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request) -> JSONResponse:
    ok = deps.serving_ready(request)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503, headers={} if ok else {"Retry-After": "5"})


def _classify_config(request: Request, name: str, version: str | None) -> None:
    """403 unless the key may use `name` (first: a key kept to other models learns nothing of which exist);
    404 unless `name` is a classify model (only those are served over this protocol) and `version`, when
    given, is its version."""
    deps.authorize(request, name)
    cfg = deps.settings(request).model(name)
    if cfg is None or cfg.kind != "classify":
        what = "does not exist" if cfg is None else f"is a {cfg.kind} model, not served over this protocol"
        raise ModelNotFound(f"model {name!r} {what}", param="model")
    if version is not None and version != MODEL_VERSION:
        raise ModelNotFound(f"model {name!r} has no version {version[:64]!r}; its one version is {MODEL_VERSION!r}",
                            param="version")


@router.get("/v2/models/{name}/ready")
async def model_ready(name: str, request: Request) -> JSONResponse:
    return _ready(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: str, request: Request) -> JSONResponse:
    return _ready(request, name, version)


def _ready(request: Request, name: str, version: str | None) -> JSONResponse:
    _classify_config(request, name, version)
    state = deps.pool(request).states()[name].state
    ok = state == "ready"
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/v2/models/{name}", response_model=ModelMetadata, response_model_exclude_none=True)
async def model_metadata(name: str, request: Request) -> ModelMetadata:
    return _metadata(request, name, None)


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata,
            response_model_exclude_none=True)
async def model_version_metadata(name: str, version: str, request: Request) -> ModelMetadata:
    return _metadata(request, name, version)


def _metadata(request: Request, name: str, version: str | None) -> ModelMetadata:
    _classify_config(request, name, version)
    tgt = target(request, name)
    c, h, w = tgt.engine.input_shape
    return ModelMetadata(
        name=name, versions=[MODEL_VERSION], platform=f"llmops_{tgt.config.engine}",
        inputs=[MetadataTensor(name="image", datatype="BYTES", shape=[-1]),
                MetadataTensor(name="pixel_values", datatype="FP32", shape=[-1, c, h, w])],
        outputs=[MetadataTensor(name=o, datatype=_DATATYPES[o], shape=[-1, -1]) for o in OUTPUTS])


@router.post("/v2/models/{name}/infer", response_model=InferenceResponse, response_model_exclude_none=True)
async def infer(name: str, request: Request) -> JSONResponse:
    """The body is an InferenceRequest in JSON, its Content-Type JSON or none (Triton's client sends none)."""
    return await _infer(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             response_model_exclude_none=True)
async def infer_version(name: str, version: str, request: Request) -> JSONResponse:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> JSONResponse:
    _classify_config(request, name, version)
    tgt = target(request, name)
    if "inference-header-content-length" in request.headers:
        raise InvalidRequest("the binary tensor data extension is not supported: send the tensors as JSON "
                             "(tritonclient: binary_data=False)", param="Inference-Header-Content-Length")
    require_json(request, untyped=True, what="JSON, sent with Content-Type: application/json or none")
    ctx = deps.context(request)
    raw = await request.body()
    if len(raw) <= OFF_LOOP_BYTES:
        body, wanted, k, inputs = _read(raw, tgt, name)
    else:
        body, wanted, k, inputs = await decode_threads(request).run(
            _read, raw, tgt, name, deadline=ctx.deadline(tgt.config), waiting="its body was read")
    result = await classify(request, tgt, inputs, k, "inputs[0].shape", ctx)
    outputs = [_output(o, result.classes) for o in wanted]
    response = InferenceResponse(model_name=result.model, model_version=MODEL_VERSION, id=body.id,
                                 outputs=outputs)
    return JSONResponse(response.model_dump(exclude_none=True), headers=result.headers)


def _read(raw: bytes, tgt: Target, name: str) -> tuple[InferenceRequest, list[str], int, ClassifyInputs]:
    """The request in `raw`: its body, the outputs it asks for, top_k and its input; 400 naming the first
    problem. Pure work on the bytes (no await, no shared state): run off the event loop for a large body."""
    body = parse_json(raw, InferenceRequest)
    if len(body.inputs) != 1:
        raise InvalidRequest(f"model {name!r} takes one input (BYTES images or an FP32 tensor); got "
                             f"{len(body.inputs)}", param="inputs")
    wanted = _wanted_outputs(body)
    k = top_k(tgt, (body.parameters or {}).get("top_k"), "parameters.top_k")
    return body, wanted, k, _inputs(tgt, body.inputs[0])


def _wanted_outputs(body: InferenceRequest) -> list[str]:
    if not body.outputs:
        return list(OUTPUTS)
    names = [o.name for o in body.outputs]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidRequest(f"unknown output {unknown[0]!r}; this model's outputs: {', '.join(OUTPUTS)}",
                             param="outputs")
    if len(set(names)) != len(names):  # each asked once: a body of repeats would multiply the answer
        raise InvalidRequest("each output may be asked for once", param="outputs")
    return names


def _inputs(tgt: Target, tensor: RequestInput) -> ClassifyInputs:
    where = "inputs[0]"
    if tensor.datatype not in ("BYTES", "FP32"):
        raise InvalidRequest(f"{where}.datatype {tensor.datatype} is not accepted: send BYTES (encoded images) or "
                             "FP32 (the model's input tensor)", param=f"{where}.datatype")
    count = _elements(tensor.shape, f"{where}.shape")
    check_count(tgt.config, tensor.shape[0], f"{where}.shape")  # before any image or number is decoded
    try:
        data = flatten(tensor.data, tensor.shape, count)
    except ValueError as exc:
        raise InvalidRequest(f"{where}: {exc}", param=f"{where}.data") from None
    if tensor.datatype == "BYTES":
        return _encoded(tensor, data, where)
    return ClassifyInputs(pixels=_pixels(tgt, tensor.shape, data, where))


def _elements(shape: list[int], param: str) -> int:
    """The elements `shape` holds; 400 unless it has 1 to MAX_RANK dimensions, each 1 to MAX_DIMENSION, and at
    most MAX_ELEMENTS in all. Checked in that order, so nothing large is multiplied or put in a message."""
    if not 1 <= len(shape) <= MAX_RANK:
        raise InvalidRequest(f"{param} has {len(shape)} dimensions; a tensor here has 1 to {MAX_RANK}", param=param)
    for i, d in enumerate(shape):
        if not 1 <= d <= MAX_DIMENSION:
            raise InvalidRequest(f"{param}[{i}]: every dimension must be from 1 to {MAX_DIMENSION}", param=param)
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ELEMENTS:
            raise InvalidRequest(f"{param} {shape} holds more than {MAX_ELEMENTS} elements, the limit", param=param)
    return count


def _encoded(tensor: RequestInput, data: list[Any], where: str) -> ClassifyInputs:
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidRequest(f"{where}: BYTES images take shape [N] or [N, 1]; got {tensor.shape}",
                             param=f"{where}.shape")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise InvalidRequest(f"{where}.data[{i}] must be a base64 string", param=f"{where}.data")
        try:
            out.append((base64.b64decode(item, validate=True), f"{where}.data[{i}]"))
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}.data[{i}] is not valid base64", param=f"{where}.data") from None
    return ClassifyInputs(encoded=out)


def _pixels(tgt: Target, shape: list[int], data: list[Any], where: str) -> Any:
    import numpy as np

    c, h, w = tgt.engine.input_shape
    if len(shape) != 4 or tuple(shape[1:]) not in ((c, h, w), (h, w, c)):
        raise InvalidRequest(f"{where}: an FP32 tensor must have shape [N, {c}, {h}, {w}] or [N, {h}, {w}, {c}]; "
                             f"got {shape}", param=f"{where}.shape")
    array = _fp32(data, f"{where}.data").reshape(shape)
    if tuple(shape[1:]) != (c, h, w):
        array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    return array


def _fp32(data: list[Any], param: str) -> Any:
    """`data` as float32, or 400: a value that is not a number, or not a finite FP32 (an integer of thousands of
    digits included: converting it would raise OverflowError)."""
    import numpy as np

    if any(isinstance(x, bool) or not isinstance(x, int | float) for x in data):
        raise InvalidRequest(f"{param} must hold numbers only (FP32)", param=param)
    not_fp32 = InvalidRequest(f"{param} holds a value that is not a finite FP32 number", param=param)
    try:
        wide = np.asarray(data, dtype=np.float64)
    except OverflowError:
        raise not_fp32 from None
    if not (np.isfinite(wide).all() and (np.abs(wide) <= _FP32_MAX).all()):
        raise not_fp32
    return wide.astype(np.float32)


def _output(name: str, classes: list[list[dict[str, Any]]]) -> ResponseOutput:
    k = len(classes[0]) if classes else 0
    data = [entry[name] for labels in classes for entry in labels]
    return ResponseOutput(name=name, shape=[len(classes), k], datatype=_DATATYPES[name], data=data)
