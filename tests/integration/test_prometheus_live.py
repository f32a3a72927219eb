"""A real Prometheus scrapes a live llmops server on loopback; the dashboard's key queries return series."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import free_port, live_server, tool, wait_ready, write_config

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "llmops.json"
prometheus = tool("prometheus")
pytestmark = pytest.mark.skipif(prometheus is None, reason="prometheus not installed (Debian package prometheus)")

KEY_PANELS = ("Requests per second by outcome", "Latency p50 / p90 / p99", "Time to first token p50 / p99",
              "Generated tokens per second", "Queue depth and running requests", "HTTP requests by route and status")


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[str]:
    cfg = write_config(tmp_path / "fake.yaml", [{"name": "fake", "engine": "fake"}])
    with live_server(cfg) as base:
        port = free_port()
        target = base.removeprefix("http://")
        (tmp_path / "prom.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "llmops", "static_configs": [{"targets": [target]}]}]}))
        proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prom.yml'}",  # type: ignore[list-item]
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/-/ready", 60)
            for _ in range(5):
                httpx.post(f"{base}/v1/chat/completions",
                           json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(30)


def query(prom: str, expr: str) -> list[object]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr})
    assert r.status_code == 200, r.text
    result: list[object] = r.json()["data"]["result"]
    return result


def test_dashboard_key_queries_return_series(scraped: str) -> None:
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    exprs = [t["expr"].replace("[5m]", "[30s]") for title in KEY_PANELS for t in panels[title]["targets"][:1]]
    deadline = time.monotonic() + 60
    missing = exprs
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = [e for e in exprs if not query(scraped, e)]
    assert not missing
    assert query(scraped, 'up{job="llmops"} == 1')
