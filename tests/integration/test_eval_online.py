"""Online evaluation on a live server: a route A/B-tests two fake variants of different quality with a
shadow; every answer is scored in the background and llmops_eval_score moves apart per variant. A judge on
the server itself grades too, and a scorer whose endpoint fails is counted as an error, not a zero."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from openai import OpenAI

from tests.helpers import free_port, live_server, write_config


def scores(base: str) -> dict[tuple[str, str, str], float]:
    text = httpx.get(f"{base}/metrics").text
    found = re.findall(r'^llmops_eval_score\{route="(\w+)",scorer="([\w-]+)",variant="(\w+)"\} (\S+)$', text, re.M)
    return {(route, variant, scorer): float(value) for route, scorer, variant, value in found}


def errors(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(v) for v in re.findall(r'^llmops_eval_errors_total\{[^}]*\} (\S+)$', text, re.M))


def test_online_score_per_variant_moves(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "online.yaml", [
        {"name": "good", "engine": "fake", "options": {"reply": "The capital of France is Paris."}},
        {"name": "bad", "engine": "fake", "options": {"reply": "No idea, sorry."}},
        {"name": "candidate", "engine": "fake", "options": {"reply": "Paris"}},
        {"name": "judge", "engine": "fake", "options": {"reply": "Score: 10"}},
    ], routes=[{
        "name": "chat", "sticky": "none", "variants": [{"model": "good"}, {"model": "bad"}],
        "shadow": {"model": "candidate", "sample": 1.0},
        "online_eval": {"sample": 1.0, "window": 50, "scorers": [
            {"kind": "regex", "name": "mentions-paris", "pattern": "Paris"},
            {"kind": "judge", "model": "judge", "base_url": f"http://127.0.0.1:{port}/v1"},
            {"kind": "embedding", "name": "broken", "model": "good", "reference": "Paris",
             "base_url": "http://127.0.0.1:9/v1"},
        ]},
    }], state={"backend": "memory"}, cache={"enabled": False})
    with live_server(cfg, port=port) as base, OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0) as client:
        assert scores(base) == {}  # nothing scored before traffic
        served = set()
        for i in range(24):
            messages = [{"role": "user", "content": f"What is the capital of France? ({i})"}]
            if i % 2:
                raw = client.chat.completions.with_raw_response.create(model="chat", messages=messages)  # type: ignore[arg-type]
                served.add(raw.headers["x-llmops-variant"])
                assert raw.parse().choices[0].message.content
            else:
                stream = client.chat.completions.create(model="chat", messages=messages, stream=True)  # type: ignore[arg-type]
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert served == {"good", "bad"}
        deadline = time.monotonic() + 60
        wanted = {("chat", v, s) for v in ("good", "bad", "candidate") for s in ("mentions-paris", "judge")}
        while not wanted <= set(scores(base)) and time.monotonic() < deadline:
            time.sleep(0.2)
        got = scores(base)
        while errors(base) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert errors(base) >= 1  # the broken embedding endpoint: counted, never scored as zero
    assert got[("chat", "good", "mentions-paris")] == 1.0
    assert got[("chat", "bad", "mentions-paris")] == 0.0
    assert got[("chat", "candidate", "mentions-paris")] == 1.0  # the shadow is scored too
    assert got[("chat", "good", "judge")] == 1.0  # "Score: 10"
    assert ("chat", "good", "broken") not in got
