"""Fuzzing: schemathesis generates requests from the server's own OpenAPI schema and sends them to a live
fake-engine server. Bounded (EXAMPLES per operation, a few hundred in all); it fails on any 5xx and on
any error response that is not the envelope the schema documents (api/openapi.py: OpenAI's; under /v2 the
Open Inference Protocol's)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.security.attack import Attacked, start_attacked

EXAMPLES = 20
DOCUMENTED = {400, 401, 403, 404, 405, 413, 429, 431, 503, 504}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    with start_attacked(tmp_path_factory.mktemp("fuzz")) as server:
        yield server


def check(response: Any, where: str) -> None:
    status = response.status_code
    assert status < 500, f"{where}: {status} {response.text[:300]}"
    if status >= 400:
        assert status in DOCUMENTED, f"{where}: undocumented {status}"
        body = response.json()
        assert set(body) == {"error"}, f"{where}: {body}"
        if " /v2" in where:  # the Open Inference Protocol's envelope
            assert isinstance(body["error"], str), f"{where}: {body}"
        else:
            assert {"message", "type", "param", "code"} == set(body["error"]), f"{where}: {body}"


def test_fuzz_every_operation(fuzzed: Attacked) -> None:
    document = httpx.get(f"{fuzzed.base}/openapi.json", headers=fuzzed.auth("other"), timeout=30).json()
    assert "422" not in str(document["paths"])
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    sent = [fuzz(fuzzed, operation) for operation in operations]
    assert sum(sent) >= 100


def fuzz(server: Attacked, operation: Any) -> int:
    """EXAMPLES generated requests to one operation; how many were sent."""
    where = f"{operation.method.upper()} {operation.path}"
    auth = server.admin if operation.path.startswith("/admin") else server.auth("other")
    sent = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def one(case: Any) -> None:
        nonlocal sent
        response = case.call(base_url=server.base, headers=auth, timeout=30)
        sent += 1
        check(response, where)

    one()
    return sent
