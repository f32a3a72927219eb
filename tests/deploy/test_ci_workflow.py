"""The example GitHub Actions workflow (deploy/ci/github-actions.yml) passes the GitHub workflow schema
(check-jsonschema's vendored copy; actionlint's PyPI wrapper downloads its binary at install time, which this
CI cannot), and its jobs install what the tests they run need."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import tool

WORKFLOW = Path(__file__).resolve().parents[2] / "deploy" / "ci" / "github-actions.yml"


def test_workflow_matches_the_github_schema(tmp_path: Path) -> None:
    check = tool("check-jsonschema")
    if check is None:
        pytest.skip("check-jsonschema not installed (pip install check-jsonschema; the dev extra has it)")
    out = subprocess.run([check, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:", 1))
    out = subprocess.run([check, "--builtin-schema", "vendor.github-workflows", str(broken)],
                         capture_output=True, text=True)
    assert out.returncode != 0  # the check can fail


def test_jobs_install_what_their_tests_need() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    runs = {name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    assert "make lint test" in runs["test"]
    assert "redis-server" in runs["test"]
    assert "prometheus" in runs["test"]
    assert "make deploy-test" in runs["deploy-test"]
    assert set(jobs["build-push"]["needs"]) == {"test", "deploy-test"}
    # secrets reach scripts through the environment, never pasted into the script text
    assert all("${{ secrets" not in step.get("run", "") for job in jobs.values() for step in job["steps"])
