"""The console's pages carry security headers (a Content-Security-Policy fitted to its own script and style
sheet, no framing, no type sniffing, no Referer), and /console redirects to /console/ relatively: the
router's own slash redirect built an absolute URL from the Host header (`Host: evil.example` sent the
browser to http://evil.example/console/). tests/browser/test_console_csp.py checks the policy in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from llmops.api.console import console_dir
from tests.unit.test_console import keyed_client

EXPECTED = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    yield from keyed_client()


def directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in csp.split(";")) if d}


@pytest.mark.parametrize("path", ["/console/", "/console/index.html", "/console/app.js", "/console/style.css",
                                  "/console/favicon.svg"])
def test_console_responses_carry_security_headers(keyed: TestClient, path: str) -> None:
    r = keyed.get(path)
    assert r.status_code == 200
    assert {k: r.headers.get(k) for k in EXPECTED} == EXPECTED
    csp = directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no inline script, no eval, no other origin
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp["style-src"]  # only style attributes (style-src-attr) are inline


def test_the_page_needs_nothing_the_policy_refuses() -> None:
    """The console's HTML loads its script from a file and has no inline handlers or <style> blocks."""
    html = (console_dir() / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="app.js">']
    assert not re.search(r"<script>|\son[a-z]+\s*=|<style\b|javascript:", html, re.IGNORECASE)
    app = (console_dir() / "app.js").read_text()
    assert not re.search(r"\beval\(|new Function\(|innerHTML\s*=", app)


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1:8000"])
def test_console_redirect_is_relative_whatever_the_host(keyed: TestClient, host: str) -> None:
    r = keyed.get("/console", headers={"Host": host}, follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"] == "console/"  # resolves to /console/ on whatever host the browser used
    root = keyed.get("/", headers={"Host": host}, follow_redirects=False)
    assert root.headers["location"] == "/console/"
    assert keyed.get("/console", headers={"Host": host}).url.path == "/console/"
