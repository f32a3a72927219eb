"""Images: POST /v1/images/generations (OpenAI), POST /generate (the guide's), the jobs API, and the
files behind response_format=url."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.image_params import ImageFields, parse_size, resolve
from llmops.engines.base import ImageRequest, ImageResult
from llmops.errors import InvalidRequest, NotFound, UnsupportedParameter, error_body
from llmops.pipeline import images, stages
from llmops.pipeline.images import ImageWork
from llmops.pipeline.stages import Call
from llmops.protocol.images import (
    GenerateRequest,
    GenerateResponse,
    ImageData,
    ImageGenerationRequest,
    ImageJob,
    ImagesResponse,
    JobProgress,
)
from llmops.scheduling.image_jobs import ImageJobs, Job
from llmops.settings import ModelConfig

router = APIRouter()
_FILE_NAME = r"^imgfile-[0-9a-f]{32}\.png$"


def _work(body: ImageGenerationRequest, *, cached: bool = True) -> ImageWork:
    """The OpenAI-shaped request as image work; seeded b64_json requests are deterministic (cacheable): the
    cache keys on the declared fields only, as a refused field left null (an extra) asks for nothing."""
    width, height = parse_size(body.size)

    def resolve_for(cfg: ModelConfig, prompt: str, negative: str | None) -> ImageRequest:
        fields = ImageFields(prompt, negative, width, height, body.num_inference_steps, body.guidance_scale,
                             body.n, body.seed)
        return resolve(cfg, fields, size_params=("size", "size"))

    cacheable = cached and body.seed is not None and body.response_format == "b64_json"
    keyed = set(ImageGenerationRequest.model_fields) - {"user", "prompt", "negative_prompt"}
    cache_fields = body.model_dump(include=keyed) if cacheable else None
    return ImageWork(body.model, body.prompt, body.negative_prompt, body.n, resolve_for, cache_fields)


async def _prepared(request: Request, work: ImageWork) -> Call:
    return await stages.prepare(deps.services(request), deps.context(request), work)


async def _generated(request: Request, call: Call, work: ImageWork) -> ImageResult:
    """The images, cancelled if the client goes away; a request that never reached its job gives back its
    budget reservation (a job settles its own when it finishes)."""
    try:
        return await cancel_on_disconnect(request, images.generate(call.services, call, work))
    finally:
        if call.served == "":
            stages.settle_unused(call.services, call)


def _store(request: Request, png: bytes) -> str:
    folder = Path(cast(str, deps.settings(request).images.store_dir)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"imgfile-{uuid.uuid4().hex}.png"
    (folder / name).write_bytes(png)
    return f'{request.url_for("image_file", name=name)}?{deps.services(request).url_signer.query(name)}'


def _data(request: Request, result: ImageResult, response_format: str) -> list[ImageData]:
    if response_format == "url":
        return [ImageData(url=_store(request, png)) for png in result.images]
    return [ImageData(b64_json=base64.b64encode(png).decode()) for png in result.images]


def _refuse_unsupported(body: ImageGenerationRequest) -> None:
    """A field the server does not honour (protocol/fields.py's `images` table) is a 400 naming it, before
    anything else is checked."""
    refused = body.unsupported_field()
    if refused:
        raise UnsupportedParameter(f"'{refused}' is not supported by this server", param=refused)


def _needs_store(request: Request, body: ImageGenerationRequest) -> None:
    if body.response_format == "url" and deps.settings(request).images.store_dir is None:
        raise InvalidRequest("response_format 'url' needs images.store_dir configured on the server",
                             param="response_format")


@router.post("/v1/images/generations", response_model=ImagesResponse)
async def generations(body: ImageGenerationRequest, request: Request) -> JSONResponse:
    """Seeded b64_json requests are deterministic: they are answered from the response cache when it has them
    (after the budget check, like every cached answer)."""
    _refuse_unsupported(body)
    _needs_store(request, body)
    call = await _prepared(request, _work(body))
    if call.hit is not None:
        return JSONResponse(call.hit, headers=call.headers())
    assert isinstance(call.work, ImageWork)
    result = await _generated(request, call, call.work)
    out = ImagesResponse(created=int(time.time()), data=_data(request, result, body.response_format)).model_dump()
    await stages.cache_store(call.services, call, out)
    return JSONResponse(out, headers=call.headers())


@router.post("/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
    def resolve_for(cfg: ModelConfig, prompt: str, negative: str | None) -> ImageRequest:
        fields = ImageFields(prompt, negative, body.width, body.height, body.num_inference_steps,
                             body.guidance_scale, 1, body.seed)
        return resolve(cfg, fields)

    started = time.perf_counter()
    call = await _prepared(request, ImageWork(body.model, body.prompt, body.negative_prompt, 1, resolve_for, None))
    assert isinstance(call.work, ImageWork)
    assert call.work.request is not None
    result = await _generated(request, call, call.work)
    image_request = call.work.request
    parameters = {
        "prompt": image_request.prompt, "negative_prompt": image_request.negative_prompt,
        "num_inference_steps": image_request.steps, "guidance_scale": image_request.guidance_scale,
        "width": image_request.width, "height": image_request.height, "model": call.config.name,
        "seed": result.seeds[0],
    }
    return GenerateResponse(image_base64=base64.b64encode(result.images[0]).decode(),
                            generation_time=round(time.perf_counter() - started, 2), parameters=parameters)


def job_view(job: Job, queue: ImageJobs) -> ImageJob:
    progress = JobProgress(step=job.step, total=job.request.steps) if job.status != "queued" else None
    data = None
    if job.result is not None:
        data = [ImageData(b64_json=base64.b64encode(png).decode()) for png in job.result.images]
    return ImageJob(id=job.id, model=job.model, status=job.status, created_at=int(job.created_at),
                    position=queue.position(job), progress=progress, data=data,
                    error=error_body(job.error)["error"] if job.error else None)


@router.post("/v1/images/jobs", status_code=202, response_model=ImageJob)
async def create_job(body: ImageGenerationRequest, request: Request) -> JSONResponse:
    _refuse_unsupported(body)
    if body.response_format == "url":
        raise InvalidRequest("image jobs return b64_json images", param="response_format")
    call = await _prepared(request, _work(body, cached=False))  # a job always runs
    assert isinstance(call.work, ImageWork)
    if call.ctx.timeout_s is None:  # a job may wait longer than a synchronous request
        call.deadline = call.ctx.received + call.config.limits.max_deadline_s
    job = images.submit(call.services, call, call.work)
    job.owner = call.ctx.subject  # only this key may read or cancel it (None: an open server, anyone)
    await asyncio.sleep(0)  # let the worker pick it up if the queue was idle
    view = job_view(job, deps.services(request).image_jobs)
    return JSONResponse(view.model_dump(), status_code=202, headers={"Location": f"/v1/images/jobs/{job.id}"})


def _key_id(request: Request) -> str | None:
    """The caller's API key id; None on an open server."""
    key = deps.api_key(request)
    return key.id if key is not None else None


@router.get("/v1/images/jobs/{job_id}", response_model=ImageJob)
async def get_job(job_id: str, request: Request) -> ImageJob:
    """The job, for the key that created it: another key gets 404, as for an id that does not exist."""
    jobs = deps.services(request).image_jobs
    return job_view(jobs.get_for(job_id, _key_id(request)), jobs)


@router.delete("/v1/images/jobs/{job_id}", response_model=ImageJob)
async def cancel_job(job_id: str, request: Request) -> ImageJob:
    """Cancels the job, for the key that created it only (another key gets 404, and the job runs on)."""
    jobs = deps.services(request).image_jobs
    return job_view(jobs.cancel_for(job_id, _key_id(request)), jobs)


@router.get("/v1/images/files/{name}", name="image_file")
async def image_file(name: str, request: Request, expires: str | None = None, sig: str | None = None) -> Response:
    """Signed (`expires`, `sig`): no key needed (pipeline/signed_urls.py); 403 when the signature is bad or
    expired. Unsigned: the API key, like any call."""
    if sig is not None:  # http_edge.signed_image_request let it through without a key for this `sig` alone
        deps.services(request).url_signer.verify(name, expires, sig)
    png = await asyncio.to_thread(read_stored_file, deps.settings(request).images.store_dir, name)
    return Response(png, media_type="image/png")


def read_stored_file(store: str | None, name: str) -> bytes:
    """A stored image's bytes: a plain file directly inside the store folder, never through a symlink
    (the name is checked, the folder resolved, and the file opened with O_NOFOLLOW)."""
    if not store or not re.match(_FILE_NAME, name):
        raise NotFound("no such image file")
    folder = Path(store).expanduser().resolve()
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise NotFound("no such image file") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NotFound("no such image file")
        return f.read()
