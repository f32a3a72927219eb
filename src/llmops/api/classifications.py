"""POST /v1/classifications: base64 images in JSON (declared application/json, as every JSON route here), or a
multipart upload (`file` parts, with `model` and `top_k` fields), answered with the top-k labels and scores of
each image. Any other body (text/plain, a urlencoded form, none declared) is a 400, as is a multipart upload
from a browser page on another origin (classifying.trusted_origin)."""

from __future__ import annotations

import base64
import binascii
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmops.api.classifying import (
    ClassifyInputs,
    classify,
    parse_json,
    require_json,
    target,
    top_k,
    trusted_origin,
)
from llmops.errors import InvalidRequest
from llmops.protocol.classifications import (
    Classification,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationUsage,
    LabelScore,
)

router = APIRouter()
MAX_FORM_PARTS = 256


def _decoded(images: list[str]) -> ClassifyInputs:
    out = []
    for i, item in enumerate(images):
        try:
            out.append((base64.b64decode(item, validate=True), f"images[{i}]"))
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"images[{i}] is not valid base64", param=f"images[{i}]") from None
    return ClassifyInputs(encoded=out)


async def _parse_form(request: Request) -> tuple[str | None, int | None, ClassifyInputs]:
    encoded = []
    async with request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS) as form:
        for i, part in enumerate(form.getlist("file")):
            if isinstance(part, str):
                raise InvalidRequest("'file' must be an uploaded file", param="file")
            encoded.append((await part.read(), f"file[{i}] ({part.filename or 'unnamed'})"))
        model, raw_k = form.get("model"), form.get("top_k")
    k = None
    if raw_k is not None:
        try:
            k = int(str(raw_k))
        except ValueError:
            raise InvalidRequest("top_k must be an integer", param="top_k") from None
    if not encoded:
        raise InvalidRequest("upload at least one image as a 'file' part", param="file")
    return (str(model) if model is not None else None), k, ClassifyInputs(encoded=encoded)


@router.post("/v1/classifications", response_model=ClassificationResponse)
async def classifications(request: Request) -> JSONResponse:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not trusted_origin(request):  # a form a page on another site can post without a preflight
            raise InvalidRequest("a multipart upload from a browser page on another origin is refused (send "
                                 "JSON with Content-Type: application/json, or list the origin in "
                                 "web.cors_origins)")
        model, k, inputs = await _parse_form(request)
    else:
        require_json(request, untyped=False, what="JSON, sent with Content-Type: application/json, or a "
                     "multipart/form-data upload of 'file' parts")
        body = parse_json(await request.body(), ClassificationRequest)
        model, k, inputs = body.model, body.top_k, _decoded(body.images)
    tgt = target(request, model)
    result = await classify(request, tgt, inputs, top_k(tgt, k, "top_k"), "images")
    response = ClassificationResponse(
        id=f"clf-{uuid.uuid4().hex}", created=int(time.time()), model=result.model,
        data=[Classification(index=i, labels=[LabelScore(**x) for x in labels])
              for i, labels in enumerate(result.classes)],
        usage=ClassificationUsage(images=inputs.count))
    return JSONResponse(response.model_dump(), headers=result.headers)
