"""The admin key: settings refuse an empty, weak or placeholder one, so it can never open the admin API."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmops.errors import ConfigError
from llmops.settings import admin_key_problem, load_settings

ROOT = Path(__file__).resolve().parents[2]


def k8s_placeholder() -> str:
    secret = yaml.safe_load((ROOT / "deploy/k8s/base/secret.yaml").read_text())
    value: str = secret["stringData"]["admin-key"]
    return value


@pytest.mark.parametrize("key", ["", "   ", "short", "aaaaaaaaaaaaaaaaaaaaaaaa", "abababababababababab",
                                 "replace-me-before-deploying", "changeme-changeme-changeme",
                                 "replace me before deploying", "REPLACE ME BEFORE DEPLOYING", "${LLMOPS_ADMIN_KEY}",
                                 "your_admin_key_here", "<your admin key here>", "password12345678",
                                 "                abcdef", "3f9c2a7e81d04b6f 9e5a0c1d2b3e4f5a"])
def test_weak_admin_keys_refuse_to_start(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_AUTH__ADMIN_KEY", key)
    with pytest.raises(ConfigError, match=r"auth\.admin_key: .*the admin key .*refuses to start"):
        load_settings()


def test_the_kubernetes_placeholder_is_refused() -> None:
    assert admin_key_problem(k8s_placeholder()) is not None


def test_unset_admin_key_disables_and_a_random_one_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMOPS_AUTH__ADMIN_KEY", raising=False)
    assert load_settings().auth.admin_key is None
    monkeypatch.setenv("LLMOPS_AUTH__ADMIN_KEY", "3f9c2a7e81d04b6f9e5a0c1d2b3e4f5a")
    key = load_settings().auth.admin_key
    assert key is not None
    assert key.get_secret_value() == "3f9c2a7e81d04b6f9e5a0c1d2b3e4f5a"
