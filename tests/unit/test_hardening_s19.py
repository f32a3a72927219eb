"""Session 19's hardening, in the process: the Host check's decisions, the key's priority as the ceiling, the
client/server split of error-message redaction, and the SQLite store's own threads (a key lookup on a real
server is not queued behind work that fills asyncio's default executor)."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from llmops import errors
from llmops.app import create_app
from llmops.errors import EngineError, InvalidRequest, ModelNotFound, error_body
from llmops.middleware.auth import HostCheck
from llmops.observability import redaction
from llmops.pipeline.context import RequestContext
from llmops.settings import Settings, load_settings
from llmops.stores.keys import new_key
from llmops.stores.sqlite import SqliteDb
from tests.helpers import free_port

# --- the Host check ---------------------------------------------------------------------------------------------


def scope(host: bytes | None, server: tuple[str, int] | None = ("127.0.0.1", 8000)) -> dict[str, Any]:
    return {"type": "http", "path": "/v1/models", "headers": [(b"host", host)] if host is not None else [],
            "server": server}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
def test_a_loopback_bind_answers_loopback_names_only(host: str) -> None:
    check = HostCheck.from_settings(Settings(host=host, port=8000))
    assert check is not None
    for allowed in (b"127.0.0.1:8000", b"localhost:8000", b"[::1]:8000", b"127.9.9.9", b"x.localhost", b"localhost.",
                    b"LocalHost:1234", b"[0:0:0:0:0:0:0:1]"):
        assert check.refusal(scope(allowed)) is None, allowed
    for refused in (b"evil.example", b"evil.example:8000", b"localhost.evil.example", b"127.0.0.1.nip.io",
                    b"[::2]:8000", b"10.0.0.1", b"localhost:port", b"[::1", b"\xff"):
        refusal = check.refusal(scope(refused))
        assert refusal is not None, refused
        assert error_body(refusal.error)["error"]["code"] == "host_not_allowed"
    assert check.refusal(scope(None)) is None  # HTTP/1.0 without Host: no browser sends that
    assert check.refusal(scope(b"")) is None
    # an in-process transport (the test client: server "testserver") or a Unix socket: no browser reaches it
    assert check.refusal(scope(b"testserver", ("testserver", 80))) is None
    assert check.refusal(scope(b"evil.example", None)) is None
    # several Host headers: each must be allowed
    both = {**scope(b"localhost"), "headers": [(b"host", b"localhost"), (b"host", b"evil.example")]}
    assert check.refusal(both) is not None


def test_other_binds_check_nothing_unless_listed() -> None:
    assert HostCheck.from_settings(Settings(host="0.0.0.0")) is None
    assert HostCheck.from_settings(Settings(host="10.1.2.3")) is None
    assert HostCheck.from_settings(Settings(host="127.0.0.1", allowed_hosts=["*"])) is None
    listed = HostCheck.from_settings(Settings(host="0.0.0.0", port=9000,
                                              allowed_hosts=["API.example.com.", "*.corp.example", "::1"]))
    assert listed is not None
    assert Settings(allowed_hosts=["API.example.com.", "*.corp.example", "::1"]).allowed_hosts == \
        ["api.example.com", "*.corp.example", "[::1]"]
    for allowed in (b"api.example.com", b"api.example.com:9000", b"API.EXAMPLE.COM:443", b"eu.corp.example",
                    b"[::1]:9000"):
        assert listed.refusal(scope(allowed, ("10.0.0.5", 9000))) is None, allowed
    for refused in (b"corp.example", b"localhost", b"127.0.0.1", b"evil.example"):
        assert listed.refusal(scope(refused, ("10.0.0.5", 9000))) is not None, refused
    # an explicit list holds for in-process transports too
    assert listed.refusal(scope(b"testserver", ("testserver", 80))) is not None


@pytest.mark.parametrize("entry", ["http://api.example.com", "api.example.com:443", "api.example.com/x", "a b", ""])
def test_allowed_hosts_entries_are_names(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        Settings(allowed_hosts=[entry])


def test_allowed_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_ALLOWED_HOSTS", '["api.example.com"]')
    assert load_settings(None).allowed_hosts == ["api.example.com"]


def test_the_test_client_of_a_default_app_still_works() -> None:
    """Starlette's TestClient sends Host: testserver to an app whose settings bind 127.0.0.1 (the default)."""
    from fastapi.testclient import TestClient

    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models").status_code == 200


# --- the key's priority is the ceiling -------------------------------------------------------------------------


def test_a_header_may_lower_a_keys_priority_never_raise_it() -> None:
    batch, _ = new_key("b", (), "batch")
    interactive, _ = new_key("i", (), "interactive")
    assert RequestContext(batch, priority="interactive").priority_for(None) == "batch"
    assert RequestContext(batch).priority_for("default") == "batch"
    assert RequestContext(batch, priority="batch").priority_for(None) == "batch"
    assert RequestContext(interactive, priority="batch").priority_for(None) == "batch"
    assert RequestContext(interactive).priority_for("flex") == "batch"
    assert RequestContext(interactive).priority_for(None) == "interactive"
    assert RequestContext(interactive, priority="interactive").priority_for("flex") == "interactive"
    assert RequestContext(None, priority="batch").priority_for(None) == "batch"  # keyless: as asked
    assert RequestContext(None).priority_for("flex") == "batch"
    assert RequestContext(None).priority_for(None) == "interactive"


