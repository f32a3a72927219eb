"""bench/gil_wait.py runs every variant (the spend ledger it watches still writes through `_write`) and
writes its table; the waits themselves are the bench's business, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.gil_wait import VARIANTS

ROOT = Path(__file__).resolve().parents[2]


def test_every_variant_runs_and_the_report_names_it(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.gil_wait", "--repeats", "1", "--requests", "32",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "gil-wait.json").read_text())["results"]
    assert sorted(r["variant"] for r in rows) == sorted(VARIANTS)
    assert all(r["cpu_us"] > 0 and r["probes"] >= 1 for r in rows)
    assert all(r["batches"] >= 1 for r in rows if r["variant"].startswith("llmops"))  # spend reached SQLite
    table = (tmp_path / "gil-wait.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS)
