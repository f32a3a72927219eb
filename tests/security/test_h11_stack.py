"""The connection attacks again on the other HTTP stack (h11; the main suite runs on httptools when it is
installed): the limits are the project's, the same on both. This server logs JSON: every line of its log,
uvicorn's included, is one JSON object (one structured stream, no second access line)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.security.attack import Attacked, read_log, start_attacked
from tests.security.test_attacks import (  # noqa: F401 - collected here again, against this module's server
    test_a_500_keeps_the_keep_alive_connection,
    test_a_chunked_body_over_the_limit_is_413,
    test_a_huge_request_header_is_refused,
    test_idle_and_half_sent_connections_are_closed,
    test_random_methods_paths_and_models_do_not_grow_metrics,
    test_slow_connections_do_not_block_others,
    test_too_many_headers_are_refused,
)

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    env = {"LLMOPS_HTTP__IMPLEMENTATION": "h11", "LLMOPS_OBSERVABILITY__LOG_FORMAT": "json"}
    with start_attacked(tmp_path_factory.mktemp("h11"), env=env) as server:
        yield server


def test_every_log_line_is_one_json_object(attacked: Attacked) -> None:
    lines = [line for line in read_log(attacked).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any plain-text line
    loggers = {r.get("logger") for r in records}
    assert "uvicorn.error" in loggers
    assert "llmops.access" in loggers
    assert "uvicorn.access" not in loggers
    assert any(r["event"] == "loading model done" and "seconds" in r for r in records)
