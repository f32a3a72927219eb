"""The benchmark says what failed: a run's failed requests are counted by kind in its result and listed under
the report, since their tokens are missing from its tokens/s."""

from __future__ import annotations

from bench.load import Sample, summarize
from bench.report import markdown


def test_failed_requests_are_counted_by_kind_and_listed_in_the_report() -> None:
    samples = [Sample(ok=True, status=200, ttft_s=0.1, e2e_s=1.0, tokens=64) for _ in range(3)]
    samples += [Sample(ok=False, status=-1, error="ReadTimeout: timed out"),
                Sample(ok=False, status=-1, error="ReadTimeout: timed out"),
                Sample(ok=False, status=200, error="error event after 3 chunks: {'code': 500}")]
    result = summarize("bare-llamacpp", 16, samples, 2.0)
    assert result.errors == 3
    assert result.tokens_per_s == 96.0  # the failed requests' tokens are not counted
    assert result.extra["error_kinds"] == {"ReadTimeout: timed out": 2, "error event after 3 chunks: {'code': 500}": 1}
    clean = summarize("llmops-llamacpp", 16, samples[:3], 2.0)
    assert "error_kinds" not in clean.extra
    text = markdown({"settings": {}, "machine": {}, "startup_s": {},
                     "results": [result.as_dict(), clean.as_dict()]})
    assert "- bare-llamacpp stream rep 0 conc 16: 2x ReadTimeout: timed out; 1x error event after 3 chunks" in text
    assert "llmops-llamacpp stream rep 0 conc 16:" not in text
