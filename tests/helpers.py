"""Test helpers: a real `llmops serve` process on a loopback port, and config files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml


def tool(name: str) -> str | None:
    """A command on PATH, or installed beside this interpreter (a venv's bin/)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


SESSION_STORE: list[str | None] = [None]  # the test session's shared SQLite file (set by tests/conftest.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, models: list[dict[str, Any]], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"models": models, **extra}))
    return path


@contextmanager
def live_server(config: Path | None, *, ready_timeout: float = 120.0, env: dict[str, str] | None = None,
                args: list[str] | None = None, wait_for: str = "/ready", port: int | None = None) -> Iterator[str]:
    """Run `python -m llmops serve` on a free loopback port until `wait_for` answers 200; stop it after. A config
    that names no SQLite file gets one beside it: the session's store (tests/conftest.py) is shared by every
    app and server of the run, and a key an earlier test created there would start this server keyed
    (`env` may still name another)."""
    port = port or free_port()
    env = {**own_state(config), **(env or {})}
    cmd = [sys.executable, "-m", "llmops", "serve", "--host", "127.0.0.1", "--port", str(port), *(args or [])]
    if config is not None:
        cmd += ["--config", str(config)]
    log = open(config.with_suffix(".log") if config else os.devnull, "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base + wait_for, ready_timeout)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def own_state(config: Path | None) -> dict[str, str]:
    """LLMOPS_STATE__SQLITE_PATH for a server whose config names no SQLite file and whose test chose none
    (it overrides the test session's shared one, tests/conftest.py, where a key an earlier test created
    would key this server)."""
    chosen = os.environ.get("LLMOPS_STATE__SQLITE_PATH")
    if chosen is not None and chosen != SESSION_STORE[0]:
        return {}
    loaded = yaml.safe_load(config.read_text()) if config is not None else None
    state = (loaded or {}).get("state") or {} if isinstance(loaded, dict) else {}
    if isinstance(state, dict) and state.get("sqlite_path"):
        return {}
    folder = config.parent if config is not None else Path(tempfile.mkdtemp(prefix="llmops-test-"))
    name = f"{config.stem}-state.db" if config is not None else "state.db"
    return {"LLMOPS_STATE__SQLITE_PATH": str(folder / name)}


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


class RedisServer:
    """A real `redis-server` on a free loopback port, its data in `folder` (SAVE writes dump.rdb there)."""

    def __init__(self, folder: Path) -> None:
        exe = tool("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                     "--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """Stop the process without closing its sockets: connections stay open and nothing answers, as
        with a Redis host that hangs or a network that drops packets."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def dump(self) -> bytes:
        """Everything Redis holds, as the bytes of an RDB snapshot."""
        import redis

        redis.Redis.from_url(self.url).save()
        return (self.folder / "dump.rdb").read_bytes()


def encode_image(image: Any, fmt: str = "PNG", **save: Any) -> bytes:
    """A PIL image as the bytes of an image file."""
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def never(check: Callable[[], bool], window: float = 0.5) -> bool:
    """True when `check` stays False for `window` seconds, polled: for what must NOT happen (an engine that
    was stopped making more tokens). Returns False as soon as it happens."""
    return not eventually(check, window)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `check` until it holds (True) or `timeout` passes (False): a wait for a condition, not a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def writes_of(state: Any) -> Any:
    """A Redis state's batch of writes nobody waits for (RedisWrites: places and reservations given back,
    token counts corrected), for a test to wait until they are in Redis (`await writes_of(state).written()`)."""
    from llmops.stores.redis_store import RedisCounters

    counters = state.counters
    assert isinstance(counters, RedisCounters)
    return counters.writes


@contextmanager
def ready_client(config: Path, timeout: float = 60.0) -> Iterator[Any]:
    """A FastAPI TestClient on the app `config` builds, once /ready answers 200 (its models loaded)."""
    from fastapi.testclient import TestClient

    from llmops.app import create_app
    from llmops.settings import load_settings

    with TestClient(create_app(load_settings(config)), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + timeout
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.02)
        yield client


class LeavingClient:
    """What the disconnect watch reads of a request (api/disconnect.py): `receive`, which gives
    http.disconnect once `left` is set; `reads` counts the reads."""

    def __init__(self) -> None:
        import asyncio
        self.left = asyncio.Event()
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        await self.left.wait()
        return {"type": "http.disconnect"}
