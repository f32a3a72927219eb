"""Trailing-slash redirects, in process: the Location is the path alone (Starlette's own named the Host
header's host), with the query kept, never a `//host` a browser would read as another origin; a path no
route serves either way is still a 404. tests/integration/test_slash_redirects_live.py checks the same on a
real server with raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.settings import load_settings


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("target", "location"), [
    ("/health/", "/health"), ("/ready/?verbose=1", "/ready?verbose=1"), ("/docs/", "/docs"),
    ("/health//", "/health")])
def test_the_location_is_relative(client: TestClient, target: str, location: str) -> None:
    for method in ("GET", "POST"):
        r = client.request(method, target, headers={"host": "evil.example"}, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (307, location), method


@pytest.mark.parametrize("target", ["/nothing-here/", "/%2F%2Fevil.example/", "/%5Cevil.example/"])
def test_no_route_either_way_is_a_404(client: TestClient, target: str) -> None:
    r = client.get(target, headers={"host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404
    assert "location" not in r.headers


def test_a_location_never_names_a_host(client: TestClient) -> None:
    from llmops.app import slash_location

    routes = client.app.router.routes  # type: ignore[attr-defined]
    for path in ("//health/", "///health/", "/\\health/", "//", "/"):
        assert slash_location(routes, {"type": "http", "path": path, "query_string": b""}) is None, path
