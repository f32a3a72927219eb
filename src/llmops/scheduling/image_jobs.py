"""Image jobs: one FIFO queue and one worker per image model. Every image request, synchronous or not, is
a job here, so queue positions, progress and cancellation mean the same thing everywhere. Finished jobs
are kept for `ttl_s`, then dropped.

Same-shape jobs (size, steps, guidance) coalesce into one pipeline call: the worker takes the first job,
waits up to `batch_timeout_s` for companions, and runs up to `max_batch_size` together, each with its own
prompt, seeds and result (the guide's LitServe batching, without its single-dict `predict`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from llmops.engines.base import ImageEngine, ImageRequest, ImageResult, same_shape
from llmops.engines.batching import gather_batch
from llmops.errors import (
    ContentFiltered,
    LLMOpsError,
    NotFound,
    RequestCancelled,
    ServiceUnavailable,
    internal_error,
)

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@dataclass
class Job:
    model: str
    request: ImageRequest
    id: str = field(default_factory=lambda: f"imgjob-{uuid.uuid4().hex}")
    status: Status = "queued"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    step: int = 0
    result: ImageResult | None = None
    error: LLMOpsError | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    engine_s: float = 0.0  # this job's share of its batch's engine time
    on_done: Callable[[Job], None] | None = None  # told once, when the job finishes (cost accounting)

    def finish(self, status: Status, *, result: ImageResult | None = None, error: LLMOpsError | None = None) -> None:
        self.status, self.result, self.error = status, result, error
        self.finished_at = time.time()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 4
    batch_timeout_s: float = 0.05


class _ModelQueue:
    def __init__(self, engine: ImageEngine, batching: Batching) -> None:
        self.engine = engine
        self.batching = batching
        self.waiting: deque[Job] = deque()
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None


class ImageJobs:
    def __init__(self, ttl_s: float, max_queued: int,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self._ttl_s, self._max_queued = ttl_s, max_queued
        self._on_batch = on_batch
        self._queues: dict[str, _ModelQueue] = {}
        self._jobs: dict[str, Job] = {}

    def submit(self, model: str, engine: ImageEngine, request: ImageRequest,
               batching: Batching | None = None, on_done: Callable[[Job], None] | None = None) -> Job:
        self._purge()
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _ModelQueue(engine, batching or Batching())
            queue.worker = asyncio.create_task(self._work(queue), name=f"llmops-images-{model}")
        if len(queue.waiting) >= self._max_queued:
            raise ServiceUnavailable(f"the image queue of model {model!r} is full", retry_after=5)
        job = Job(model, request, on_done=on_done)
        self._jobs[job.id] = job
        queue.waiting.append(job)
        queue.wakeup.set()
        return job

    def get(self, job_id: str) -> Job:
        self._purge()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no image job {job_id!r} (unknown, or finished and expired)", param="id")
        return job

    def position(self, job: Job) -> int | None:
        queue = self._queues.get(job.model)
        if job.status != "queued" or queue is None:
            return None
        return next((i for i, j in enumerate(queue.waiting) if j is job), None)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel.set()
        queue = self._queues.get(job.model)
        if job.status == "queued" and queue is not None and job in queue.waiting:
            queue.waiting.remove(job)
            job.finish("cancelled", error=RequestCancelled("cancelled while queued"))
        return job

    async def close(self) -> None:
        for queue in self._queues.values():
            for job in queue.waiting:
                job.cancel.set()
            if queue.worker is not None:
                queue.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queue.worker

    def _purge(self) -> None:
        cutoff = time.time() - self._ttl_s
        for job_id in [j.id for j in self._jobs.values() if j.finished_at is not None and j.finished_at < cutoff]:
            del self._jobs[job_id]

    async def _work(self, queue: _ModelQueue) -> None:
        while True:
            while not queue.waiting:
                queue.wakeup.clear()
                await queue.wakeup.wait()
            batch = await self._take_batch(queue)
            if self._on_batch is not None:
                self._on_batch(batch[0].model, len(batch))
            await self._run(queue.engine, batch)

    async def _take_batch(self, queue: _ModelQueue) -> list[Job]:
        first = queue.waiting.popleft()
        return await gather_batch(first, queue.waiting, lambda j: same_shape(j.request, first.request),
                                  queue.batching.max_batch_size, queue.batching.batch_timeout_s, queue.wakeup)

    async def _run(self, engine: ImageEngine, batch: list[Job]) -> None:
        for job in batch:
            job.status = "running"

        def on_step(done: int, total: int) -> None:
            for job in batch:
                job.step = done

        started = time.perf_counter()
        try:
            results = await engine.generate_images([j.request for j in batch], on_step,
                                                   lambda: all(j.cancel.is_set() for j in batch))
        except RequestCancelled as exc:
            self._finish_all(batch, "cancelled", exc)
        except LLMOpsError as exc:
            self._finish_all(batch, "failed", exc)
        except Exception as exc:
            self._finish_all(batch, "failed", internal_error(exc))
        else:
            share = (time.perf_counter() - started) / len(batch)
            for job, result in zip(batch, results, strict=True):
                job.engine_s = share
                self._finish_one(job, result)

    @staticmethod
    def _finish_all(batch: list[Job], status: Status, error: LLMOpsError) -> None:
        for job in batch:
            job.finish(status, error=error)

    @staticmethod
    def _finish_one(job: Job, result: ImageResult) -> None:
        if job.cancel.is_set():
            job.finish("cancelled", error=RequestCancelled("cancelled during generation"))
        elif result.filtered:
            job.finish("failed", error=ContentFiltered("the safety checker flagged a generated image"))
        else:
            job.finish("succeeded", result=result)
