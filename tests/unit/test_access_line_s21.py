"""The access line's own path (observability/logging.py AccessLog) and the cheaper steps every line now
takes: the same line as structlog's processors would write, the once-a-second timestamp, pydantic-core's
JSON with json.dumps behind it, and redaction's memory of clean values forgetting them when a secret is
registered."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
import structlog

from llmops.observability import logging as logmod
from llmops.observability import redaction
from llmops.observability.logging import AccessLog, configure_logging, request_logger

FIELDS: dict[str, Any] = {"request_id": "0123456789abcdef", "method": "POST", "path": "/v1/chat/completions",
                          "route": "/v1/chat/completions", "status": 200, "latency_ms": 0.4, "model": "fake",
                          "cost_usd": 2.4e-05, "cache": None, "stream": False}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@contextlib.contextmanager
def logs(capfd: pytest.CaptureFixture[str], fmt: Literal["console", "json"],
         level: str = "info") -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning)
    try:
        configure_logging(level, fmt)
        capfd.readouterr()
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        warnings.showwarning = saved[2]
        logmod._handler = logmod._access = None


def _lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    return capfd.readouterr().err.splitlines()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_access_line_is_the_line_structlog_writes(capfd: pytest.CaptureFixture[str],
                                                     fmt: Literal["console", "json"]) -> None:
    """AccessLog skips structlog's dispatch, not its output: the same fields, order and format as a
    structlog logger named llmops.access writes through the configured processors (the time aside)."""
    with logs(capfd, fmt):
        request_logger().info("request", **FIELDS)
        structlog.get_logger("llmops.access").info("request", **FIELDS)
        ours, theirs = _lines(capfd)
    if fmt == "json":
        mine, reference = json.loads(ours), json.loads(theirs)
        assert STAMP.match(mine.pop("timestamp"))
        assert STAMP.match(reference.pop("timestamp"))
        assert list(mine.items()) == list(reference.items())
        assert mine["level"] == "info"
        assert mine["logger"] == "llmops.access"
        assert mine["cost_usd"] == 2.4e-05
    else:
        assert ours.split(" ", 1)[1] == theirs.split(" ", 1)[1]
        assert "[llmops.access] cache=None cost_usd=2.4e-05 latency_ms=0.4 method=POST" in ours


def test_the_access_line_is_redacted(capfd: pytest.CaptureFixture[str]) -> None:
    secret = "sk-llmops-" + "A1b2" * 8
    with logs(capfd, "json"):
        request_logger().info("request", **{**FIELDS, "path": f"/v1/x?api_key={secret}", "request_id": secret})
        line = json.loads(_lines(capfd)[0])
    assert secret not in json.dumps(line)
    assert line["request_id"] == "[REDACTED]"
    assert line["path"].startswith("/v1/x?api_key=")


def test_no_access_line_below_info(capfd: pytest.CaptureFixture[str]) -> None:
    with logs(capfd, "json", level="warning"):
        log = request_logger()
        assert not log.writes_info()
        log.info("request", **FIELDS)
        logging.getLogger().handlers[0].flush()
        assert _lines(capfd) == []


def test_before_logging_is_configured_the_line_goes_through_structlog() -> None:
    """An app a test builds without configure_logging: structlog's own configuration decides."""
    logmod._access = None
    seen: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: Any) -> Any:
        seen.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[keep], wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        log = AccessLog()
        assert log.writes_info()
        log.info("request", status=200)
    finally:
        structlog.reset_defaults()
    assert seen == [{"event": "request", "status": 200}]


def test_the_timestamp_is_utc_to_the_microsecond_and_follows_the_clock() -> None:
    stamp = logmod._Timestamp()
    before = time.time()
    first = stamp(None, "info", {})["timestamp"]
    after = time.time()
    assert STAMP.match(first)
    when = datetime.strptime(first, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 1e-6 <= when <= after + 1e-6
    later = stamp(None, "info", {})["timestamp"]
    assert later >= first


def test_the_timestamp_formats_a_new_second(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = logmod._Timestamp()
    monkeypatch.setattr(logmod.time, "time_ns", lambda: 1_800_000_000_000_001_999)
    assert stamp(None, "info", {})["timestamp"] == "2027-01-15T08:00:00.000001Z"
    monkeypatch.setattr(logmod.time, "time_ns", lambda: 1_800_000_001_500_000_000)
    assert stamp(None, "info", {})["timestamp"] == "2027-01-15T08:00:01.500000Z"


def test_json_lines_fall_back_to_json_dumps_for_what_pydantic_core_cannot_write() -> None:
    line = logmod._json_line({"event": "e", "text": "\ud800 lone", "n": float("nan")})
    assert json.loads(line) == {"event": "e", "text": "\ud800 lone", "n": pytest.approx(float("nan"), nan_ok=True)}
    assert json.loads(logmod._json_line({"event": "é", "x": 1.5})) == {"event": "é", "x": 1.5}


def test_a_value_remembered_clean_is_redacted_once_it_becomes_a_secret() -> None:
    """Redaction remembers which values need nothing; registering a secret forgets that."""
    value = "qz-a-plain-value-0123456789"
    assert redaction.redact_event(None, "info", {"event": "e", "v": value})["v"] == value
    assert value in redaction._clean_seen
    redaction.register_secret(value)
    try:
        assert redaction.redact_event(None, "info", {"event": "e", "v": value})["v"] == "[REDACTED]"
    finally:
        for form in {value, repr(value)[1:-1]}:
            redaction._secrets.pop(form.lower(), None)
        redaction._clean_seen.clear()


def test_the_memory_of_clean_values_is_bounded() -> None:
    redaction._clean_seen.clear()
    for i in range(redaction._CLEAN_SEEN_MAX + 10):
        redaction.redact_event(None, "info", {"event": f"id-{i}"})
    assert len(redaction._clean_seen) <= redaction._CLEAN_SEEN_MAX
    long = "x" * (redaction._CLEAN_SEEN_LONGEST + 1)
    redaction.redact_event(None, "info", {"event": long})
    assert long not in redaction._clean_seen
