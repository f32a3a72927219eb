"""Jobs: the batcher behind each image and classify model's admission. Every image request, synchronous or not,
is a job here, so progress and cancellation mean the same thing everywhere; every classification request is one
too (`ClassifyJobs`). Finished jobs are kept for `ttl_s`, then dropped (classification: at once). A job made
through the jobs API remembers the API key that made it (`owner`), and only that key finds it (`get_for`,
`cancel_for`); to any other key it does not exist.

A job first takes a place in the model's `Admission` (the same queue, limits, priorities, deadlines and
metrics as text: a full queue is refused at once, before the job exists). Once granted, it waits in the
batcher (still counted as queued) until the worker runs it: jobs that fit together (images: the same size,
steps and guidance; classification: any) coalesce into one engine call, the worker taking the first job,
waiting up to `batch_timeout_s` for companions and running up to `max_batch_size` together, each with its own
inputs and result. What differs per kind is a `Runner`: which jobs fit together, the engine call, and which
results are refused."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from llmops.engines.base import (
    Classes,
    ClassifyEngine,
    ClassifyRequest,
    ImageEngine,
    ImageRequest,
    ImageResult,
    StepCallback,
    same_shape,
)
from llmops.engines.batching import gather_batch
from llmops.errors import (
    ContentFiltered,
    InvalidRequest,
    LLMOpsError,
    NotFound,
    RequestCancelled,
    internal_error,
)
from llmops.scheduling.admission import Admission, Place, Priority

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Req = TypeVar("Req")
Res = TypeVar("Res")
_In = TypeVar("_In", contravariant=True)


class Runner(Protocol[_In, Res]):
    """One kind of job's engine side."""

    def fits(self, first: _In, other: _In) -> bool:
        """`other` may share an engine call with `first`."""

    async def run(self, requests: Sequence[_In], on_step: StepCallback,
                  cancelled: Callable[[], bool]) -> list[Res]: ...

    def refusal(self, result: Res) -> LLMOpsError | None:
        """The error a finished job gets instead of `result` (an image the safety checker flagged)."""


@dataclass(frozen=True)
class ImageRunner:
    engine: ImageEngine

    def fits(self, first: ImageRequest, other: ImageRequest) -> bool:
        return same_shape(first, other)

    async def run(self, requests: Sequence[ImageRequest], on_step: StepCallback,
                  cancelled: Callable[[], bool]) -> list[ImageResult]:
        return await self.engine.generate_images(requests, on_step, cancelled)

    def refusal(self, result: ImageResult) -> LLMOpsError | None:
        return ContentFiltered("the safety checker flagged a generated image") if result.filtered else None


@dataclass(frozen=True)
class ClassifyRunner:
    engine: ClassifyEngine

    def fits(self, first: ClassifyRequest, other: ClassifyRequest) -> bool:
        return True

    async def run(self, requests: Sequence[ClassifyRequest], on_step: StepCallback,
                  cancelled: Callable[[], bool]) -> list[Classes]:
        return await self.engine.classify(requests)

    def refusal(self, result: Classes) -> LLMOpsError | None:
        """A score that is not a finite number: the model overflowed on this request's input (the engine marks
        such an image's scores NaN). 400 for this request alone; the others of its batch keep their answers."""
        for i, labels in enumerate(result):
            if any(not math.isfinite(label.score) for label in labels):
                return InvalidRequest(f"image {i} of the request: the model's outputs (logits) overflowed, so it has "
                                      "no scores; send inputs in the range its preprocessing produces (for a "
                                      "tensor, normalised pixel values)", code="non_finite_output")
        return None


@dataclass
class BatchJob(Generic[Req, Res]):
    model: str
    request: Req
    id: str = field(default_factory=lambda: f"imgjob-{uuid.uuid4().hex}")
    status: Status = "queued"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    step: int = 0
    result: Res | None = None
    error: LLMOpsError | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    engine_s: float = 0.0  # this job's share of its batch's engine time
    on_done: Callable[[BatchJob[Req, Res]], None] | None = None  # told once, when the job finishes (cost accounting)
    place: Place | None = None  # its place at the model's admission, given back when it finishes
    admitting: asyncio.Task[None] | None = None  # waits for the place to be granted
    owner: str | None = None  # the id of the API key that created it (jobs API); None on an open server
    picked_up: bool = False  # read back (jobs API) since it finished: its client has its answer

    def finish(self, status: Status, *, result: Res | None = None, error: LLMOpsError | None = None) -> None:
        if self.done.is_set():
            return
        self.status, self.result, self.error = status, result, error
        self.finished_at = time.time()
        self.done.set()
        if self.place is not None:
            self.place.release()
        if self.on_done is not None:
            self.on_done(self)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 4
    batch_timeout_s: float = 0.05


