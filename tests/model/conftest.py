from __future__ import annotations

import importlib.util
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/model/" in str(item.fspath):
            item.add_marker(pytest.mark.model)


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


async def run(engine: Any, request: Any) -> tuple[str, int, int, str | None]:
    """Drain one generation: (text, prompt tokens, completion tokens, finish reason)."""
    text, usage, finish = "", None, None
    async for chunk in engine.generate(request):
        text += chunk.text
        usage, finish = chunk.usage or usage, chunk.finish_reason or finish
    assert usage is not None
    return text, usage.prompt_tokens, usage.completion_tokens, finish
