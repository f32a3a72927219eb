"""The application's services, built once by `app.create_app` and kept on `app.state.services`: one typed
object instead of attributes read through casts."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmops.lifecycle import Lifecycle
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer
from llmops.pipeline.accounting import Accountant
from llmops.pipeline.cache import ResponseCacher
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.routing import Router
from llmops.prompts.registry import PromptRegistry
from llmops.scheduling.image_jobs import ClassifyJobs, ImageJobs
from llmops.scheduling.pool import ModelPool
from llmops.settings import Settings
from llmops.stores import State
from llmops.tasks import TaskSet


@dataclass
class Services:
    settings: Settings
    pool: ModelPool
    metrics: Metrics
    tracer: Tracer
    state: State
    accountant: Accountant
    guardrails: Guardrails
    prompts: PromptRegistry
    router: Router
    cacher: ResponseCacher
    image_jobs: ImageJobs
    classify_jobs: ClassifyJobs
    lifecycle: Lifecycle
    started_at: int
    background: TaskSet = field(default_factory=TaskSet)  # shadow requests in flight
