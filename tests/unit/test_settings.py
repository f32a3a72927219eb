from __future__ import annotations

from pathlib import Path

import pytest

from llmops.cli import main
from llmops.errors import ConfigError
from llmops.settings import load_settings


def test_defaults_serve_the_embedded_models_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMOPS_PORT", raising=False)
    s = load_settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert [(m.name, m.kind, m.engine) for m in s.models] == [
        ("smollm2-135m-instruct", "chat", "llamacpp"), ("gemma-3-270m", "chat", "llamacpp"),
        ("tiny-sd", "image", "diffusers"), ("all-minilm-l6-v2", "embeddings", "sentence-transformers"),
        ("tiny-resnet", "classify", "classifier")]
    assert s.models[0].options["chat_template"] == "chatml-tools"


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("host: 127.0.0.2\nport: 7000\nlog_level: warning\n")
    assert load_settings(cfg).port == 7000
    monkeypatch.setenv("LLMOPS_PORT", "7100")
    assert load_settings(cfg).port == 7100
    assert load_settings(cfg, port=7200).port == 7200
    assert load_settings(cfg).log_level == "warning"  # untouched fields still come from the file


def test_nested_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_LIMITS__MAX_BODY_BYTES", "4096")
    assert load_settings().limits.max_body_bytes == 4096


def test_invalid_field_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models:\n  - name: x\n    engine: fake\n    kind: video\n")
    with pytest.raises(ConfigError, match=r"models\.0\.kind"):
        load_settings(cfg)


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(cfg)


def test_duplicate_model_names(tmp_path: Path) -> None:
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("models:\n  - {name: a, engine: fake}\n  - {name: a, engine: fake}\n")
    with pytest.raises(ConfigError, match="repeated: a"):
        load_settings(cfg)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_config_check_names_bad_engine_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  - name: g\n    engine: llamacpp\n    options: {n_threads: 0}\n")
    assert main(["config", "check", "--config", str(cfg)]) == 2
    assert "models[0].options.n_threads" in capsys.readouterr().err


def test_config_check_unknown_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  - {name: g, engine: tensorrt}\n")
    assert main(["config", "check", "--config", str(cfg)]) == 2
    assert "unknown engine 'tensorrt'" in capsys.readouterr().err


def test_config_check_and_models_ok(fake_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(fake_config)]) == 0
    assert "config ok: 3 model(s)" in capsys.readouterr().out
    assert main(["models", "--config", str(fake_config)]) == 0
    assert "fake-fixed" in capsys.readouterr().out
