"""The embedded tiny-sd pipeline builds with no warning (the project turns warnings into errors: a GPU
machine that builds it fresh inside pytest must not fail on diffusers' steps_offset FutureWarning)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest


def test_tiny_sd_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from llmops.engines.tiny_sd import build_tiny_sd

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = build_tiny_sd(tmp_path / "tiny")
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["steps_offset"] == 1
