"""Fixtures of the attack suite (helpers in tests/security/attack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.attack import Attacked, HealthWatch, start_attacked


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    with start_attacked(tmp_path_factory.mktemp("attack")) as server:
        yield server


@pytest.fixture
def healthy(attacked: Attacked) -> Iterator[HealthWatch]:
    """The server stays healthy while the test's attack runs."""
    with HealthWatch(attacked.base) as watch:
        yield watch
