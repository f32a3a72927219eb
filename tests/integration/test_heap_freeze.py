"""`llmops serve` takes its start-up heap out of the garbage collector's work once the models have loaded
(heap.py), before /ready says ready: the log says how many objects it froze, after the model loaded, and the
server goes on answering. It also sets the configured GIL switch interval for its process (gil.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.helpers import eventually, live_server, write_config


def _line(log: Path, text: str) -> dict[str, object] | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and text in line:
            found: dict[str, object] = json.loads(line)
            return found
    return None


def test_server_freezes_the_loaded_heap_and_sets_the_gil_interval(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "heap.yaml", [{"name": "fake", "engine": "fake", "options": {"reply": "a b c"}}],
                       log_level="info", observability={"log_format": "json"}, cache={"enabled": False},
                       process={"gil_switch_interval_ms": 0.4})
    with live_server(cfg) as base:
        log = cfg.with_suffix(".log")
        # INFO lines are written in batches (observability.log_flush_ms), so they may follow /ready's 200
        assert eventually(lambda: _line(log, "froze the start-up heap") is not None), log.read_text()[-2000:]
        gil = _line(log, "GIL switch interval")
        assert gil is not None, log.read_text()[-2000:]
        assert gil["event"] == "GIL switch interval: 0.40 ms"
        froze = _line(log, "froze the start-up heap")  # /ready answers 200 only once the heap is frozen
        assert froze is not None, log.read_text()[-2000:]
        count = int(str(froze["event"]).split(": ")[1].split()[0])
        assert count > 10_000  # the modules, the app and the engine: the whole start-up heap
        text = log.read_text()
        assert text.index("loading model done") < text.index("froze the start-up heap")
        r = httpx.post(f"{base}/v1/chat/completions", json={
            "model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "a b"
