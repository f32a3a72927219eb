"""The benchmark says what failed: a run's failed requests are counted by kind in its result and listed under
the report, since their tokens are missing from its tokens/s."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bench.load import Sample, run_load, summarize
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


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (its body read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return head


async def answer(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def load_against(serve: Handler, concurrency: int, requests: int, max_tokens: int) -> list[Sample]:
    """`run_load` in JSON mode against `serve` on a loopback port; every connection's handler ended after."""
    handlers: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await serve(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await run_load(f"http://127.0.0.1:{port}", "m", concurrency, requests, max_tokens, "hi", mode="json")
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers), 10)  # the client closed its connections: each sees EOF


async def test_a_request_on_a_connection_the_server_closed_is_sent_once_more() -> None:
    body = b'{"choices":[{"message":{"content":"a b"}}],"usage":{"completion_tokens":2}}'
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))
        if len(heads) > 1:  # the first request's connection is closed unanswered, as llama.cpp's server does
            await answer(writer, body)
        writer.close()

    samples = await load_against(serve, 1, 1, 2)
    assert len(heads) == 2
    [sample] = samples
    assert (sample.ok, sample.tokens, sample.attempts) == (True, 2, 2)
    assert summarize("t", 1, samples, 1.0).extra == {"resent_on_closed_connection": 1}


def test_ttft_is_reported_for_the_first_wave_and_the_steady_state_apart() -> None:
    """The first wave (every worker's first request, sent at once) and the requests after it queue
    differently: the overall p50 of two waves falls between them, so each gets its own p50."""
    first = [Sample(ok=True, status=200, ttft_s=1.0 + i / 100, e2e_s=5.0, tokens=64, first_wave=True)
             for i in range(4)]
    steady = [Sample(ok=True, status=200, ttft_s=0.2 + i / 100, e2e_s=5.0, tokens=64) for i in range(8)]
    result = summarize("llmops-llamacpp", 4, first + steady, 10.0)
    assert result.ttft_p50_first_wave_s is not None
    assert 1.0 <= result.ttft_p50_first_wave_s <= 1.03
    assert result.ttft_p50_steady_s is not None
    assert 0.2 <= result.ttft_p50_steady_s <= 0.27


async def test_each_workers_first_request_is_marked_as_the_first_wave() -> None:
    body = b'{"choices":[{"message":{"content":"a"}}],"usage":{"completion_tokens":1}}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            await answer(writer, body)
        writer.close()

    samples = await load_against(serve, 3, 9, 1)
    assert len(samples) == 9
    assert all(s.ok for s in samples)
    assert sum(s.first_wave for s in samples) == 3
