"""Classification work through the stages: the `Work` adapter, and the stages from admission on: a job behind
the model's admission, coalesced with other requests' jobs into one model call by the batcher
(`scheduling/image_jobs.py`, `ClassifyRunner`), accounted per image when it finishes, however it finishes.

The work enters the stages with its images still encoded (their count and hashes known): the guardrails read
no text, the budget reserves the images' worst-case cost, and the cache keys on the images' hashes and top_k,
so an identical request is answered without decoding anything or running the model. Only then does api/
decode them (on the media side's own threads, within the model's limits) and hand them over (`with_images`)
before admission: a key refused by its permissions, budget or limits costs no decoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from llmops.engines.base import Classes, ClassifyRequest
from llmops.errors import InvalidRequest
from llmops.observability.inference import InferenceObserver
from llmops.pipeline.accounting import NO_PROMPT, PromptBound, worst_case_image_usd
from llmops.pipeline.images import submit_job, wait_for
from llmops.pipeline.services import Services
from llmops.pipeline.stages import Call
from llmops.scheduling.image_jobs import Batching, ClassifyJob, ClassifyRunner, Submission
from llmops.settings import ModelConfig


def check_count(config: ModelConfig, count: int, param: str) -> None:
    """400 unless 1 <= count <= the model's limits.classify.max_images."""
    limit = config.limits.classify.max_images
    if count > limit:
        raise InvalidRequest(f"{count} images in one request; the limit is {limit}", param=param)
    if count < 1:
        raise InvalidRequest("no images to classify", param=param)


class ClassifyWork:
    """A classification request as the pipeline sees it: the engine request (decoded images, or a pixel
    tensor, and top_k), how many images it holds or will hold (`count`: its images may be handed over decoded
    after the stages before admission, `with_images`) and a fingerprint of its inputs for the cache."""

    kind = "classify"
    model_kind: Literal["classify"] = "classify"
    user = None
    service_tier = None

    def __init__(self, model: str | None, request: ClassifyRequest, fingerprint: list[str], param: str,
                 count: int | None = None) -> None:
        self.model, self.request, self.fingerprint, self.param = model, request, fingerprint, param
        self.count = request.count if count is None else count

    def with_images(self, images: Sequence[Any]) -> None:
        """The request's images, decoded: as many as `count` said."""
        if len(images) != self.count:
            raise ValueError(f"{len(images)} images decoded for a request of {self.count}")
        self.request = replace(self.request, images=tuple(images))

    def check(self, config: ModelConfig) -> None:
        check_count(config, self.count, self.param)

    def prompt(self, call: Call, services: Services) -> None:
        return None

    def texts(self) -> list[str]:
        return []

    async def readable(self, call: Call) -> list[str]:
        return self.texts()

    def with_texts(self, texts: list[str]) -> None:
        return None

    def input_ids(self) -> int:
        return 0

    def prompt_bound(self) -> PromptBound:
        return NO_PROMPT  # charged by the image, not by tokens

    def worst_case_usd(self, config: ModelConfig, prompt_tokens: int, deadline_s: float) -> float:
        return worst_case_image_usd(config, self.count, deadline_s)

    def max_completion_tokens(self, config: ModelConfig) -> int:
        return 0

    def cache_payload(self, call: Call) -> dict[str, Any] | None:
        return {"model": call.config.name, "top_k": self.request.top_k, "inputs": self.fingerprint}

    def semantic_query(self, call: Call) -> tuple[str, str] | None:
        return None  # images have no text to compare


def submit(services: Services, call: Call, work: ClassifyWork) -> ClassifyJob:
    """Stage `admission` for a classification (see images.submit_job)."""
    served, engine = services.pool.classify_engine(call.config.name)
    lim = served.config.limits.classify
    count = work.request.count
    if count != work.count:  # the images were never handed over (with_images)
        raise ValueError(f"a classification of {work.count} images submitted with {count}")
    return submit_job(services, call, services.classify_jobs, work.request,
                      Submission(served.config.name, ClassifyRunner(engine), served.admission,
                                 Batching(lim.max_batch_size, lim.batch_timeout_s), call.priority, call.deadline),
                      lambda _: count)


async def classify(services: Services, call: Call, work: ClassifyWork) -> Classes:
    """A classification: submit, wait until its deadline, observed (metrics, log, spans)."""
    obs = InferenceObserver(services.metrics, services.tracer, call.config.name, call.ctx.log)
    try:
        job = submit(services, call, work)
        result = await wait_for(job, services.classify_jobs, call.deadline)
    except BaseException as exc:
        obs.classified(obs.outcome(exc), 0)
        raise
    obs.classified("success", work.request.count)
    return result
