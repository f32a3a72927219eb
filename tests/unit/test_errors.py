from __future__ import annotations

import pytest

from llmops import errors


@pytest.mark.parametrize(
    ("exc", "status", "etype"),
    [
        (errors.InvalidRequest("x", param="n"), 400, "invalid_request_error"),
        (errors.ContextLengthExceeded("x"), 400, "invalid_request_error"),
        (errors.ModelNotFound("x"), 404, "invalid_request_error"),
        (errors.PayloadTooLarge("x"), 413, "invalid_request_error"),
        (errors.ServiceUnavailable("x", retry_after=7), 503, "service_unavailable_error"),
        (errors.EngineError("x"), 500, "server_error"),
    ],
)
def test_table(exc: errors.LLMOpsError, status: int, etype: str) -> None:
    got_status, body, _ = errors.error_response_parts(exc)
    assert got_status == status
    assert body["error"]["type"] == etype
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_codes_and_retry_after() -> None:
    assert errors.error_body(errors.ModelNotFound("x"))["error"]["code"] == "model_not_found"
    assert errors.error_body(errors.ContextLengthExceeded("x"))["error"]["code"] == "context_length_exceeded"
    assert errors.error_response_parts(errors.ServiceUnavailable("x", retry_after=7))[2] == {"Retry-After": "7"}


def test_internal_error_hides_details() -> None:
    exc = errors.internal_error(RuntimeError("secret path /etc/passwd"))
    assert "passwd" not in exc.message
    assert errors.kind_of(exc).status == 500


def test_missing_backend_names_the_extra_to_install() -> None:
    from llmops.engines.registry import require

    with pytest.raises(errors.EngineUnavailable, match=r"pip install 'llmops\[llamacpp\]'"):
        require("llmops_no_such_backend_module", "llamacpp")
