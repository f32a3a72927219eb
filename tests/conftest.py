from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmops.app import create_app
from llmops.settings import load_settings
from tests.helpers import SESSION_STORE, write_config

FAKE_MODELS = [
    {"name": "fake", "engine": "fake"},
    {"name": "fake-fixed", "engine": "fake", "options": {"reply": "one two three four five six"},
     "limits": {"max_n": 3}},
    {"name": "fake-tiny-context", "engine": "fake", "options": {"context_length": 16}},
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_key_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every app and server in the tests uses a key store of its own, never the user's."""
    path = tmp_path_factory.mktemp("keys") / "llmops.db"
    saved = os.environ.get("LLMOPS_STATE__SQLITE_PATH")
    os.environ["LLMOPS_STATE__SQLITE_PATH"] = SESSION_STORE[0] = str(path)
    yield
    if saved is None:
        os.environ.pop("LLMOPS_STATE__SQLITE_PATH", None)
    else:
        os.environ["LLMOPS_STATE__SQLITE_PATH"] = saved


@pytest.fixture(autouse=True)
def _own_key_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's apps and servers use a store of their own: a key one test adds to the session's store would
    key every later app that reads it (a test's own LLMOPS_STATE__SQLITE_PATH, set in it, still wins)."""
    if os.environ.get("LLMOPS_STATE__SQLITE_PATH") == SESSION_STORE[0]:
        monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(tmp_path_factory.mktemp("store") / "llmops.db"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture
def fake_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "fake.yaml", FAKE_MODELS)


@pytest.fixture
def client(fake_config: Path) -> Iterator[TestClient]:
    app = create_app(load_settings(fake_config))
    with TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(100):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.01)
        yield c


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded digits classifier, trained once per test session (about ten seconds on one core)."""
    from llmops.engines.tiny_resnet import build_tiny_resnet

    return build_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))
