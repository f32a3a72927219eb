"""Run the app under uvicorn with a graceful drain: the first SIGTERM (or SIGINT) starts draining
(/ready 503, new requests 503, admitted requests finish, up to shutdown.drain_timeout_s), then uvicorn
shuts down and the process exits 0. A second signal exits at once.

uvicorn's housekeeping loop (`main_loop`: the Date header, the exit check) wakes ten times a second; here
twice (`TICK_S`), and at once when the server is to exit. A wake-up of an idle process costs far more
than its work (0.2-0.4 ms of CPU on a small VM: bench/results/thread-cpu-*.md): an idle server used
5 ms of CPU a second for it, taken from llama.cpp's decode threads on a busy one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from llmops.app import create_app, drain
from llmops.errors import ConfigError
from llmops.gil import set_switch_interval
from llmops.heap import freeze_loaded_heap
from llmops.http_protocol import protocol_class
from llmops.settings import Settings
from llmops.stores import build_state

log = logging.getLogger("llmops.server")


TICK_S = 0.5  # uvicorn's main_loop: 0.1
CUT_OFF_S = 1  # after a drain ran out of time, what uvicorn still waits for before it cancels the rest (5 s)
TICKS_PER_UVICORN_SECOND = 10  # on_tick's counter counts tenths: it refreshes the Date header when it divides by 10


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._drain_task: asyncio.Task[None] | None = None
        self._draining = False
        self._freezer: asyncio.Task[None] | None = None
        self._exit_now: asyncio.Event | None = None

    async def main_loop(self) -> None:
        """uvicorn's, ticking every TICK_S (the Date header still changes each second) and woken at once
        when the server is to exit."""
        self._exit_now = asyncio.Event()
        step = round(TICK_S * TICKS_PER_UVICORN_SECOND)
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + step) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_now.wait(), TICK_S)
            should_exit = await self.on_tick(counter)

    def _exit(self) -> None:
        self.should_exit = True
        if self._exit_now is not None:
            self._exit_now.set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.state.services.lifecycle.warming = True  # /ready waits for the freeze below
        await super().startup(sockets)
        self._freezer = asyncio.get_running_loop().create_task(self._freeze_when_loaded())

    async def _freeze_when_loaded(self) -> None:
        """Once the models have loaded, take the start-up heap out of the garbage collector's work (heap.py):
        one full collection (321 ms with torch, diffusers and llama.cpp loaded), before /ready says ready."""
        lifecycle = self.app.state.services.lifecycle
        try:
            await self.app.state.services.pool.loaded()
            freeze_loaded_heap()
        finally:
            lifecycle.warming = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # second signal: stop now
            super().handle_exit(sig, frame)
            asyncio.get_event_loop().call_soon_threadsafe(self._exit)
            return
        self._draining = True
        log.info("signal %d: draining", sig)
        # a signal handler runs between two bytecodes of the loop's thread: hand the work to the loop
        asyncio.get_event_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            if not await drain(self.app):  # its time ran out: what is left is cut off now (middleware/drain.py)
                self.config.timeout_graceful_shutdown = CUT_OFF_S
        finally:
            self._exit()


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address without API keys, unless the operator says so."""
    if not settings.exposed():
        return
    if asyncio.run(_key_count(settings)) == 0:
        raise ConfigError(f"refusing to serve {settings.host} with no API keys: anyone who can reach it could use "
                          "it. Create one (llmops keys create --name NAME) or pass --insecure-no-auth")


async def _key_count(settings: Settings) -> int:
    state = build_state(settings.state)
    try:
        return await state.keys.key_count()
    finally:
        await state.close()


def serve(settings: Settings) -> None:
    check_exposure(settings)
    set_switch_interval(settings.process.gil_switch_interval_ms)
    app = create_app(settings)
    DrainingServer(uvicorn_config(app, settings), app).run()


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn with llmops's logging and limits. proxy_headers off: uvicorn would otherwise rewrite the client
    address from X-Forwarded-For sent by 127.0.0.1; llmops decides itself whom to believe
    (rate_limits.trusted_proxies). log_config None and access_log off: uvicorn's loggers go through
    llmops's one structured stream (observability/logging.py), and llmops.access writes the access line."""
    http = settings.http
    protocol = protocol_class(http, settings.rate_limits.trusted_proxies)
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                          log_config=None, access_log=False, timeout_graceful_shutdown=5, lifespan="on",
                          proxy_headers=False, http=protocol, timeout_keep_alive=http.keep_alive_timeout_s,
                          h11_max_incomplete_event_size=http.max_header_bytes, limit_concurrency=http.limit_concurrency,
                          backlog=http.backlog)
