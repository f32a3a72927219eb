"""Baseline (a): the guide's design. Its LLMEngine.generate (transformers `generate`, sampling at the
request's temperature, top_p 0.9) behind its InferenceQueue, whose single worker runs one request at a
time, served by FastAPI. The guide's code as printed, with two changes so it runs at all: the worker is
started in the lifespan (the guide never starts `process_loop`), and the blocking `generate` runs in a
thread so the event loop can keep accepting requests. It does not stream: the whole answer is one
response, so time to first token equals end-to-end latency."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException

from bench.targets.hf_gemma import load

logger = logging.getLogger(__name__)


@dataclass
class InferenceRequest:
    request_id: str
    payload: dict[str, Any]
    future: asyncio.Future[Any]
    enqueued_at: float = field(default_factory=time.time)


class InferenceQueue:
    """The guide's queue, verbatim in behaviour: bounded, sequential, per-request timeout."""

    def __init__(self, max_size: int = 50, request_timeout: float = 120.0) -> None:
        self.queue: asyncio.Queue[InferenceRequest] = asyncio.Queue(maxsize=max_size)
        self.request_timeout = request_timeout
        self.active_requests: dict[str, InferenceRequest] = {}

    async def enqueue(self, request_id: str, payload: dict[str, Any]) -> Any:
        if self.queue.full():
            raise RuntimeError("Queue is full. Try again later.")
        future = asyncio.get_event_loop().create_future()
        req = InferenceRequest(request_id=request_id, payload=payload, future=future)
        self.active_requests[request_id] = req
        await self.queue.put(req)
        try:
            return await asyncio.wait_for(future, timeout=self.request_timeout)
        except TimeoutError:
            raise RuntimeError("Request timed out") from None
        finally:
            self.active_requests.pop(request_id, None)

    async def process_loop(self, handler_func: Any) -> None:
        while True:
            req = await self.queue.get()
            if req.future.done():
                continue
            try:
                req.future.set_result(await handler_func(req.payload))
            except Exception as e:
                req.future.set_exception(e)


def build(threads: int) -> FastAPI:
    tok, model = load(threads)
    queue = InferenceQueue()

    def generate(prompt: str, max_tokens: int, temperature: float) -> str:
        import torch

        inputs = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            outputs = model.generate(**inputs, max_new_tokens=max_tokens, temperature=temperature, do_sample=True,
                                     top_p=0.9, pad_token_id=tok.eos_token_id)
        return str(tok.decode(outputs[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))

    async def handler(payload: dict[str, Any]) -> str:
        return await asyncio.to_thread(generate, payload["prompt"], payload["max_tokens"], payload["temperature"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(queue.process_loop(handler))
        yield
        worker.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: dict[str, Any]) -> dict[str, Any]:
        payload = {"prompt": request["messages"][-1]["content"], "max_tokens": request.get("max_tokens", 512),
                   "temperature": request.get("temperature", 0.7) or 0.7}
        try:
            text = await queue.enqueue(uuid.uuid4().hex, payload)
        except RuntimeError as e:
            raise HTTPException(503, str(e)) from e
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    uvicorn.run(build(a.threads), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
