"""Images: POST /v1/images/generations (OpenAI), POST /generate (the guide's), the jobs API, and the
files behind response_format=url."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.image_params import ImageFields, parse_size, resolve
from llmops.api.request_meta import request_meta
from llmops.engines.base import ImageEngine, ImageRequest, ImageResult
from llmops.errors import DeadlineExceeded, InvalidRequest, LLMOpsError, NotFound, error_body
from llmops.middleware.observe import log_fields
from llmops.observability.inference import InferenceObserver
from llmops.observability.metrics import rejection_reason
from llmops.protocol.images import (
    GenerateRequest,
    GenerateResponse,
    ImageData,
    ImageGenerationRequest,
    ImageJob,
    ImagesResponse,
    JobProgress,
)
from llmops.scheduling.image_jobs import Batching, ImageJobs, Job
from llmops.settings import ModelConfig

router = APIRouter()
_FILE_NAME = r"^imgfile-[0-9a-f]{32}\.png$"


def jobs(request: Request) -> ImageJobs:
    return cast(ImageJobs, request.app.state.image_jobs)


async def wait_for(job: Job, queue: ImageJobs, deadline: float) -> ImageResult:
    """Wait for a job until its deadline (then 504). If the waiter goes away (client disconnect,
    shutdown) or the deadline passes, the job is cancelled: it leaves the queue, or stops at its next step."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await job.done.wait()
    except TimeoutError:
        raise DeadlineExceeded(f"the image request reached its deadline while {job.status}") from None
    finally:
        if not job.done.is_set():
            queue.cancel(job.id)
    if job.error is not None:
        raise job.error
    assert job.result is not None
    return job.result


def _batching(cfg: ModelConfig) -> Batching:
    return Batching(cfg.limits.image.max_batch_size, cfg.limits.image.batch_timeout_s)


def _guard_prompts(request: Request, prompt: str, negative: str | None) -> tuple[str, str | None]:
    """The input guardrails over the prompts (a block raises; a redaction changes the prompt)."""
    prompt, checked = deps.guardrails(request).check_input([prompt, negative or ""])
    return prompt, checked or negative


def _guarded(request: Request, body: ImageGenerationRequest) -> ImageGenerationRequest:
    prompt, negative = _guard_prompts(request, body.prompt, body.negative_prompt)
    return body.model_copy(update={"prompt": prompt, "negative_prompt": negative})


def _fields(body: ImageGenerationRequest) -> ImageFields:
    width, height = parse_size(body.size)
    return ImageFields(body.prompt, body.negative_prompt, width, height, body.num_inference_steps,
                       body.guidance_scale, body.n, body.seed)


async def _submit(request: Request, body: ImageGenerationRequest) -> tuple[ModelConfig, Job]:
    cfg, engine = deps.pool(request).image_engine(body.model)
    deps.authorize(request, cfg.name)
    if body.response_format == "url" and deps.settings(request).images.store_dir is None:
        raise InvalidRequest("response_format 'url' needs images.store_dir configured on the server",
                             param="response_format")
    image_request = resolve(cfg, _fields(body), size_params=("size", "size"))
    return cfg, await _submit_accounted(request, cfg, engine, image_request)


async def _submit_accounted(request: Request, cfg: ModelConfig, engine: ImageEngine, image: ImageRequest) -> Job:
    """Budget and spend-breaker checks, then the job; its images and engine time are charged when it ends."""
    accountant = deps.accountant(request)
    charge = await accountant.admit(deps.api_key(request), cfg)

    def on_done(job: Job) -> None:
        images = len(job.result.images) if job.result is not None else 0
        accountant.settle(charge, images=images, engine_s=job.engine_s if images else 0.0)

    return jobs(request).submit(cfg.name, engine, image, _batching(cfg), on_done)


