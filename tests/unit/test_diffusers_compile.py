"""The diffusers compile option: refused without CUDA unless forced, batch sizes and size taken from the
model's image limits, caches on the model volume. (Compiling itself: tests/model/test_compile_cpu.py on the
CPU, tests/gpu with CUDA graphs.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.engines.diffusers_compile import cache_dir, check_device, use_cache
from llmops.errors import ConfigError
from llmops.settings import ModelConfig


def test_compile_is_refused_on_a_cpu_only_model_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match=r"compile needs a CUDA GPU.*compile_force: true"):
        check_device("sd", "cpu", force=False)
    check_device("sd", "cpu", force=True)  # forced: allowed
    check_device("sd", "cuda:1", force=False)


async def test_the_engine_fails_to_load_rather_than_compile_on_cpu() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from llmops.engines.diffusers import DiffusersEngine, DiffusersOptions

    engine = DiffusersEngine("sd", DiffusersOptions(model="builtin:tiny-sd", device="cpu", compile=True,
                                                    safety_checker=False, n_threads=1))
    with pytest.raises(ConfigError, match="compile_force"):
        await engine.start()
    assert engine.health().state == "failed"
    await engine.close()


def test_batch_sizes_and_size_follow_the_image_limits() -> None:
    cfg = ModelConfig(name="sd", kind="image", engine="diffusers", options={"compile": True},
                      limits={"image": {"max_batch_size": 3, "default_size": 256}})  # type: ignore[arg-type]
    assert cfg.options["compile_batch_sizes"] == [1, 2, 3]
    assert cfg.options["compile_size"] == 256
    own = ModelConfig(name="sd", kind="image", engine="diffusers",
                      options={"compile": True, "compile_batch_sizes": [1, 4]})
    assert own.options["compile_batch_sizes"] == [1, 4]
    plain = ModelConfig(name="sd", kind="image", engine="diffusers", options={})
    assert "compile_batch_sizes" not in plain.options


def test_the_cache_lives_on_the_model_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir(str(tmp_path / "mine"), "any") == tmp_path / "mine"
    model = tmp_path / "model"
    model.mkdir()
    assert cache_dir(None, str(model)) == model / ".torch-compile-cache"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hub = cache_dir(None, "stabilityai/stable-diffusion-2-1")
    assert hub.parent == tmp_path / "hf" / "torch-compile-cache"
    assert hub.name.startswith("stabilityai-stable-diffusion-2-1-")
    assert cache_dir(None, "stabilityai/stable-diffusion-2-1") == hub  # the same folder after a restart


def test_use_cache_points_inductor_at_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_dir
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    # torch sets the variable to its default the first time anything asks (importing diffusers' pipelines
    # does): that is not a choice, and the configured folder replaces it
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert use_cache(tmp_path / "c") == tmp_path / "c"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "c")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "c" / "triton")
    assert inductor_dir() == str(tmp_path / "c")
    assert (tmp_path / "c").is_dir()


def test_an_operators_inductor_folder_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import os

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "operator"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert use_cache(tmp_path / "c") == tmp_path / "operator"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "operator")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "operator" / "triton")
    assert not (tmp_path / "c").exists()
