"""bench/gpu_images.py is run on GPU machines only; its CPU dry run (tiny geometry, llmops over real loopback
servers, torch.compile wrapped with dynamo disabled) keeps the whole script alive here: every phase runs as
its own process, every row of the table is written, and each phase's log is kept. A phase that runs out of
its time box is written as not finished, with the stage it reached, never left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPILED = "bare + channels_last + compile(reduce-overhead)"
COLD = ["llmops /generate + compile (cold start), sequential", "llmops + compile (cold start), 2 concurrent /generate"]
WARM = "llmops + compile, warm restart (compile cache reused)"
ROWS = ["bare diffusers, batch 1", "bare diffusers, one call of batch 2", "llmops /generate, sequential",
        "llmops, 2 concurrent /generate", *COLD, WARM, f"{COMPILED}, batch 1", f"{COMPILED}, batch 2"]
PHASES = ["bare", "llmops", "llmops-cold", "llmops-warm", "bare-compiled"]  # llmops' own rows before the bare ones


def dry_run(out: Path, *args: str) -> tuple[dict[str, dict[str, Any]], str]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_images.py"), "--dry-run", "--out", str(out),
                           "--port", str(free_port()), *args], capture_output=True, text=True, timeout=290,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["run"]: r for r in json.loads((out / "gpu_images.json").read_text())["rows"]}
    return rows, done.stdout


def test_dry_run_writes_every_row_and_every_log(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    # the GPU caps are sized for an H200; a busy CI machine can take a phase past them, which is not what
    # this test is about
    roomy = [arg for phase in PHASES for arg in ("--cap", f"{phase}=240")]
    rows, _ = dry_run(tmp_path, "--budget-s", "1200", *roomy)
    assert list(rows) == ROWS
    assert all("status" not in r for r in rows.values()), rows
    assert rows["bare diffusers, batch 1"]["s_per_image"] > 0
    assert rows["llmops, 2 concurrent /generate"]["batches"] >= 1
    cold = rows[COLD[0]]
    assert cold["ready_s"] > 0
    assert cold["compiled_sizes"] == [1, 2]
    assert rows[WARM]["vs_plain_load"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["gpu_images.json", "gpu_images.md",
                                                                 *(f"{p}.log" for p in PHASES)])
    assert "compile warm-up: batch size 2 (2 of 2) done" in (tmp_path / "llmops-cold.log").read_text()
    assert "| bare diffusers, batch 1 |" in (tmp_path / "gpu_images.md").read_text()


def test_a_phase_out_of_time_is_written_as_not_finished_with_its_stage(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    rows, stdout = dry_run(tmp_path, "--phases", "llmops-cold,llmops-warm", "--cap", "llmops-cold=1")
    assert list(rows) == [*COLD, WARM]
    for name in COLD:
        assert rows[name]["status"].startswith("not finished after 1 s (stage: "), rows[name]
        assert rows[name]["status"].endswith("log: llmops-cold.log")
    assert rows[WARM]["status"].startswith("not run: the cold start never became ready")
    assert (tmp_path / "llmops-cold.log").exists()
    assert "== phase llmops-cold not finished after 1 s" in stdout
