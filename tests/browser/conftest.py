"""Browser fixtures: Debian's `chromium` driven by Playwright for Python (never Playwright's own browser
download, which does not work offline), against a live server with the fake chat engine and, where
diffusers is installed, tiny-sd at 64 px. Screenshots go to tests/browser/artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import live_server, write_config

ARTIFACTS = Path(__file__).parent / "artifacts"
ADMIN_KEY = "admin-browser-test-secret"
CHAT_MODELS: list[dict[str, Any]] = [
    {"name": "fake-chat", "engine": "fake",
     "options": {"reply": "Paris is the capital of France, on the Seine.", "token_delay_s": 0.02}},
    {"name": "fake-slow", "engine": "fake",
     "options": {"reply": " ".join(f"word{i}" for i in range(400)), "token_delay_s": 0.1}},
]
TINY_SD: dict[str, Any] = {
    "name": "tiny-sd", "kind": "image", "engine": "diffusers",
    "options": {"model": "builtin:tiny-sd", "safety_checker": False, "n_threads": 1},
    "limits": {"image": {"min_size": 64, "default_size": 64, "default_steps": 4}}}


def has_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own (its own key store: the key tests make it keyed), with an admin key."""
    folder = tmp_path_factory.mktemp("browser")
    models = CHAT_MODELS + ([TINY_SD] if has_diffusers() else [])
    cfg = write_config(folder / "console.yaml", models, images={"store_dir": str(folder / "images")})
    env = {"LLMOPS_AUTH__ADMIN_KEY": ADMIN_KEY, "LLMOPS_STATE__SQLITE_PATH": str(folder / "keys.db")}
    with live_server(cfg, env=env) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A page that may reach the server only: any other host is refused, as it would be offline."""
    context = browser.new_context(base_url=server, viewport={"width": 1360, "height": 860})
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
                  else route.abort())
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
