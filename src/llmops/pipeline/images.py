"""Image work through the stages: the `Work` adapter, and the stages from admission on: a job behind the
model's admission (the same queue, positions, deadlines and metrics as text; the image batcher coalesces
what it admits), accounting when the job finishes, however it finishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from llmops.engines.base import ImageRequest, ImageResult
from llmops.errors import DeadlineExceeded, LLMOpsError
from llmops.observability.inference import InferenceObserver
from llmops.pipeline.accounting import NO_PROMPT, PromptBound, worst_case_image_usd
from llmops.pipeline.services import Services
from llmops.pipeline.stages import Call, settle_unused
from llmops.scheduling.image_jobs import Batching, BatchJob, ImageRunner, Job, Jobs, Req, Res, Submission
from llmops.settings import ModelConfig


class ImageWork:
    """An image request as the pipeline sees it. `resolve` turns the parsed fields into the engine request
    once the model is known (checking them against its limits); `cache_fields` is None when the answer is
    not deterministic (no seed, or a URL answer)."""

    kind = "images"
    model_kind: Literal["image"] = "image"
    user = None
    service_tier = None

    def __init__(self, model: str | None, prompt: str, negative_prompt: str | None, n: int,
                 resolve: Any, cache_fields: dict[str, Any] | None) -> None:
        self.model, self.prompt_text, self.negative_prompt, self.n = model, prompt, negative_prompt, n
        self._resolve, self._cache_fields = resolve, cache_fields
        self.request: ImageRequest | None = None

    def check(self, config: ModelConfig) -> None:
        self.request = self._resolve(config, self.prompt_text, self.negative_prompt)

    def prompt(self, call: Call, services: Services) -> None:
        return None

    def texts(self) -> list[str]:
        return [self.prompt_text, self.negative_prompt or ""]

    async def readable(self, call: Call) -> list[str]:
        return self.texts()

    def with_texts(self, texts: list[str]) -> None:
        self.prompt_text, negative = texts
        self.negative_prompt = negative or self.negative_prompt
        if self.request is not None:
            self.request = replace(self.request, prompt=self.prompt_text,
                                   negative_prompt=negative or self.request.negative_prompt)

    def input_ids(self) -> int:
        return 0

    def prompt_bound(self) -> PromptBound:
        return NO_PROMPT  # charged by the image, not by tokens

    def worst_case_usd(self, config: ModelConfig, prompt_tokens: int, deadline_s: float) -> float:
        return worst_case_image_usd(config, self.n, deadline_s)

    def max_completion_tokens(self, config: ModelConfig) -> int:
        return 0

    def cache_payload(self, call: Call) -> dict[str, Any] | None:
        if self._cache_fields is None:
            return None
        return {**self._cache_fields, "prompt": self.prompt_text, "negative_prompt": self.negative_prompt}

    def semantic_query(self, call: Call) -> tuple[str, str] | None:
        return None


def submit(services: Services, call: Call, work: ImageWork) -> Job:
    """Stage `admission` for an image request (see submit_job)."""
    served, engine = services.pool.image_engine(call.config.name)
    assert work.request is not None
    lim = served.config.limits.image
    return submit_job(services, call, services.image_jobs, work.request,
                      Submission(served.config.name, ImageRunner(engine), served.admission,
                                 Batching(lim.max_batch_size, lim.batch_timeout_s), call.priority, call.deadline),
                      lambda result: len(result.images))


def submit_job(services: Services, call: Call, jobs: Jobs[Req, Res], request: Req, to: Submission[Req, Res],
               images_of: Callable[[Res], int]) -> BatchJob[Req, Res]:
    """Stage `admission` for batched kinds (images, classification): a job with a place at the model's
    admission (503 at once when its queue is full, counted as a rejection); its images and engine time are
    charged when it ends. A job is work in flight until it ends, as a request is: a drain waits for it (an
    async job's request has ended, with its 202, long before it does)."""
    charge = call.charge
    assert charge is not None
    accountant, lifecycle = services.accountant, services.lifecycle

    def on_done(job: BatchJob[Req, Res]) -> None:
        lifecycle.leave()
        images = images_of(job.result) if job.result is not None else 0
        accountant.settle(charge, images=images, engine_s=job.engine_s if images else 0.0)

    try:
        job = jobs.submit(to, request, on_done)
    except LLMOpsError as exc:
        settle_unused(services, call)
        services.metrics.reject(to.model, exc)
        raise
    lifecycle.enter()
    call.served = to.model
    return job


async def wait_for(job: BatchJob[Req, Res], queue: Jobs[Req, Res], deadline: float) -> Res:
    """Wait for a job (an image's, a classification's) until its deadline (then 504). If the waiter goes away
    (client disconnect, shutdown) or the deadline passes, the job is cancelled: it leaves the queue, or stops
    at its next step."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await job.done.wait()
    except TimeoutError:
        raise DeadlineExceeded(f"the request reached its deadline while {job.status}") from None
    finally:
        if not job.done.is_set():
            queue.cancel(job.id)
        queue.forget(job.id)  # its waiter is here: nobody reads it back by id
    if job.error is not None:
        raise job.error
    assert job.result is not None
    return job.result


async def generate(services: Services, call: Call, work: ImageWork) -> ImageResult:
    """A synchronous image request: submit, wait until its deadline, observed (metrics, log, spans)."""
    obs = InferenceObserver(services.metrics, services.tracer, call.config.name, call.ctx.log)
    try:
        job = submit(services, call, work)
        result = await wait_for(job, services.image_jobs, call.deadline)
    except BaseException as exc:
        obs.images_failed(exc)
        raise
    obs.images("success", len(result.images))
    return result
