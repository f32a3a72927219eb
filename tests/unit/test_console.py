"""The console, the offline docs and CORS, in process: what is open without a key on a keyed server, what
the docs pages load (local assets only), and that CORS answers allow-listed origins only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from llmops.api.console import console_dir
from llmops.app import create_app
from llmops.errors import ConfigError
from llmops.pipeline.services import Services
from llmops.settings import load_settings
from llmops.stores.keys import new_key

MODELS = [{"name": "fake", "engine": "fake"}]
ADMIN = "admin-secret-for-tests"


def keyed_client(**settings: Any) -> Iterator[TestClient]:
    s = load_settings(None, models=MODELS, state={"backend": "memory"}, **settings)
    s.auth.admin_key = SecretStr(ADMIN)
    app = create_app(s)
    with TestClient(app, raise_server_exceptions=False) as c:
        key, secret = new_key("k", (), "interactive")
        services: Services = app.state.services
        c.portal.call(services.state.keys.add, key)
        c.headers["X-Test-Secret"] = secret
        yield c


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    yield from keyed_client()


def test_root_redirects_to_the_console(keyed: TestClient) -> None:
    r = keyed.get("/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (307, "/console/")
    page = keyed.get("/console/")
    assert page.status_code == 200
    assert "<title>llmops console</title>" in page.text


def test_console_assets_are_local_and_shipped_in_the_package(keyed: TestClient) -> None:
    page = keyed.get("/console/").text
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert {"style.css", "app.js", "favicon.svg"} <= set(assets)
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), asset
        if not asset.startswith("/"):
            assert keyed.get(f"/console/{asset}").status_code == 200
    for name in ("app.js", "style.css"):
        assert "http://" not in (console_dir() / name).read_text().replace("http://www.w3.org", "")


def test_docs_are_open_and_load_local_assets_only(keyed: TestClient) -> None:
    assert keyed.get("/v1/models").status_code == 401  # keyed: the API needs the key
    for page in ("/docs", "/redoc"):
        r = keyed.get(page)
        assert r.status_code == 200
        urls = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)["\']', r.text)
        assert urls, r.text
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url}"
            assert keyed.get(url).status_code == 200, url
    assert keyed.get("/docs-assets/redoc.standalone.js").headers["content-type"].startswith("text/javascript")


def test_the_schema_shows_nothing_secret(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json")
    assert schema.status_code == 200
    assert "/v1/chat/completions" in schema.json()["paths"]
    assert ADMIN not in schema.text
    assert keyed.headers["X-Test-Secret"] not in schema.text
    assert "sqlite" not in schema.text


def test_console_and_docs_can_be_turned_off() -> None:
    for c in keyed_client(web={"console": False, "docs": False}):
        secret = c.headers["X-Test-Secret"]
        for path in ("/", "/console/", "/docs", "/redoc", "/openapi.json"):
            assert c.get(path, headers={"Authorization": f"Bearer {secret}"}).status_code == 404, path


def test_cors_is_off_by_default(keyed: TestClient) -> None:
    r = keyed.options("/v1/models", headers={"Origin": "https://app.example.com",
                                            "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    r = keyed.get("/health", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_listed_origins_only() -> None:
    for c in keyed_client(web={"cors_origins": ["https://app.example.com"]}):
        preflight = c.options("/v1/chat/completions", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200  # answered before auth: a preflight carries no key
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        secret = c.headers["X-Test-Secret"]
        r = c.get("/v1/models", headers={"Origin": "https://app.example.com", "Authorization": f"Bearer {secret}"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "X-Request-Id" in r.headers["access-control-expose-headers"]
        other = c.options("/v1/models", headers={"Origin": "https://evil.example",
                                                 "Access-Control-Request-Method": "GET"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("origin", ["*", "https://app.example.com/path", "app.example.com"])
def test_cors_origins_are_an_allow_list_of_origins(origin: str) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        load_settings(None, models=MODELS, web={"cors_origins": [origin]})


def test_ready_tells_each_models_kind(keyed: TestClient) -> None:
    assert keyed.get("/ready").json()["models"]["fake"]["kind"] == "chat"


def test_pages_and_assets_do_not_spend_the_anonymous_rate_limit() -> None:
    s = load_settings(None, models=MODELS, state={"backend": "memory"}, rate_limits={"anonymous_rpm": 1})
    with TestClient(create_app(s)) as c:
        for _ in range(3):
            for path in ("/console/", "/console/app.js", "/docs", "/docs-assets/swagger-ui.css", "/openapi.json"):
                assert c.get(path).status_code == 200, path
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v1/models").status_code == 429  # the API itself is still limited
