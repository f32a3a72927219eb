"""The load generator: N concurrent requests against an OpenAI-compatible server, timed per request (time
to first token, end to end) and in aggregate (output tokens/s). Modes:

    stream       streaming /v1/completions (the harness' historical default)
    chat-stream  streaming /v1/chat/completions
    json         non-streaming /v1/chat/completions (first token = whole answer)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class Sample:
    ok: bool
    status: int
    ttft_s: float | None = None
    e2e_s: float = 0.0
    tokens: int = 0
    error: str = ""  # what went wrong, for the result's error_kinds
    attempts: int = 1  # 2: sent again on a new connection (the server had closed the pooled one)
    first_wave: bool = False  # a worker's first request: sent with all the others at once to an idle server

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first one: the decode speed this request saw."""
        if self.ttft_s is None or self.tokens < 2 or self.e2e_s <= self.ttft_s:
            return None
        return (self.tokens - 1) / (self.e2e_s - self.ttft_s)


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int
    wall_s: float
    output_tokens: int
    tokens_per_s: float
    decode_tps_p50: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    errors: int
    rejections: int
    peak_rss_mb: float | None = None
    cpu_ms_per_token: float | None = None  # the server's CPU time (all its threads) per output token
    mode: str = "stream"
    repeat: int = 0  # which interleaved repeat (each target started fresh in each)
    extra: dict[str, Any] = field(default_factory=dict)
    # TTFT p50 of the first wave (every worker's first request, sent at once to an idle server) and of the
    # requests after it (each sent as another finishes: the steady state of `concurrency` streams)
    ttft_p50_first_wave_s: float | None = None
    ttft_p50_steady_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def count_tokens(text: str) -> int:
    """Output tokens of a non-streaming baseline that reports no usage, with Gemma's own tokenizer."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from bench.targets.hf_gemma import tokenizer

        _TOKENIZER = tokenizer()
    return len(_TOKENIZER(text, add_special_tokens=False)["input_ids"])


_TOKENIZER: Any = None


async def one_json_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    """A plain chat request (the guide's baselines do not stream): first token = whole answer. Tokens from
    the response's usage where the server reports it, else counted with Gemma's tokenizer."""
    start = time.perf_counter()
    r = await client.post(url, json=body)
    sample = Sample(ok=r.status_code == 200, status=r.status_code, e2e_s=time.perf_counter() - start)
    if not sample.ok:
        sample.error = f"HTTP {r.status_code}: {r.text[:120]}"
    else:
        data = r.json()
        sample.ttft_s = sample.e2e_s
        usage = data.get("usage") or {}
        sample.tokens = int(usage.get("completion_tokens") or 0) or count_tokens(
            data["choices"][0]["message"]["content"])
    return sample


def _has_text(event: dict[str, Any]) -> bool:
    """A completions chunk with text, or a chat chunk whose delta has content."""
    return any(c.get("text") or (c.get("delta") or {}).get("content") for c in event.get("choices", []))


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    sample = Sample(ok=False, status=0)
    chunks = 0
    async with client.stream("POST", url, json=body) as r:
        sample.status = r.status_code
        if r.status_code != 200:
            sample.error = f"HTTP {r.status_code}: {(await r.aread())[:120].decode(errors='replace')}"
            sample.e2e_s = time.perf_counter() - start
            return sample
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                sample.error = f"error event after {chunks} chunks: {str(event['error'])[:120]}"
                return sample
            if _has_text(event):
                chunks += 1
                if sample.ttft_s is None:
                    sample.ttft_s = time.perf_counter() - start
            if event.get("usage"):
                sample.tokens = int(event["usage"]["completion_tokens"])
    sample.ok = True
    sample.tokens = sample.tokens or chunks  # servers that send no usage: one chunk per token
    sample.e2e_s = time.perf_counter() - start
    return sample


async def _send_once_more_if_closed(send: Callable[[httpx.AsyncClient, str, dict[str, Any]], Awaitable[Sample]],
                                    client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    """One request; sent once more when the server had closed the pooled connection before answering
    (llama.cpp's own server closes a keep-alive connection after a few requests, and httpx does not resend
    a POST): a real client retries that, and counting it as a failure would drop the baseline's tokens."""
    for attempt in (1, 2):
        try:
            sample = await send(client, url, body)
            sample.attempts = attempt
            return sample
        except httpx.RemoteProtocolError as exc:
            if attempt == 2 or "without sending a response" not in str(exc):
                return Sample(ok=False, status=-1, error=f"{type(exc).__name__}: {str(exc)[:120]}")
        except httpx.HTTPError as exc:
            return Sample(ok=False, status=-1, error=f"{type(exc).__name__}: {str(exc)[:120]}")
    raise AssertionError("unreachable")


async def run_load(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int,
                   prompt: str, headers: dict[str, str] | None = None, timeout_s: float = 600,
                   mode: str = "stream", temperature: float | None = None) -> list[Sample]:
    """`temperature` overrides the mode's default (0 when streaming, the guide's 0.7 for json)."""
    if mode == "json":
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens, "temperature": 0.7}
        url, send = f"{base_url}/v1/chat/completions", one_json_request
    elif mode == "chat-stream":
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        url, send = f"{base_url}/v1/chat/completions", one_request
    else:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        url, send = f"{base_url}/v1/completions", one_request
    if temperature is not None:
        body["temperature"] = temperature
    todo = list(range(requests))
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout_s, headers=headers, limits=limits) as client:
        async def worker() -> None:
            first = True
            while todo:
                todo.pop()
                sample = await _send_once_more_if_closed(send, client, url, body)
                sample.first_wave, first = first, False
                samples.append(sample)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def summarize(target: str, concurrency: int, samples: list[Sample], wall_s: float) -> Result:
    ok = [s for s in samples if s.ok]
    tokens = sum(s.tokens for s in ok)
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    e2e = [s.e2e_s for s in ok]
    return Result(
        target=target, concurrency=concurrency, requests=len(samples), wall_s=round(wall_s, 3),
        output_tokens=tokens, tokens_per_s=round(tokens / wall_s, 2) if wall_s else 0.0,
        decode_tps_p50=pct([d for s in ok if (d := s.decode_tps) is not None], 50),
        ttft_p50_s=pct(ttft, 50), ttft_p99_s=pct(ttft, 99), e2e_p50_s=pct(e2e, 50), e2e_p99_s=pct(e2e, 99),
        ttft_p50_first_wave_s=pct([s.ttft_s for s in ok if s.ttft_s is not None and s.first_wave], 50),
        ttft_p50_steady_s=pct([s.ttft_s for s in ok if s.ttft_s is not None and not s.first_wave], 50),
        errors=sum(1 for s in samples if not s.ok and s.status not in (429, 503)),
        rejections=sum(1 for s in samples if s.status in (429, 503)),
        extra=_extra(samples))


def _extra(samples: list[Sample]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if any(s.error for s in samples):
        extra["error_kinds"] = dict(Counter(s.error for s in samples if s.error))
    if resent := sum(1 for s in samples if s.attempts > 1):
        extra["resent_on_closed_connection"] = resent
    return extra