class _ModelQueue(Generic[Req, Res]):
    def __init__(self, runner: Runner[Req, Res], batching: Batching) -> None:
        self.runner = runner
        self.batching = batching
        self.waiting: deque[BatchJob[Req, Res]] = deque()
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Submission(Generic[Req, Res]):
    """Where a job goes and how it is scheduled."""

    model: str
    runner: Runner[Req, Res]
    admission: Admission
    batching: Batching
    priority: Priority
    deadline: float  # time.monotonic(): the job fails with 504 if still waiting for admission then


class Jobs(Generic[Req, Res]):
    def __init__(self, ttl_s: float, on_batch: Callable[[str, int], None] | None = None, max_kept: int = 1000) -> None:
        self._ttl_s, self._max_kept = ttl_s, max_kept
        self._on_batch = on_batch
        self._queues: dict[str, _ModelQueue[Req, Res]] = {}
        self._jobs: dict[str, BatchJob[Req, Res]] = {}
        self._picked = asyncio.Event()  # a finished job was read back

    def submit(self, to: Submission[Req, Res], request: Req,
               on_done: Callable[[BatchJob[Req, Res]], None] | None = None) -> BatchJob[Req, Res]:
        """A new job with a place at the model's admission (503 now when its queue is full)."""
        self._purge()
        place = to.admission.enter(to.priority, staged=True)
        queue = self._queues.get(to.model)
        if queue is None:
            queue = self._queues[to.model] = _ModelQueue(to.runner, to.batching)
            queue.worker = asyncio.create_task(self._work(queue), name=f"llmops-images-{to.model}")
        job = BatchJob[Req, Res](to.model, request, on_done=on_done, place=place)
        self._jobs[job.id] = job
        job.admitting = asyncio.create_task(self._admit(job, queue, to.deadline), name=f"llmops-admit-{job.id}")
        return job

    async def _admit(self, job: BatchJob[Req, Res], queue: _ModelQueue[Req, Res], deadline: float) -> None:
        assert job.place is not None
        try:
            await job.place.wait(deadline)
        except LLMOpsError as exc:  # its deadline passed while it waited
            job.finish("failed", error=exc)
            return
        except asyncio.CancelledError:
            if not job.done.is_set():
                job.finish("cancelled", error=RequestCancelled("cancelled while queued"))
            return
        if not job.done.is_set():
            queue.waiting.append(job)
            queue.wakeup.set()

    def get(self, job_id: str) -> BatchJob[Req, Res]:
        self._purge()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (unknown, or finished and expired)", param="id")
        if job.done.is_set() and not job.picked_up:
            job.picked_up = True
            self._picked.set()
        return job

    def unread(self, since: float) -> int:
        """Jobs kept to be read back that finished at or after `since` (time.time()) and were not read since."""
        return sum(1 for j in self._jobs.values() if j.finished_at is not None and j.finished_at >= since
                   and not j.picked_up)

    async def wait_pickup(self, since: float, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the jobs that finished since `since` to be read back (a drain's last step:
        an async job's answer exists only in this process); the number still unread."""
        deadline = time.monotonic() + timeout_s
        while (left := self.unread(since)) and (wait := deadline - time.monotonic()) > 0:
            self._picked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._picked.wait(), wait)
        return left

    def get_for(self, job_id: str, key_id: str | None) -> BatchJob[Req, Res]:
        """The job, as the caller with API key `key_id` (None on an open server) may see it: a job created with
        a key is found by that key only. Any other caller is answered exactly as for an unknown id (404, not
        403), so no one learns which job ids exist."""
        job = self.get(job_id)
        if job.owner is not None and job.owner != key_id:
            raise NotFound(f"no job {job_id!r} (unknown, or finished and expired)", param="id")
        return job

    def position(self, job: BatchJob[Req, Res]) -> int | None:
        """Jobs ahead of this one: those in the batcher, then those ahead of it at admission."""
        queue = self._queues.get(job.model)
        if job.status != "queued" or queue is None or job.place is None:
            return None
        if job in queue.waiting:
            return queue.waiting.index(job)
        ahead = job.place.queue_position()
        return None if ahead is None else len(queue.waiting) + ahead

    def cancel_for(self, job_id: str, key_id: str | None) -> BatchJob[Req, Res]:
        """`cancel`, for the caller with API key `key_id` only (see `get_for`)."""
        return self.cancel(self.get_for(job_id, key_id).id)

    def cancel(self, job_id: str) -> BatchJob[Req, Res]:
        job = self.get(job_id)
        job.cancel.set()
        queue = self._queues.get(job.model)
        if job.status == "queued" and not job.done.is_set():
            if queue is not None and job in queue.waiting:
                queue.waiting.remove(job)
            job.finish("cancelled", error=RequestCancelled("cancelled while queued"))
            if job.admitting is not None:
                job.admitting.cancel()
        return job

    async def close(self) -> None:
        for job in self._jobs.values():
            if job.admitting is not None:
                job.admitting.cancel()
        for queue in self._queues.values():
            for job in queue.waiting:
                job.cancel.set()
            if queue.worker is not None:
                queue.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queue.worker

    def __len__(self) -> int:
        """Jobs indexed now: queued, running, and finished ones kept to be read back."""
        return len(self._jobs)

    def forget(self, job_id: str) -> None:
        """Drop a job from the index now: a synchronous request's job, whose waiter has its answer (only jobs
        created through the jobs API are kept to be read back)."""
        self._jobs.pop(job_id, None)

    def _purge(self) -> None:
        """Finished jobs are kept for `ttl_s`, and at most `max_kept` of them (the oldest go first)."""
        cutoff = time.time() - self._ttl_s
        finished = sorted((j.finished_at, j.id) for j in self._jobs.values() if j.finished_at is not None)
        expired = [job_id for at, job_id in finished if at <= cutoff]
        kept = len(finished) - len(expired)
        expired += [job_id for _, job_id in finished[len(expired):][:max(0, kept - self._max_kept)]]
        for job_id in expired:
            del self._jobs[job_id]

    async def _work(self, queue: _ModelQueue[Req, Res]) -> None:
        while True:
            while not queue.waiting:
                queue.wakeup.clear()
                await queue.wakeup.wait()
            batch = self._start(await self._take_batch(queue))
            if not batch:  # every job of it was cancelled while it gathered: nothing to run
                continue
            if self._on_batch is not None:
                self._on_batch(batch[0].model, len(batch))
            await self._run(queue.runner, batch)

    async def _take_batch(self, queue: _ModelQueue[Req, Res]) -> list[BatchJob[Req, Res]]:
        first = queue.waiting.popleft()
        return await gather_batch(first, queue.waiting, lambda j: queue.runner.fits(first.request, j.request),
                                  queue.batching.max_batch_size, queue.batching.batch_timeout_s, queue.wakeup)

    @staticmethod
    def _start(batch: list[BatchJob[Req, Res]]) -> list[BatchJob[Req, Res]]:
        """The jobs of a gathered batch still to run, now running. A job cancelled while its batch gathered
        (out of `waiting`, so `cancel` finished it and gave its place back) stays finished: it is neither
        run nor counted, and a status never moves back."""
        live = [job for job in batch if not job.done.is_set()]
        for job in live:
            job.status = "running"
            if job.place is not None:
                job.place.start()
        return live

    async def _run(self, runner: Runner[Req, Res], batch: list[BatchJob[Req, Res]]) -> None:
        def on_step(done: int, total: int) -> None:
            for job in batch:
                job.step = done

        started = time.perf_counter()
        try:
            results = await runner.run([j.request for j in batch], on_step,
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
                self._finish_one(job, result, runner.refusal(result))

    @staticmethod
    def _finish_all(batch: list[BatchJob[Req, Res]], status: Status, error: LLMOpsError) -> None:
        for job in batch:
            job.finish(status, error=error)

    @staticmethod
    def _finish_one(job: BatchJob[Req, Res], result: Res, refusal: LLMOpsError | None) -> None:
        if job.cancel.is_set():
            job.finish("cancelled", error=RequestCancelled("cancelled during generation"))
        elif refusal is not None:
            job.finish("failed", error=refusal)
        else:
            job.finish("succeeded", result=result)


Job = BatchJob[ImageRequest, ImageResult]
ImageJobs = Jobs[ImageRequest, ImageResult]
ClassifyJob = BatchJob[ClassifyRequest, Classes]
ClassifyJobs = Jobs[ClassifyRequest, Classes]
