"""Rate limits on a real server: 429 with its headers, spoofed X-Forwarded-For does not escape the limit,
per-key limits."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from llmops.cli import main
from tests.helpers import live_server, write_config


def chat(base: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", headers=headers,
                      json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})


def test_spoofed_forwarded_for_does_not_escape(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rl.yaml", [{"name": "fake", "engine": "fake"}], rate_limits={"anonymous_rpm": 3})
    with live_server(cfg) as base:
        codes = [chat(base, {"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(6)]
        assert codes == [200, 200, 200, 429, 429, 429]
        r = chat(base, {"X-Forwarded-For": "198.51.100.99"})
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert httpx.get(f"{base}/health").status_code == 200  # probes are never limited


def test_forwarded_for_from_a_trusted_proxy_is_used(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rl.yaml", [{"name": "fake", "engine": "fake"}],
                       rate_limits={"anonymous_rpm": 2, "trusted_proxies": ["127.0.0.1/32"]})
    with live_server(cfg) as base:
        assert [chat(base, {"X-Forwarded-For": "198.51.100.1"}).status_code for _ in range(3)] == [200, 200, 429]
        assert chat(base, {"X-Forwarded-For": "198.51.100.2"}).status_code == 200  # another client behind it


def test_per_key_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(tmp_path / "keys.db"))
    cfg = write_config(tmp_path / "rl.yaml", [{"name": "fake", "engine": "fake"}])
    assert main(["keys", "--config", str(cfg), "create", "--name", "small", "--rpm", "2"]) == 0
    secret = json.loads(capsys.readouterr().out)["secret"]
    assert main(["keys", "--config", str(cfg), "create", "--name", "free"]) == 0
    other = json.loads(capsys.readouterr().out)["secret"]
    with live_server(cfg) as base:
        assert [chat(base, {"X-API-Key": secret}).status_code for _ in range(3)] == [200, 200, 429]
        assert chat(base, {"X-API-Key": other}).status_code == 200
