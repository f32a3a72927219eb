"""The served models: one engine per configured model, loaded in the background at start-up so /health
answers at once and /ready tells when every model is loaded."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from llmops.engines.base import ClassifyEngine, EmbeddingEngine, Engine, EngineHealth, ImageEngine, TextEngine
from llmops.engines.registry import build_engine
from llmops.errors import LLMOpsError, ModelFailed, ModelNotFound, ModelNotReady
from llmops.observability.logging import log_step
from llmops.observability.metrics import ModelLoad
from llmops.scheduling.admission import Admission
from llmops.settings import ModelConfig, Settings

log = logging.getLogger("llmops.pool")


@dataclass
class Served:
    config: ModelConfig
    engine: Engine
    admission: Admission
    error: str | None = None
    _ready: bool = field(default=False, init=False)  # seen ready: engines leave that state only when closed

    def __post_init__(self) -> None:
        # a runtime-checkable Protocol's isinstance inspects every member: once per model, not per request
        self.text = self.engine if isinstance(self.engine, TextEngine) else None
        self.image = self.engine if isinstance(self.engine, ImageEngine) else None

    def state(self) -> str:
        """The engine's state, as `health().state`, without building its detail on every request: an engine
        goes from loading to ready or failed in `start` and leaves ready only in `close` (ModelPool.close
        forgets it first)."""
        if self._ready:
            return "ready"
        state = "failed" if self.error is not None else self.engine.health().state
        self._ready = state == "ready"
        return state

    def health(self) -> EngineHealth:
        h = self.engine.health()
        if self.error:
            h.detail["error"] = self.error
        return h


def _max_running(cfg: ModelConfig, engine: Engine) -> int:
    """Slots on the engine: the configured number, else the engine's capacity (for an image or classify model,
    a whole batch: its granted jobs wait in the batcher so that they can coalesce)."""
    if cfg.limits.max_running is not None:
        return cfg.limits.max_running
    if cfg.kind == "image":
        return cfg.limits.image.max_batch_size
    if cfg.kind == "classify":
        return cfg.limits.classify.max_batch_size
    return int(getattr(engine, "capacity", 1))


class ModelPool:
    def __init__(self, settings: Settings) -> None:
        self._models: dict[str, Served] = {}
        for i, cfg in enumerate(settings.models):
            engine = build_engine(cfg.engine, cfg.name, cfg.options, f"models[{i}]")
            self._models[cfg.name] = Served(cfg, engine, Admission(_max_running(cfg, engine), cfg.limits.max_queued))
        self._loader: asyncio.Task[None] | None = None

    def names(self) -> list[str]:
        return list(self._models)

    def names_of(self, kind: str) -> list[str]:
        return [n for n, s in self._models.items() if s.config.kind == kind]

    def start_loading(self) -> None:
        self._loader = asyncio.create_task(self._load_all(), name="llmops-load-models")

    async def _load_all(self) -> None:
        for served in self._models.values():  # one at a time: loads compete for the same cores
            try:
                with log_step("loading model", model=served.config.name, engine=served.config.engine):
                    await served.engine.start()  # the first start may assemble or build weights: see its log
            except Exception as exc:
                served.error = f"{type(exc).__name__}: {exc}"
                log.error("model %s failed to load: %s", served.config.name, served.error)

    async def loaded(self) -> None:
        """Return once every model has loaded or failed to (at once when loading never started)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def close(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        for served in self._models.values():
            served._ready = False
            try:
                await served.engine.close()
            except Exception:
                log.exception("closing model %s failed", served.config.name)

    def states(self) -> dict[str, EngineHealth]:
        out = {}
        for name, served in self._models.items():
            health = served.health()
            health.detail.update(running=served.admission.on_engine, queued=served.admission.queued)
            out[name] = health
            health.detail["kind"] = served.config.kind  # chat or image: the console picks its models by it
        return out

    def loads(self) -> dict[str, ModelLoad]:
        return {name: ModelLoad(s.admission.on_engine, s.admission.queued, s.health().state)
                for name, s in self._models.items()}

    def close_admission(self) -> None:
        for served in self._models.values():
            served.admission.closed = True

    def ready(self) -> bool:
        return all(s.health().state == "ready" for s in self._models.values())

    def config(self, name: str, kind: str) -> ModelConfig:
        """The configuration of a `kind` model, loaded or not (404 when there is none)."""
        served = self._models.get(name)
        if served is None or served.config.kind != kind:
            known = self.names_of(kind)
            raise ModelNotFound(f"model {name!r} does not exist; {kind} models here: {', '.join(known) or 'none'}",
                                param="model")
        return served.config

    def get(self, name: str, kind: str) -> Served:
        self.config(name, kind)
        served = self._models[name]
        state = served.state()
        if state == "failed":
            raise ModelFailed(f"model {name!r} failed to load: {served.error or 'see /ready'}", param="model")
        if state != "ready":
            raise ModelNotReady(f"model {name!r} is {state}")
        return served

    def refusal(self, name: str, kind: str) -> LLMOpsError | None:
        """What a new `kind` request for `name` would be refused with now, before any of its work is done:
        404 (no such model), 503 (failed, loading, queue full, draining); None when it would be admitted."""
        try:
            served = self.get(name, kind)
        except LLMOpsError as exc:
            return exc
        return served.admission.refusal()

    def text_engine(self, name: str) -> tuple[Served, TextEngine]:
        served = self.get(name, "chat")
        if served.text is None:
            raise ModelNotFound(f"model {name!r} does not generate text", param="model")
        return served, served.text

    def default_image_model(self) -> str:
        return self.default_model("image")

    def default_model(self, kind: str) -> str:
        """The first configured model of `kind` ("" when there is none)."""
        return next((n for n, s in self._models.items() if s.config.kind == kind), "")

    def classify_engine(self, name: str) -> tuple[Served, ClassifyEngine]:
        served = self.get(name, "classify")
        if not isinstance(served.engine, ClassifyEngine):
            raise ModelNotFound(f"model {name!r} does not classify images", param="model")
        return served, served.engine

    def image_engine(self, name: str | None) -> tuple[Served, ImageEngine]:
        """The named image model, or the first configured one when `name` is None."""
        served = self.get(name or self.default_image_model(), "image")
        if served.image is None:
            raise ModelNotFound(f"model {served.config.name!r} does not generate images", param="model")
        return served, served.image

    def embedding_engine(self, name: str) -> tuple[Served, EmbeddingEngine]:
        served = self.get(name, "embeddings")
        if not isinstance(served.engine, EmbeddingEngine):
            raise ModelNotFound(f"model {name!r} does not embed text", param="model")
        return served, served.engine
