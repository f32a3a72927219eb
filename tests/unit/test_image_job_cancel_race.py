"""A job cancelled while the worker gathers a batch for it (taken out of the batcher's queue, waiting up to
`batch_timeout_s` for companions) stays cancelled: it is not run, never shows "running", and its admission
place is given back once (the attack round saw DELETE answer 'cancelled', then GET 'running' forever)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmops.engines.base import ImageRequest, ImageResult, StepCallback
from llmops.engines.fake_image import FakeImageEngine, FakeImageOptions
from llmops.errors import LLMOpsError
from llmops.scheduling.admission import Admission
from llmops.scheduling.image_jobs import Batching, ImageJobs, ImageRunner, Job, Submission


@dataclass
class RecordingRunner:
    """The fake image engine's runner, remembering the prompts of each engine call."""

    inner: ImageRunner = field(default_factory=lambda: ImageRunner(FakeImageEngine("m", FakeImageOptions())))
    calls: list[list[str]] = field(default_factory=list)

    def fits(self, first: ImageRequest, other: ImageRequest) -> bool:
        return self.inner.fits(first, other)

    async def run(self, requests: Sequence[ImageRequest], on_step: StepCallback,
                  cancelled: Callable[[], bool]) -> list[ImageResult]:
        self.calls.append([r.prompt for r in requests])
        return await self.inner.run(requests, on_step, cancelled)

    def refusal(self, result: ImageResult) -> LLMOpsError | None:
        return self.inner.refusal(result)


def request(prompt: str, width: int = 64) -> ImageRequest:
    return ImageRequest(prompt, prompt, None, width, 64, 2, 7.5, seed=1)


async def until(check: Callable[[], bool]) -> None:
    """Let the event loop run until `check` holds (no fixed sleep)."""
    for _ in range(10_000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def gathering(jobs: ImageJobs, to: Submission[ImageRequest, ImageResult], prompt: str) -> Job:
    """A job the worker has taken and is gathering a batch for."""
    job = jobs.submit(to, request(prompt))
    waiting = jobs._queues[to.model].waiting
    await until(lambda: job.admitting is not None and job.admitting.done() and job not in waiting)
    assert job.status == "queued"
    assert not job.done.is_set()
    return job


def setup(timeout_s: float, size: int) -> tuple[ImageJobs, Submission[ImageRequest, ImageResult],
                                                RecordingRunner, list[int]]:
    sizes: list[int] = []
    runner = RecordingRunner()
    jobs = ImageJobs(60.0, on_batch=lambda model, n: sizes.append(n))
    to = Submission("m", runner, Admission(max_running=4, max_queued=4), Batching(size, timeout_s),
                    "interactive", time.monotonic() + 60)
    return jobs, to, runner, sizes


def assert_cancelled_and_idle(job: Job, admission: Admission) -> None:
    assert job.status == "cancelled"
    assert job.error is not None
    assert "cancelled while queued" in job.error.message
    assert (admission.running, admission.staged, admission.queued) == (0, 0, 0)


async def test_a_job_cancelled_while_its_batch_gathers_stays_cancelled_and_is_not_run() -> None:
    jobs, to, runner, sizes = setup(timeout_s=60.0, size=2)  # only a companion ends the gathering
    try:
        first = await gathering(jobs, to, "first")
        assert jobs.cancel(first.id).status == "cancelled"  # DELETE's answer
        assert_cancelled_and_idle(first, to.admission)

        second = jobs.submit(to, request("second"))  # fills the batch: it is dispatched now
        async with asyncio.timeout(10):
            await second.done.wait()
        assert_cancelled_and_idle(first, to.admission)  # a later GET: still cancelled, nothing counted
        assert second.status == "succeeded"
        assert runner.calls == [["second"]]  # the cancelled job never reached the engine
        assert sizes == [1]
    finally:
        await jobs.close()


async def test_a_batch_whose_jobs_were_all_cancelled_never_calls_the_engine() -> None:
    jobs, to, runner, sizes = setup(timeout_s=0.05, size=4)
    try:
        first = await gathering(jobs, to, "first")
        jobs.cancel(first.id)
        other = jobs.submit(to, request("other", width=128))  # another shape: not in its batch
        async with asyncio.timeout(10):
            await other.done.wait()  # runs after the emptied batch
        assert_cancelled_and_idle(first, to.admission)
        assert runner.calls == [["other"]]
        assert sizes == [1]
    finally:
        await jobs.close()
