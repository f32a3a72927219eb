"""The CLI takes --config and --store the same way on every subcommand, before or after it; every --help
says where keys and spend live; creating the first key in a store warns that its servers become keyed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.cli import _parser, main
from tests.helpers import write_config

ORDERS = [
    ["--config", "{cfg}", "models", "list"],
    ["models", "--config", "{cfg}", "list"],
    ["models", "list", "--config", "{cfg}"],
    ["models", "--config", "{cfg}"],
]


@pytest.fixture(autouse=True)
def _store_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own store (an environment variable) would beat the config's; these tests name theirs."""
    monkeypatch.delenv("LLMOPS_STATE__SQLITE_PATH", raising=False)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.yaml", [{"name": "from-the-config", "engine": "fake"}],
                        state={"backend": "sqlite", "sqlite_path": str(tmp_path / "config.db")})


@pytest.mark.parametrize("argv", ORDERS)
def test_config_is_read_wherever_it_is_given(argv: list[str], cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([a.format(cfg=cfg) for a in argv]) == 0
    assert capsys.readouterr().out.startswith("from-the-config\t")


@pytest.mark.parametrize("argv", [
    ["keys", "create", "--config", "{cfg}", "--name", "a"],
    ["keys", "--config", "{cfg}", "create", "--name", "a"],
    ["--config", "{cfg}", "keys", "create", "--name", "a"],
])
def test_keys_take_the_config_before_or_after_the_verb(argv: list[str], cfg: Path, tmp_path: Path) -> None:
    assert main([a.format(cfg=cfg) for a in argv]) == 0
    assert (tmp_path / "config.db").is_file()


def test_store_overrides_the_config_and_is_accepted_anywhere(cfg: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.db"
    assert main(["keys", "create", "--name", "x", "--config", str(cfg), "--store", str(other), "--secret-only"]) == 0
    created = capsys.readouterr()
    assert "first key in the SQLite file " + str(other) in created.err
    assert "make serve" not in created.err  # not the user's default store
    assert main(["--store", str(other), "keys", "list"]) == 0
    assert "\tx\t" in capsys.readouterr().out
    assert main(["keys", "list", "--config", str(cfg)]) == 0
    listed = capsys.readouterr()
    assert (listed.out, "no keys" in listed.err) == ("", True)


def test_only_the_first_key_warns(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", "one", "--config", str(cfg)]) == 0
    first = capsys.readouterr()
    assert "warning: this is the first key" in first.err
    assert json.loads(first.out)["name"] == "one"
    assert main(["keys", "create", "--name", "two", "--config", str(cfg)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_default_store_warning_names_make_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["keys", "create", "--name", "one"]) == 0
    err = capsys.readouterr().err
    assert str(tmp_path / ".local/share/llmops/llmops.db") in err
    assert "make serve" in err


def _helps() -> list[list[str]]:
    parser = _parser()
    out = [[]]
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():  # type: ignore[union-attr]
            out.append([name])
            for inner in sub._subparsers._group_actions if sub._subparsers else []:
                out += [[name, verb] for verb in inner.choices]  # type: ignore[union-attr]
    return out


@pytest.mark.parametrize("argv", _helps(), ids=lambda a: " ".join(a) or "llmops")
def test_every_help_says_where_keys_and_spend_live(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "where keys and spend live" in text
    assert "~/.local/share/llmops/llmops.db" in text
    assert "--config" in text
    assert "--store" in text


def test_the_equals_form_and_a_missing_value(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", f"--config={cfg}", "list"]) == 0
    assert capsys.readouterr().out.startswith("from-the-config\t")
    with pytest.raises(SystemExit) as done:
        main(["models", "list", "--config"])
    assert done.value.code == 2
    assert "--config" in capsys.readouterr().err
