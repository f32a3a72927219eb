"""What the HTTP protocol's guards (src/llmops/http_protocol.py: the request head's size counted as it is
parsed, the head and body timers, the connection count) cost a request, apart from everything else: the
same request fed to uvicorn's plain httptools protocol and to llmops's guarded one, in one process, over one
keep-alive connection with an in-memory transport and an app that answers at once, interleaved. The CPU per
request is the process's (time.process_time), so the figure is the protocols' own work on the loop; the
difference is the guards'. The overhead bench (bench.overhead) measures the whole gateway over sockets,
where a difference this size is inside the noise.

    python -m bench.protocol_guard --out bench/results [--repeats 7] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.report import run_meta, save, spread

BODY = b'{"model":"fake","messages":[{"role":"user","content":"hello there"}],"max_tokens":1}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY  # the headers bench.overhead's client sends


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class _Transport(asyncio.Transport):
    """Takes what the protocol writes; resolves `answered` once the response's body is written."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: asyncio.Future[None] | None = None

    def write(self, data: Any) -> None:
        if self.answered is not None and not self.answered.done() and bytes(data).endswith(b"{}"):
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


async def cpu_per_request(protocol: Any, requests: int) -> float:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    config = Config(app=_app, log_level="warning", access_log=False)
    config.load()
    proto = protocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    proto.connection_made(transport)
    loop = asyncio.get_running_loop()
    started = time.process_time()
    for _ in range(requests):
        transport.answered = loop.create_future()
        proto.data_received(REQUEST)
        await transport.answered
    return (time.process_time() - started) / requests * 1e6


async def run(repeats: int, requests: int) -> list[dict[str, float]]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from llmops.http_protocol import protocol_class
    from llmops.settings import HttpSettings

    guarded = protocol_class(HttpSettings(implementation="httptools"))
    await cpu_per_request(HttpToolsProtocol, requests // 10)  # warm-up
    rows = []
    for _ in range(repeats):
        plain = await cpu_per_request(HttpToolsProtocol, requests)
        mine = await cpu_per_request(guarded, requests)
        rows.append({"plain_us": plain, "guarded_us": mine, "guards_us": mine - plain})
        print(rows[-1], flush=True)
    return rows


def report(rows: list[dict[str, float]], requests: int) -> str:
    meta = run_meta()
    lines = ["# What the HTTP protocol's guards cost a request", "",
             f"{len(rows)} interleaved repeats of {requests} requests over one keep-alive connection (in-memory "
             f"transport, an app that answers at once, uvloop); {meta['machine']}, "
             f"{meta['date']}. median [min-max] of the repeats.", "",
             "| protocol | CPU us/request |", "|---|---|",
             f"| uvicorn's httptools protocol | {spread([r['plain_us'] for r in rows], 1)} |",
             f"| llmops's guarded httptools protocol | {spread([r['guarded_us'] for r in rows], 1)} |",
             f"| the guards (difference within a repeat) | {spread([r['guards_us'] for r in rows], 1)} |", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="protocol-guard")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args()
    import uvloop

    rows = uvloop.run(run(args.repeats, args.requests))
    save(args.out, args.name, report(rows, args.requests),
         {"rows": rows, "guards_us_median": statistics.median(r["guards_us"] for r in rows), **run_meta()})


if __name__ == "__main__":
    main()
