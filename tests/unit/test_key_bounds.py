"""A key's limits are bounded the same way wherever it is created. `llmops keys create` took any number:
--rpm 0 made every request with the key a 500 (ZeroDivisionError), --rpm -5 meant no limit, --budget nan or
-1 a permanent 429, --tpm 0 and --max-concurrent 0 a permanent 429. POST /admin/keys took
{"budget_usd": 1e309} (infinity), stored the key, then failed to answer it: a 500, the secret never shown.
Now the CLI refuses what the admin API's KeyCreate refuses (a usage error, exit status 2, naming the option,
before any store is opened), and KeyCreate refuses non-finite numbers with a 400 before anything is stored."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from llmops.api.admin import KeyCreate
from llmops.cli import _parser, main
from tests.unit.test_console import ADMIN, keyed_client

ATTACKS = [("--rpm", "0"), ("--rpm", "-5"), ("--budget", "nan"), ("--budget", "-1"), ("--budget", "inf"),
           ("--budget", "1e309"), ("--tpm", "0"), ("--max-concurrent", "0"), ("--name", "")]
# KeyCreate's field for each option of `keys create`, and values on both sides of every bound.
FIELDS = {"--rpm": "rpm", "--tpm": "tpm", "--max-concurrent": "max_concurrent", "--budget": "budget_usd"}
INTS = [-(2**63), -5, -1, 0, 1, 2, 60, 10**9, 2**63]
FLOATS = [-math.inf, -1e308, -1.0, -1e-9, -0.0, 0.0, 1e-9, 0.5, 1.0, 1e308, math.inf, math.nan]


@pytest.mark.parametrize(("option", "value"), ATTACKS)
def test_keys_create_refuses_out_of_bounds_values(option: str, value: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "keys.db"
    argv = ["keys", "create", "--store", str(store), "--name", "x", option, value]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err
    assert "Traceback" not in err
    assert not store.exists()  # refused before any store was opened


def test_keys_create_accepts_values_at_the_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keys", "create", "--store", str(tmp_path / "k.db"), "--name", "x" * 128, "--rpm", "1", "--tpm", "1",
            "--max-concurrent", "1", "--budget", "0", "--secret-only"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("sk-llmops-")


def model_accepts(field: str, value: Any) -> bool:
    try:
        KeyCreate(**{"name": "x", field: value})
    except ValidationError:
        return False
    return True


def cli_accepts(option: str, value: Any) -> bool:
    try:
        _parser().parse_args(["keys", "create", "--name", "x", option, repr(value) if isinstance(value, float)
                              else str(value)])
    except SystemExit:
        return False
    return True


@pytest.mark.parametrize("option", FIELDS)
def test_the_cli_and_the_admin_api_agree_on_every_bound(option: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    field = FIELDS[option]
    values: list[Any] = FLOATS if field == "budget_usd" else INTS
    disagree = [v for v in values if model_accepts(field, v) != cli_accepts(option, v)]
    assert disagree == [], f"{option} and KeyCreate.{field} disagree on {disagree}"
    names = ["", "x", "x" * 128, "x" * 129]
    assert [model_accepts("name", n) for n in names] == [cli_accepts("--name", n) for n in names]


@pytest.fixture
def admin() -> Iterator[TestClient]:
    yield from keyed_client()


@pytest.mark.parametrize("body", ['{"name": "inf", "budget_usd": 1e309}', '{"name": "ninf", "budget_usd": -1e309}',
                                  '{"name": "nan", "budget_usd": NaN}', '{"name": "inf", "budget_usd": Infinity}'])
def test_admin_refuses_non_finite_numbers_before_storing(admin: TestClient, body: str) -> None:
    headers = {"X-Admin-Key": ADMIN}
    before = admin.get("/admin/keys", headers=headers).json()["data"]
    r = admin.post("/admin/keys", content=body, headers={**headers, "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "budget_usd"
    assert "finite" in r.json()["error"]["message"]
    assert admin.get("/admin/keys", headers=headers).json()["data"] == before  # nothing stored