# --- redaction: no oracle, server text still masked ------------------------------------------------------------


@pytest.fixture
def filtered() -> Iterator[str]:
    """A registered secret and the filters configure_logging installs; removed after."""
    secret = secrets.token_hex(20)
    saved = errors._shown, errors._echoed
    redaction.register_secret(secret)
    errors.filter_messages(redaction.redact_text, redaction.redact_shapes)
    try:
        yield secret
    finally:
        errors._shown, errors._echoed = saved
        for form in {secret, repr(secret)[1:-1]}:
            redaction._secrets.pop(form.lower(), None)


def test_a_client_error_quoting_a_secret_is_answered_as_any_guess(filtered: str) -> None:
    secret, other = filtered, secrets.token_hex(20)
    for make in (lambda v: ModelNotFound(f"model {v!r} does not exist", param="model"),
                 lambda v: InvalidRequest(f"invalid value for 'role': {v}", param="messages.0.role")):
        for guess in (secret, secret.upper(), "\uff41" + secret[1:]):  # fullwidth a: the NFKC form holds it
            mine, theirs = error_body(make(guess)), error_body(make(other))
            assert mine["error"]["message"].replace(guess, "G") == theirs["error"]["message"].replace(other, "G")
            assert redaction.MASK not in mine["error"]["message"]
    # shapes of credentials are still masked in a client error: they do not depend on what the server holds
    assert redaction.MASK in error_body(InvalidRequest("model 'sk-llmops-abcdef0123456789'"))["error"]["message"]
    # and the logs still mask the secret, whoever sent it
    assert secret not in redaction.redact_text(f"model {secret!r} does not exist")


def test_server_text_holding_a_secret_is_masked(filtered: str) -> None:
    secret = filtered
    for message in (f"engine failed: {secret}", f"ENGINE FAILED: {secret.upper()}"):
        shown = error_body(EngineError(message))["error"]["message"]
        assert secret not in shown.lower()
        assert redaction.MASK in shown
        assert error_body(EngineError(message), "v2")["error"] == shown
    # server text put into a client error goes through shown_message where it enters (as upstream.py does)
    entered = InvalidRequest(f"upstream: {errors.shown_message('bad ' + secret)}")
    assert secret not in error_body(entered)["error"]["message"]


def test_an_upstreams_client_error_quoting_a_guess_is_no_oracle(filtered: str) -> None:
    """An upstream's 404/400 that names the model the client sent: the client's text, answered the same
    whether or not it is one of this server's secrets. Its 5xx text is server text: masked."""
    from llmops.engines.upstream import _error_from

    secret, other = filtered, secrets.token_hex(20)
    for status in (400, 404, 422):
        said = {v: error_body(_error_from(status, json.dumps({"error": {"message": f"model {v} not found"}})
                                          .encode()))["error"]["message"] for v in (secret, other)}
        assert said[secret].replace(secret, "G") == said[other].replace(other, "G")
    failed = error_body(_error_from(500, json.dumps({"error": {"message": f"crashed holding {secret}"}}).encode()))
    assert secret not in failed["error"]["message"]
    assert redaction.MASK in failed["error"]["message"]


# --- the SQLite store's own threads ----------------------------------------------------------------------------


def test_the_store_runs_its_statements_on_its_own_threads(tmp_path: Path) -> None:
    async def run() -> None:
        db = SqliteDb(tmp_path / "s.db")
        names = await db.call(lambda: threading.current_thread().name)
        assert names.startswith("llmops-sqlite")
        assert (await db.query("SELECT 1"))[0][0] == 1
        db.close()
        assert db._executor is None
    asyncio.run(run())


class _Server:
    """The app on a real loopback port, served by uvicorn in a thread of this process (so the test can reach
    the server's event loop and its default executor)."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                                    lifespan="on", access_log=False))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(2, thread_name_prefix="default"))
        await self.server.serve()

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            assert self.thread.is_alive(), "the server stopped as it started"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_a_key_lookup_is_not_queued_behind_a_full_default_executor(tmp_path: Path) -> None:
    settings = load_settings(None, models=[{"name": "fake", "engine": "fake"}],
                             state={"backend": "sqlite", "sqlite_path": str(tmp_path / "keys.db")},
                             auth={"key_refresh_s": 0})
    key, secret = new_key("team", (), "interactive")
    app = create_app(settings)
    port = free_port()
    release = threading.Event()
    with _Server(app, port) as server:
        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(app.state.services.state.keys.add(key), server.loop).result(30)
        started = threading.Semaphore(0)

        def blocker() -> None:
            started.release()
            release.wait(120)

        async def fill() -> None:
            loop = asyncio.get_running_loop()
            for _ in range(4):  # two run, two wait: every default thread is taken, and work queues behind them
                loop.run_in_executor(None, blocker)
        try:
            asyncio.run_coroutine_threadsafe(fill(), server.loop).result(30)
            for _ in range(2):
                assert started.acquire(timeout=30)
            # a generous deadline: queued behind the blockers, the lookup would wait for them (120 s)
            r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {secret}"},
                          timeout=30)
            assert r.status_code == 200, r.text
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 401  # keyed
        finally:
            release.set()
