"""The application's services, built once by `app.create_app` and kept on `app.state.services`: one typed
object instead of attributes read through casts."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmops.eval.online import OnlineEvaluator
from llmops.lifecycle import Lifecycle
from llmops.observability.metrics import Metrics
from llmops.observability.tracing import Tracer
from llmops.pipeline.accounting import Accountant
from llmops.pipeline.cache import ResponseCacher
from llmops.pipeline.guardrails import Guardrails
from llmops.pipeline.routing import Router
from llmops.pipeline.semantic_cache import SemanticCache
from llmops.pipeline.signed_urls import UrlSigner
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
    url_signer: UrlSigner  # signs and verifies image URLs; its secret settled in the lifespan
    lifecycle: Lifecycle
    started_at: int
    semantic_cache: SemanticCache | None = None  # None unless cache.semantic.enabled
    background: TaskSet = field(default_factory=TaskSet)  # shadow requests in flight
    online_eval: OnlineEvaluator = field(init=False)  # scores sampled routed answers (llmops_eval_score)

    def __post_init__(self) -> None:
        self.online_eval = OnlineEvaluator(self.settings.routes, self.metrics, self.background.spawn)
