"""Alert rules pass promtool's unit tests, and every dashboard panel's PromQL parses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llmops.json"
promtool = tool("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (Debian package prometheus)")


@needs_promtool
def test_rules_check_and_unit_tests() -> None:
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=DEPLOY / "prometheus",  # type: ignore[list-item]
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus",  # type: ignore[list-item]
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert names == tested


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "llmops-overview"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 12
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("requests", "error", "latency", "first token", "tokens per second", "queue", "batch", "gpu"):
        assert topic in titles
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


@needs_promtool
def test_every_panel_query_parses(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)  # type: ignore[list-item]
    assert out.returncode == 0, out.stdout + out.stderr
