"""API keys on a real server: the CLI and the admin API manage them, requests need one once one exists,
keys survive a restart, only hashes are stored, and a non-loopback bind without keys is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops.cli import main
from llmops.errors import ConfigError
from llmops.server import check_exposure
from llmops.settings import load_settings
from tests.helpers import eventually, live_server, write_config

MODELS = [{"name": "fake", "engine": "fake"}, {"name": "other", "engine": "fake"}]


@pytest.fixture
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    db = tmp_path / "keys.db"
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(db))  # this test's own store, for its servers too
    cfg = write_config(tmp_path / "auth.yaml", MODELS, state={"sqlite_path": str(db)}, auth={"key_refresh_s": 0})
    return cfg, db


def create(cfg: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main(["keys", "--config", str(cfg), "create", "--name", "team-a", *extra]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def chat(base: str, model: str = "fake", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", headers=headers,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_keys_gate_requests(keyed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = keyed
    key = create(cfg, capsys, "--models", "fake")
    secret = key["secret"]
    with live_server(cfg) as base:
        missing = chat(base)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        assert chat(base, headers={"Authorization": "Bearer sk-llmops-wrong"}).status_code == 401
        assert chat(base, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert chat(base, headers={"X-API-Key": secret}).status_code == 200
        denied = chat(base, "other", headers={"X-API-Key": secret})
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "model_not_allowed"
        models = httpx.get(f"{base}/v1/models", headers={"X-API-Key": secret}).json()["data"]
        assert [m["id"] for m in models] == ["fake"]
        for open_path in ("/health", "/ready", "/metrics"):
            assert httpx.get(f"{base}{open_path}").status_code == 200
        assert main(["keys", "--config", str(cfg), "revoke", key["id"]]) == 0
        assert eventually(lambda: chat(base, headers={"X-API-Key": secret}).status_code == 401)
    stored = b"".join(f.read_bytes() for f in db.parent.glob(db.name + "*"))  # the file and its WAL
    assert secret.encode() not in stored
    assert key["id"].encode() in stored


def test_keys_survive_a_restart(keyed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = keyed
    secret = create(cfg, capsys)["secret"]
    for _ in range(2):
        with live_server(cfg) as base:
            assert chat(base, headers={"X-API-Key": secret}).status_code == 200
            assert chat(base).status_code == 401
    assert main(["keys", "--config", str(cfg), "list"]) == 0
    listing = capsys.readouterr().out
    assert "team-a" in listing
    assert secret not in listing


def test_admin_api(keyed: tuple[Path, Path]) -> None:
    cfg, _ = keyed
    with live_server(cfg) as base:
        assert httpx.get(f"{base}/admin/keys").status_code == 403  # no admin key configured: disabled
    with live_server(cfg, env={"LLMOPS_AUTH__ADMIN_KEY": "admin-secret-for-the-tests"}) as base:
        assert httpx.get(f"{base}/admin/keys", headers={"X-Admin-Key": "nope"}).status_code == 403
        admin = {"Authorization": "Bearer admin-secret-for-the-tests"}
        made = httpx.post(f"{base}/admin/keys", headers=admin, json={"name": "ci", "models": ["other"]})
        assert made.status_code == 201
        secret, key_id = made.json()["secret"], made.json()["id"]
        listed = httpx.get(f"{base}/admin/keys", headers=admin).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert "secret" not in listed[0]
        assert eventually(lambda: chat(base, "other", headers={"X-API-Key": secret}).status_code == 200)
        # the admin key is not an API key
        assert chat(base, "other", headers={"X-API-Key": "admin-secret-for-the-tests"}).status_code == 401
        assert httpx.get(f"{base}/admin/keys/{key_id}", headers=admin).json()["name"] == "ci"
        assert httpx.delete(f"{base}/admin/keys/{key_id}", headers=admin).json()["revoked_at"] is not None
        assert httpx.get(f"{base}/admin/keys/key_nope", headers=admin).status_code == 404


def test_non_loopback_without_keys_is_refused(keyed: tuple[Path, Path]) -> None:
    cfg, _ = keyed
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: even if the check failed, nothing would listen
    out = subprocess.run([sys.executable, "-m", "llmops", "serve", "--config", str(cfg), "--host", "192.0.2.1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--insecure-no-auth" in out.stderr
    with pytest.raises(ConfigError):
        check_exposure(load_settings(cfg, host="10.1.2.3"))
    check_exposure(load_settings(cfg, host="10.1.2.3", insecure_no_auth=True))  # the operator said so
    check_exposure(load_settings(cfg, host="127.0.0.1"))


def test_an_exposed_server_whose_keys_vanish_refuses_rather_than_opens(keyed: tuple[Path, Path]) -> None:
    """Bound beyond loopback, the app never serves without a key, even with none in its store (they were in a
    Redis that was flushed, say): the exposure check at start-up is not its only guard."""
    from fastapi.testclient import TestClient

    from llmops.app import create_app
    cfg, _ = keyed
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(load_settings(cfg, host="10.1.2.3")), raise_server_exceptions=False) as c:
        refused = c.post("/v1/chat/completions", json=body)
        assert refused.status_code == 401
        assert c.get("/health").status_code == 200
    with TestClient(create_app(load_settings(cfg, host="10.1.2.3", insecure_no_auth=True))) as c:
        assert c.post("/v1/chat/completions", json=body).status_code == 200  # the operator said so
