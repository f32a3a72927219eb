"""What a new key may name. An attack run found POST /admin/keys answered 201 to
{"name": "x", "secret": "chosen", "id": "key_..."}, ignoring the two fields it does not take (an admin could
believe they had chosen the secret), stored `"models": ["*"]` as a model literally named "*" (a key that can
call nothing, listed as if it could call everything) and took names of models the server does not serve.

Now KeyCreate refuses undeclared fields (400 naming the field, in the error envelope, nothing stored), and a
key's `models` must name what requests may name on this server: its models and its routes' aliases (what
`ApiKey.allows` is asked about, `/v1/models` lists). `llmops keys create --models` checks the same names
against the config it loads (a usage error naming --models, before any store is opened), and the two agree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from llmops.api.admin import KeyCreate
from llmops.app import create_app
from llmops.cli import main
from llmops.settings import load_settings
from llmops.stores.keys import unserved
from tests.helpers import write_config

ADMIN = "admin-secret-for-key-models"
MODELS = [{"name": "fake", "engine": "fake"}, {"name": "free", "engine": "fake"},
          {"name": "img", "kind": "image", "engine": "fake-image"}]
ROUTES = [{"name": "auto", "variants": [{"model": "fake"}], "fallbacks": ["free"]}]
HEADERS = {"X-Admin-Key": ADMIN}


@pytest.fixture
def admin() -> Iterator[TestClient]:
    s = load_settings(None, models=MODELS, routes=ROUTES, state={"backend": "memory"})
    s.auth.admin_key = SecretStr(ADMIN)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        yield c


def stored(client: TestClient) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get("/admin/keys", headers=HEADERS).json()["data"]
    return data


@pytest.mark.parametrize("extra", [{"secret": "chosen"}, {"id": "key_000000000000"}, {"display": "x"},
                                   {"revoked_at": None}, {"budget": 5}, {"model": "fake"}])
def test_an_undeclared_field_is_a_400_naming_it(admin: TestClient, extra: dict[str, Any]) -> None:
    response = admin.post("/admin/keys", json={"name": "x", **extra}, headers=HEADERS)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", next(iter(extra)))
    assert stored(admin) == []


def test_key_create_forbids_extra_fields() -> None:
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "x", "secret": "chosen"})


@pytest.mark.parametrize(("models", "named"), [(["*"], ["*"]), (["nope"], ["nope"]), (["fake", "nope"], ["nope"]),
                                               (["all"], ["all"]), ([""], [""]), ([" fake"], [" fake"]),
                                               (["nope", "nope", "gone"], ["nope", "gone"])])
def test_models_the_server_does_not_serve_are_a_400_naming_them(admin: TestClient, models: list[str],
                                                                named: list[str]) -> None:
    response = admin.post("/admin/keys", json={"name": "x", "models": models}, headers=HEADERS)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "models")
    for name in named:
        assert repr(name) in error["message"]
    assert "'fake'" not in error["message"]
    assert stored(admin) == []


@pytest.mark.parametrize("models", [[], ["fake"], ["img"], ["auto"], ["fake", "free", "img", "auto"], ["fake", "fake"]])
def test_served_models_and_routes_are_taken(admin: TestClient, models: list[str]) -> None:
    response = admin.post("/admin/keys", json={"name": "x", "models": models}, headers=HEADERS)
    assert response.status_code == 201, response.text
    assert response.json()["models"] == list(dict.fromkeys(models))


def test_a_key_for_a_route_may_call_it(admin: TestClient) -> None:
    secret = admin.post("/admin/keys", json={"name": "r", "models": ["auto"]}, headers=HEADERS).json()["secret"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    key = {"Authorization": f"Bearer {secret}"}
    assert admin.post("/v1/chat/completions", json={"model": "auto", **chat}, headers=key).status_code == 200
    assert admin.post("/v1/chat/completions", json={"model": "fake", **chat}, headers=key).status_code == 403


# --- the CLI: the same names, against the config it loads ------------------------------------------------------

@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "keys.yaml", MODELS, routes=ROUTES, state={"backend": "memory"})


@pytest.mark.parametrize("models", ["*", "nope", "fake,nope", "all"])
def test_cli_refuses_models_its_config_does_not_serve(cfg: Path, tmp_path: Path, models: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "k.db"
    assert main(["keys", "create", "--config", str(cfg), "--store", str(store), "--name", "x",
                 "--models", models]) == 2
    err = capsys.readouterr().err
    assert "argument --models:" in err
    assert repr(models.split(",")[-1]) in err
    assert "Traceback" not in err
    assert not store.exists()  # refused before any store was opened


@pytest.mark.parametrize("models", ["", "fake", "auto", "fake, free,img", "fake,,fake"])
def test_cli_takes_served_models_and_routes(cfg: Path, tmp_path: Path, models: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--config", str(cfg), "--store", str(tmp_path / "k.db"), "--name", "x",
                 "--models", models]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["models"] == list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))


@pytest.mark.parametrize(("models", "refused"), [
    ([], []), (["*"], ["*"]), (["fake"], []), (["fake", "nope"], ["nope"]), (["nope", "nope"], ["nope"]),
    (["auto", ""], [""]), ([""], [""])])
def test_the_names_both_refuse(models: list[str], refused: list[str]) -> None:
    """The one check POST /admin/keys and `llmops keys create` share (stores.keys.unserved)."""
    served = [m["name"] for m in MODELS] + [r["name"] for r in ROUTES]
    assert unserved(models, served) == refused
