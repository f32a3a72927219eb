"""The attack suite's server and helpers: one live fake-engine server per module (keys made through the
admin API, guardrails on, an image store, short connection timeouts, a small body limit) and a /health
watcher that polls while an attack runs and fails the test if /health ever takes 1 s or more."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import live_server, write_config

ADMIN = "attack-suite-admin-key-0123456789abcdef"
HEALTH_LIMIT_S = 1.0
MODELS: list[dict[str, Any]] = [
    {"name": "fake", "engine": "fake", "options": {"context_length": 1_000_000}},
    {"name": "fake-slow", "engine": "fake", "options": {"token_delay_s": 0.05, "capacity": 64},
     "limits": {"max_queued": 256}},
    {"name": "image", "kind": "image", "engine": "fake-image"},
    {"name": "priced", "engine": "fake", "options": {"token_delay_s": 0.02, "capacity": 64},
     "pricing": {"prompt_usd_per_1k": 0.1, "completion_usd_per_1k": 10.0}},
]
SETTINGS: dict[str, Any] = {
    "state": {"backend": "memory"},
    "limits": {"max_body_bytes": 65_536},
    "http": {"head_timeout_s": 2.0, "body_idle_timeout_s": 2.0, "body_timeout_s": 4.0, "keep_alive_timeout_s": 2},
    "guardrails": {"rules": [{"name": "injection", "detector": "injection"},
                             {"name": "pii", "detector": "pii", "action": "redact"}]},
}


@dataclass
class Attacked:
    base: str
    log: Path
    store: Path
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]['secret']}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN}"}

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def make_key(self, name: str, **body: Any) -> dict[str, Any]:
        made = httpx.post(f"{self.base}/admin/keys", headers=self.admin, json={"name": name, **body}, timeout=10)
        assert made.status_code == 201, made.text
        self.keys[name] = made.json()
        return self.keys[name]


def start_attacked(tmp: Path, models: list[dict[str, Any]] | None = None, env: dict[str, str] | None = None,
                   **settings: Any) -> contextlib.AbstractContextManager[Attacked]:
    @contextlib.contextmanager
    def run() -> Iterator[Attacked]:
        store = tmp / "images"
        store.mkdir(exist_ok=True)
        cfg = write_config(tmp / "attack.yaml", models or MODELS, images={"store_dir": str(store)},
                           **{**SETTINGS, **settings})
        with live_server(cfg, env={"LLMOPS_AUTH__ADMIN_KEY": ADMIN, **(env or {})}) as base:
            server = Attacked(base, cfg.with_suffix(".log"), store)
            server.make_key("low", models=["fake", "fake-slow", "image"], max_concurrent=4)
            server.make_key("other")
            server.make_key("revoked")
            httpx.delete(f"{base}/admin/keys/{server.keys['revoked']['id']}", headers=server.admin, timeout=10)
            wait_until(lambda: httpx.post(f"{base}/v1/chat/completions", headers=server.auth("low"), json=CHAT,
                                          timeout=10).status_code == 200)
            yield server
    return run()


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}]}


def wait_until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


class HealthWatch:
    """Polls /health from a thread; `slowest` is the longest answer (a failure or timeout counts as inf)."""

    def __init__(self, base: str) -> None:
        self.base, self.slowest, self.polls = base, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.base}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.slowest = max(self.slowest, time.perf_counter() - started if ok else float("inf"))
                self.polls += 1
                self._stop.wait(0.05)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        wait_until(lambda: self.polls > 0)
        return self

    def __exit__(self, *exc: object) -> None:
        wait_until(lambda: self.polls > 1)
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            assert self.slowest < HEALTH_LIMIT_S, f"/health took {self.slowest:.2f} s during the attack"


def assert_error(response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None) -> None:
    """The exact status and the OpenAI error envelope (message, type, param, code)."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


def read_log(server: Attacked) -> str:
    with open(server.log, encoding="utf-8", errors="replace") as f:
        return f.read()

