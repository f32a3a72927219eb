"""Engine name -> import path. Engine modules import their heavy backend lazily, in `start`, so a config
can be checked, and other engines served, without every optional backend installed."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from llmops.engines.base import Engine
from llmops.errors import ConfigError, EngineUnavailable

ENGINES: dict[str, str] = {
    "fake": "llmops.engines.fake:FakeTextEngine",
    "fake-image": "llmops.engines.fake_image:FakeImageEngine",
    "fake-embeddings": "llmops.engines.fake_embeddings:FakeEmbeddingEngine",
    "llamacpp": "llmops.engines.llamacpp:LlamaCppEngine",
    "transformers": "llmops.engines.transformers:TransformersEngine",
    "diffusers": "llmops.engines.diffusers:DiffusersEngine",
    "classifier": "llmops.engines.classifier:ClassifierEngine",
    "upstream": "llmops.engines.upstream:UpstreamEngine",
    "sentence-transformers": "llmops.engines.embeddings:SentenceTransformersEngine",
}


class EngineClass(Protocol):
    Options: type[BaseModel]

    def __call__(self, model_name: str, options: Any) -> Engine: ...


def engine_class(name: str) -> EngineClass:
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; known engines: {', '.join(sorted(ENGINES))}")
    module_name, _, attr = ENGINES[name].partition(":")
    cls: EngineClass = getattr(importlib.import_module(module_name), attr)
    return cls


def parse_options(engine: str, options: dict[str, Any], where: str) -> BaseModel:
    """Validate an engine's options; errors name the field, e.g. `models[0].options.n_threads`."""
    cls = engine_class(engine)
    try:
        return cls.Options.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def build_engine(engine: str, model_name: str, options: dict[str, Any], where: str) -> Engine:
    return engine_class(engine)(model_name, parse_options(engine, options, where))


def require(module: str, extra: str) -> ModuleType:
    """Import an optional backend, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailable(
            f"the {extra} engine needs the '{module}' package: pip install 'llmops[{extra}]' ({exc})"
        ) from exc
