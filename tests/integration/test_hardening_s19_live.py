"""Session 19's hardening, on real `llmops serve` processes on loopback:

- DNS rebinding: a keyless server bound to 127.0.0.1 answers only Host headers that name it by a loopback name
  or address; probes and a request without Host are answered; `allowed_hosts` replaces the automatic list;
- a batch key's `X-Priority: interactive` is admitted as batch (the key's class is the ceiling);
- the redaction of the server's secrets is no oracle: the admin key sent as a model name is answered exactly as
  a random string of its shape, while server text holding a secret is still masked."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from llmops.cli import main
from tests.helpers import live_server, write_config

FAKE = [{"name": "fake", "engine": "fake"}]


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = write_config(tmp_path_factory.mktemp("hosts") / "keyless.yaml", FAKE)
    with live_server(cfg) as base:
        yield base


def chat(base: str, host: str | None) -> httpx.Response:
    headers = {"Host": host} if host is not None else {}
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})


def raw_get(base: str, request: bytes) -> bytes:
    """`request` sent as it is (an HTTP/1.0 request without a Host header), the whole answer read."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_keyless_loopback_server_refuses_a_rebound_host(keyless: str) -> None:
    port = urlsplit(keyless).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", f"attacker.localhost.evil:{port}"):
        r = chat(keyless, host)
        assert r.status_code == 403, (host, r.text)
        error = r.json()["error"]
        assert error["code"] == "host_not_allowed"
        assert error["type"] == "permission_error"
        models = httpx.get(f"{keyless}/v1/models", headers={"Host": host}, timeout=30)
        assert models.status_code == 403  # every path but the probes: the console and /metrics too
        assert httpx.get(f"{keyless}/console", headers={"Host": host}, timeout=30).status_code == 403
        assert httpx.get(f"{keyless}/metrics", headers={"Host": host}, timeout=30).status_code == 403


def test_loopback_names_are_answered(keyless: str) -> None:
    port = urlsplit(keyless).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "127.0.0.2",
                 f"app.localhost:{port}", "LOCALHOST."):
        assert chat(keyless, host).status_code == 200, host
    with openai.OpenAI(base_url=f"{keyless}/v1", api_key="unused", max_retries=0) as client:  # Host 127.0.0.1:port
        assert client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}]).choices


def test_probes_and_a_request_without_host_are_answered(keyless: str) -> None:
    for probe in ("/health", "/ready"):
        assert httpx.get(keyless + probe, headers={"Host": "evil.example"}, timeout=30).status_code == 200
    answer = raw_get(keyless, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_an_allowed_hosts_list_replaces_the_automatic_one(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "listed.yaml", FAKE)
    env = {"LLMOPS_ALLOWED_HOSTS": json.dumps(["api.example.com", "*.corp.example", "127.0.0.1"])}
    with live_server(cfg, env=env) as base:
        assert chat(base, "api.example.com").status_code == 200
        assert chat(base, "api.example.com:8443").status_code == 200
        assert chat(base, "eu.corp.example").status_code == 200
        assert chat(base, None).status_code == 200  # httpx's own: 127.0.0.1:port
        assert chat(base, "localhost").status_code == 403  # not listed
        assert chat(base, "evil.example").status_code == 403
    with live_server(cfg, env={"LLMOPS_ALLOWED_HOSTS": '["*"]'}) as base:
        assert chat(base, "evil.example").status_code == 200


# --- the key's priority is the ceiling ------------------------------------------------------------------------

WORDS = " ".join(f"w{i}" for i in range(60))
SLOW = {"name": "slow", "engine": "fake", "options": {"reply": WORDS, "token_delay_s": 0.05, "capacity": 1},
        "limits": {"max_queued": 4, "default_deadline_s": 60}}


def create_key(store: Path, priority: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["keys", "--store", str(store), "create", "--name", priority, "--priority", priority,
                 "--secret-only"]) == 0
    return capsys.readouterr().out.strip()


async def wait_state(c: httpx.AsyncClient, running: int, queued: int) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        model = (await c.get("/ready")).json()["models"]["slow"]
        if (model["running"], model["queued"]) == (running, queued):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"never reached running={running} queued={queued}")


