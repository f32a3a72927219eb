"""bench/gpu_images.py is run on GPU machines only; its CPU dry run (tiny geometry, llmops over a real
loopback server) keeps the code path alive here: every row of the table is written, the compiled ones as
skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_row(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_images.py"), "--dry-run", "--out", str(tmp_path),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["run"]: r for r in json.loads((tmp_path / "gpu_images.json").read_text())["rows"]}
    assert rows["bare diffusers, batch 1"]["s_per_image"] > 0
    assert rows["bare diffusers, one call of batch 2"]["images_per_s"] > 0
    assert rows["llmops /generate, sequential"]["ready_s"] > 0
    assert rows["llmops, 2 concurrent /generate"]["images_per_s"] > 0
    assert "skipped" in rows["compiled rows"]
    assert "| bare diffusers, batch 1 |" in (tmp_path / "gpu_images.md").read_text()