def _store(request: Request, png: bytes) -> str:
    folder = Path(cast(str, deps.settings(request).images.store_dir)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"imgfile-{uuid.uuid4().hex}.png"
    (folder / name).write_bytes(png)
    return f'{request.url_for("image_file", name=name)}?{request.app.state.url_signer.query(name)}'


def _data(request: Request, result: ImageResult, response_format: str) -> list[ImageData]:
    if response_format == "url":
        return [ImageData(url=_store(request, png)) for png in result.images]
    return [ImageData(b64_json=base64.b64encode(png).decode()) for png in result.images]


@router.post("/v1/images/generations", response_model=ImagesResponse)
async def generations(body: ImageGenerationRequest, request: Request) -> JSONResponse:
    """Seeded b64_json requests are deterministic: they are answered from the response cache when it has them."""
    body = _guarded(request, body)
    cacher = deps.cacher(request)
    key = cacher.key(request, "images", body.model_dump(exclude={"user"}),
                     body.seed is not None and body.response_format == "b64_json")
    cfg_name = body.model or deps.pool(request).image_engine(None)[0].name
    hit = await cacher.get(key, cfg_name)
    if hit is not None:
        deps.authorize(request, cfg_name)
        return JSONResponse(hit, headers={"X-Cache": "hit"})
    cfg, job = await _submit(request, body)
    deadline = request_meta(request, cfg).deadline
    result = await _observed(request, cfg.name, wait_for(job, jobs(request), deadline))
    out = ImagesResponse(created=int(time.time()), data=_data(request, result, body.response_format)).model_dump()
    await cacher.put(key, out)
    return JSONResponse(out, headers={"X-Cache": "miss" if key else "bypass"})


@router.post("/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
    cfg, engine = deps.pool(request).image_engine(body.model)
    deps.authorize(request, cfg.name)
    prompt, negative = _guard_prompts(request, body.prompt, body.negative_prompt)
    fields = ImageFields(prompt, negative, body.width, body.height, body.num_inference_steps,
                         body.guidance_scale, 1, body.seed)
    image_request = resolve(cfg, fields)
    deadline = request_meta(request, cfg).deadline
    started = time.perf_counter()
    job = await _submit_accounted(request, cfg, engine, image_request)
    result = await _observed(request, cfg.name, wait_for(job, jobs(request), deadline))
    parameters = {
        "prompt": image_request.prompt, "negative_prompt": image_request.negative_prompt,
        "num_inference_steps": image_request.steps, "guidance_scale": image_request.guidance_scale,
        "width": image_request.width, "height": image_request.height, "model": cfg.name, "seed": result.seeds[0],
    }
    return GenerateResponse(image_base64=base64.b64encode(result.images[0]).decode(),
                            generation_time=round(time.perf_counter() - started, 2), parameters=parameters)


async def _observed(request: Request, model: str, work: Coroutine[Any, Any, ImageResult]) -> ImageResult:
    obs = InferenceObserver(request.app.state.metrics, request.app.state.tracer, model, log_fields(request.scope))
    try:
        result = await cancel_on_disconnect(request, work)
    except LLMOpsError as exc:
        obs.images(rejection_reason(exc.code) or "error", 0)
        raise
    obs.images("success", len(result.images))
    return result


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
    if body.response_format == "url":
        raise InvalidRequest("image jobs return b64_json images", param="response_format")
    _, job = await _submit(request, _guarded(request, body))
    await asyncio.sleep(0)  # let the worker pick it up if the queue was idle
    view = job_view(job, jobs(request))
    return JSONResponse(view.model_dump(), status_code=202, headers={"Location": f"/v1/images/jobs/{job.id}"})


@router.get("/v1/images/jobs/{job_id}", response_model=ImageJob)
async def get_job(job_id: str, request: Request) -> ImageJob:
    return job_view(jobs(request).get(job_id), jobs(request))


@router.delete("/v1/images/jobs/{job_id}", response_model=ImageJob)
async def cancel_job(job_id: str, request: Request) -> ImageJob:
    return job_view(jobs(request).cancel(job_id), jobs(request))


@router.get("/v1/images/files/{name}", name="image_file")
async def image_file(name: str, request: Request, expires: str | None = None, sig: str | None = None) -> Response:
    """Signed (`expires`, `sig`): no key needed (see signed_urls). Unsigned: the API key, like any call."""
    if sig is not None:
        request.app.state.url_signer.verify(name, expires, sig)
    return FileResponse(_stored_file(deps.settings(request).images.store_dir, name), media_type="image/png")


def _stored_file(store: str | None, name: str) -> Path:
    path = Path(store).expanduser() / name if store and re.match(_FILE_NAME, name) else None
    if path is None or not path.is_file():
        raise NotFound("no such image file")
    return path
