"""bench/request_parts.py runs every variant (each part it takes away still exists in the code) and writes
its table; the figures themselves are the bench's business, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.request_parts import VARIANTS

ROOT = Path(__file__).resolve().parents[2]


def test_every_variant_runs_and_the_report_names_it(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.request_parts", "--repeats", "1", "--requests", "32",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "request-parts.json").read_text())
    assert sorted(r["variant"] for r in data["results"]) == sorted(VARIANTS)
    assert all(r["cpu_us"] > 0 for r in data["results"])
    table = (tmp_path / "request-parts.md").read_text()
    for label, _ in VARIANTS.values():
        assert label in table