def test_a_batch_key_asking_for_interactive_is_admitted_as_batch(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "keys.db"
    batch, interactive = create_key(store, "batch", capsys), create_key(store, "interactive", capsys)
    cfg = write_config(tmp_path / "slow.yaml", [SLOW])

    async def run(base: str) -> list[str]:
        done: list[str] = []
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            async def send(name: str, secret: str, max_tokens: int, priority: str | None = None) -> None:
                headers = {"Authorization": f"Bearer {secret}"}
                if priority is not None:
                    headers["X-Priority"] = priority
                r = await c.post("/v1/chat/completions", headers=headers,
                                 json={"model": "slow", "max_tokens": max_tokens,
                                       "messages": [{"role": "user", "content": "go"}]})
                assert r.status_code == 200, r.text
                done.append(name)

            first = asyncio.create_task(send("first", interactive, 60))  # holds the one slot for 3 s
            await wait_state(c, 1, 0)
            jumper = asyncio.create_task(send("batch key, X-Priority interactive", batch, 3, "interactive"))
            await wait_state(c, 1, 1)
            lowered = asyncio.create_task(send("interactive key", interactive, 3))
            await wait_state(c, 1, 2)
            await asyncio.gather(first, jumper, lowered)
        return done

    with live_server(cfg, env={"LLMOPS_STATE__SQLITE_PATH": str(store)}) as base:
        done = asyncio.run(run(base))
    # queued first, but batch: the interactive key's request, queued after it, overtakes it
    assert done == ["first", "interactive key", "batch key, X-Priority interactive"]


# --- no redaction oracle --------------------------------------------------------------------------------------

ADMIN = secrets.token_hex(20)  # 40 lower-case hex digits: the shape `openssl rand -hex 20` gives
USER = [{"role": "user", "content": "x"}]
# requests that echo a client value in their error: (method, path, what the value goes in)
ECHOES: dict[str, Any] = {
    "chat model": lambda g: ("POST", "/v1/chat/completions", {"json": {"model": g, "messages": USER}}),
    "completions model": lambda g: ("POST", "/v1/completions", {"json": {"model": g, "prompt": "x"}}),
    "embeddings model": lambda g: ("POST", "/v1/embeddings", {"json": {"model": g, "input": "x"}}),
    "images model": lambda g: ("POST", "/v1/images/generations", {"json": {"model": g, "prompt": "x"}}),
    "models path": lambda g: ("GET", f"/v1/models/{g}", {}),
    "v2 model": lambda g: ("GET", f"/v2/models/{g}", {}),
    "message role": lambda g: ("POST", "/v1/chat/completions", {"json": {
        "model": "fake", "messages": [{"role": g, "content": "x"}]}}),
    "a parameter's value": lambda g: ("POST", "/v1/chat/completions", {"json": {
        "model": "fake", "messages": USER, "service_tier": g}}),
    "X-Priority": lambda g: ("POST", "/v1/chat/completions", {"json": {"model": "fake", "messages": USER},
                                                              "headers": {"X-Priority": g}}),
    "X-Request-Timeout": lambda g: ("POST", "/v1/chat/completions", {"json": {"model": "fake", "messages": USER},
                                                                     "headers": {"X-Request-Timeout": g}}),
}


def answer(base: str, what: str, value: str) -> tuple[int, str]:
    """The status and body of the request `what` with `value` in it, `value` itself replaced by GUESS."""
    method, path, kwargs = ECHOES[what](value)
    r = httpx.request(method, base + path, timeout=30, **kwargs)
    return r.status_code, r.text.replace(value, "GUESS")


def test_the_admin_key_as_a_client_value_is_answered_as_any_other_value(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "oracle.yaml", FAKE)
    with live_server(cfg, env={"LLMOPS_AUTH__ADMIN_KEY": ADMIN}) as base:
        for what in ECHOES:
            for key in (ADMIN, ADMIN.upper()):  # the literal was masked in any case
                status, shown = answer(base, what, key)
                assert 400 <= status < 500, (what, status, shown)
                assert (status, shown) == answer(base, what, secrets.token_hex(20) if key == ADMIN
                                                 else secrets.token_hex(20).upper()), what
                assert "[REDACTED]" not in shown, (what, shown)


class _Upstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream whose every completion fails with a 500 naming the key it was sent."""

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        said = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self._send(500, {"error": {"message": f"internal failure for key {said} while serving"}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_server_text_holding_a_secret_is_still_masked(tmp_path: Path) -> None:
    """The upstream's key (no credential's shape: only the literal can mask it) in an upstream's 500."""
    upstream_key = secrets.token_hex(20)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = write_config(tmp_path / "up.yaml", [{"name": "up", "engine": "upstream", "options": {
            "base_url": f"http://127.0.0.1:{upstream.server_address[1]}/v1", "model": "m",
            "api_key_env": "S19_UPSTREAM_KEY", "max_retries": 0}}])
        with live_server(cfg, env={"S19_UPSTREAM_KEY": upstream_key}) as base:
            r = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={"model": "up", "messages": USER})
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert r.status_code >= 500, r.text
    assert upstream_key not in r.text
    assert "[REDACTED]" in r.json()["error"]["message"]
