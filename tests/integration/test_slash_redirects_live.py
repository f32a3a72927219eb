"""Trailing-slash redirects on a real server, checked with raw HTTP requests: Starlette's own built an absolute
Location from the request's Host header (`GET /health/` with `Host: evil.example` redirected to
http://evil.example/health, which a cache or proxy that does not key on Host would serve to everyone). Now the
Location is the path alone (and the query), so a client stays on the origin it asked; the redirect still
works for a well-behaved client, and a path no route serves either way is still a 404."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import live_server, write_config


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("slash")
    # allowed_hosts "*": the server answers any Host (as one behind a proxy that passes the client's on), so the
    # redirect itself is what is tested; a loopback bind's own Host check would answer these with 403 first
    cfg = write_config(folder / "slash.yaml", [{"name": "fake", "engine": "fake"}], state={"backend": "memory"},
                       allowed_hosts=["*"])
    with live_server(cfg) as url:
        yield url


def raw_get(base: str, target: str, host: str) -> tuple[int, dict[str, str]]:
    """GET `target` with `Host: host`, over a plain socket (no client fills in or checks anything)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
    return int(head[0].split()[1]), headers


@pytest.mark.parametrize(("target", "location"), [
    ("/health/", "/health"),
    ("/metrics/", "/metrics"),
    ("/docs/", "/docs"),
    ("/v2/models/fake/", "/v2/models/fake"),
    ("/ready/?verbose=1&x=%2F", "/ready?verbose=1&x=%2F"),
])
def test_the_location_is_the_path_whatever_the_host_header(base: str, target: str, location: str) -> None:
    for host in ("evil.example", "evil.example:8443", "[::1]:1"):
        code, headers = raw_get(base, target, host)
        assert code == 307, (target, host)
        assert headers["location"] == location, (target, host)
        assert "evil" not in headers["location"]
        assert "::1" not in headers["location"]


def test_a_well_behaved_client_still_follows_the_redirect(base: str) -> None:
    r = httpx.get(f"{base}/health/", follow_redirects=True)
    assert r.status_code == 200
    assert r.url.path == "/health"
    assert [h.status_code for h in r.history] == [307]


@pytest.mark.parametrize("target", ["/nothing-here/", "//evil.example/", "/\\evil.example/"])
def test_no_route_either_way_is_still_a_404(base: str, target: str) -> None:
    code, headers = raw_get(base, target, "evil.example")
    assert code == 404
    assert "location" not in headers
