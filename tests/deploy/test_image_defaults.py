"""The images serve what `make serve` serves: the CPU image's config names every embedded default
(settings.default_models) with the same engine and weights, and the Kubernetes ConfigMaps built on the CPU
image name the same models as that config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops.engines.registry import parse_options
from llmops.settings import ModelConfig, default_models

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def identity(model: ModelConfig) -> tuple[str, str, str, Any]:
    """A model as a client and the weights see it: its name, kind, engine and the weights it loads."""
    options = parse_options(model.engine, model.options, model.name).model_dump()
    return model.name, model.kind, model.engine, options.get("model")


def shipped(text: str) -> list[ModelConfig]:
    return [ModelConfig.model_validate(m) for m in yaml.safe_load(text)["models"]]


def test_cpu_image_config_serves_the_embedded_defaults() -> None:
    cpu = shipped((DEPLOY / "config" / "cpu.yaml").read_text())
    assert sorted(map(identity, cpu)) == sorted(map(identity, default_models()))


@pytest.mark.parametrize("configmap", ["base/configmap.yaml", "overlays/spot/config-spot.yaml"])
def test_cpu_configmaps_name_the_cpu_image_models(configmap: str) -> None:
    cpu = shipped((DEPLOY / "config" / "cpu.yaml").read_text())
    data = yaml.safe_load((DEPLOY / "k8s" / configmap).read_text())["data"]["config.yaml"]
    assert sorted(map(identity, shipped(data))) == sorted(map(identity, cpu))


def test_gpu_image_config_serves_the_default_chat_and_embeddings_models() -> None:
    names = {m.name for m in shipped((DEPLOY / "config" / "gpu.yaml").read_text())}
    defaults = {m.name for m in default_models() if m.kind in ("chat", "embeddings")}
    assert defaults <= names
