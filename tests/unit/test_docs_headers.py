"""The API docs (/docs, /redoc), their schema (/openapi.json) and their assets carry the console's security
headers (no framing, no type sniffing, no Referer) and a Content-Security-Policy fitted to each: they had
none. Swagger UI's inline start-up script is allowed by its hash and no other inline script runs;
tests/browser/test_docs_csp.py checks in Chromium that both pages still render under their policies."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_console import keyed_client
from tests.unit.test_console_headers import EXPECTED, directives


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    yield from keyed_client()


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui-bundle.js",
                                  "/docs-assets/redoc.standalone.js", "/docs-assets/swagger-ui.css"])
def test_docs_responses_carry_security_headers(keyed: TestClient, path: str) -> None:
    r = keyed.get(path)
    assert r.status_code == 200
    assert {k: r.headers.get(k) for k in EXPECTED} == EXPECTED
    csp = directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in csp.get("script-src", [])
    assert "'unsafe-eval'" not in csp.get("script-src", [])


def test_swagger_ui_runs_its_own_inline_script_only(keyed: TestClient) -> None:
    r = keyed.get("/docs")
    csp = directives(r.headers["content-security-policy"])
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert len(inline) == 1
    assert "SwaggerUIBundle(" in inline[0]
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert csp["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert "'unsafe-inline'" not in csp["style-src"]
    assert csp["connect-src"] == ["'self'"]  # "Try it out" calls this server only
    assert '"validatorUrl": null' in inline[0]  # no validator badge fetched from swagger.io


def test_the_schema_and_the_assets_get_the_strictest_policy(keyed: TestClient) -> None:
    for path in ("/openapi.json", "/docs-assets/swagger-ui-bundle.js"):
        csp = directives(keyed.get(path).headers["content-security-policy"])
        assert not {"script-src", "style-src", "connect-src"} & set(csp), path
    assert keyed.get("/openapi.json").json()["info"]["title"] == "llmops"  # the schema itself is unchanged


def test_redoc_runs_no_inline_script(keyed: TestClient) -> None:
    r = keyed.get("/redoc")
    csp = directives(r.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"]
    assert not re.search(r"<script>", r.text)
    assert "<redoc spec-url=" in r.text
