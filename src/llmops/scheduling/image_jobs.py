"""Image jobs: one FIFO queue and one worker per image model. Every image request, synchronous or not, is
a job here, so queue positions, progress and cancellation mean the same thing everywhere. Finished jobs
are kept for `ttl_s`, then dropped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from llmops.engines.base import ImageEngine, ImageRequest, ImageResult
from llmops.errors import LLMOpsError, NotFound, RequestCancelled, ServiceUnavailable, internal_error

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

    def finish(self, status: Status, *, result: ImageResult | None = None, error: LLMOpsError | None = None) -> None:
        self.status, self.result, self.error = status, result, error
        self.finished_at = time.time()
        self.done.set()


class _ModelQueue:
    def __init__(self, engine: ImageEngine) -> None:
        self.engine = engine
        self.waiting: deque[Job] = deque()
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None


class ImageJobs:
    def __init__(self, ttl_s: float, max_queued: int) -> None:
        self._ttl_s, self._max_queued = ttl_s, max_queued
        self._queues: dict[str, _ModelQueue] = {}
        self._jobs: dict[str, Job] = {}

    def submit(self, model: str, engine: ImageEngine, request: ImageRequest) -> Job:
        self._purge()
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _ModelQueue(engine)
            queue.worker = asyncio.create_task(self._work(queue), name=f"llmops-images-{model}")
        if len(queue.waiting) >= self._max_queued:
            raise ServiceUnavailable(f"the image queue of model {model!r} is full", retry_after=5)
        job = Job(model, request)
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
            await self._run(queue.engine, queue.waiting.popleft())

    async def _run(self, engine: ImageEngine, job: Job) -> None:
        job.status = "running"

        def on_step(done: int, total: int) -> None:
            job.step = done

        try:
            result = await engine.generate_images(job.request, on_step, job.cancel)
        except RequestCancelled as exc:
            job.finish("cancelled", error=exc)
        except LLMOpsError as exc:
            job.finish("failed", error=exc)
        except Exception as exc:
            job.finish("failed", error=internal_error(exc))
        else:
            job.finish("succeeded", result=result)
