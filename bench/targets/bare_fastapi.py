"""The floor under the gateway-overhead scenario: a bare FastAPI app on the same uvicorn (same loop and
HTTP implementations, uvicorn's defaults as llmops serve uses them) answering /v1/chat/completions with
the JSON llmops' fake engine gives: the reply's words as the answer, or as SSE chunks when streaming.

It logs at the level llmops is run at in the same bench (LLMOPS_LOG_LEVEL, warning when unset, as the
bench's llmops configuration says): at info, uvicorn's own access line for each request, as `uvicorn app:app`
writes it by default, so a comparison at info sets an access line against an access line."""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse


def build(reply: str) -> FastAPI:
    app = FastAPI()
    words = reply.split(" ")

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: dict[str, Any]) -> dict[str, Any] | StreamingResponse:
        chunk_id, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body["model"]
        n = min(len(words), int(body.get("max_tokens") or len(words)))
        usage = {"prompt_tokens": 2, "completion_tokens": n, "total_tokens": 2 + n}
        if body.get("stream"):
            return StreamingResponse(_events(chunk_id, created, model, words[:n], usage),
                                     media_type="text/event-stream")
        return {"id": chunk_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words[:n])},
                             "finish_reason": "stop", "logprobs": None}], "usage": usage, "system_fingerprint": None}

    return app


async def _events(chunk_id: str, created: int, model: str, words: list[str],
                  usage: dict[str, int]) -> AsyncIterator[bytes]:
    def event(delta: dict[str, Any], finish: str | None = None, use: dict[str, int] | None = None) -> bytes:
        choices = [] if use else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        data = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, "usage": use}
        return f"data: {json.dumps(data)}\n\n".encode()

    yield event({"role": "assistant", "content": ""})
    for i, word in enumerate(words):
        yield event({"role": None, "content": word if i == 0 else " " + word})
    yield event({"role": None, "content": None}, "stop")
    yield event({}, use=usage)
    yield b"data: [DONE]\n\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reply", default="ok")
    a = p.parse_args()
    level = os.environ.get("LLMOPS_LOG_LEVEL", "warning").lower()
    uvicorn.run(build(a.reply), host="127.0.0.1", port=a.port, log_level=level, access_log=level in ("debug", "info"),
                proxy_headers=False)


if __name__ == "__main__":
    main()
