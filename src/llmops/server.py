"""Run the app under uvicorn with a graceful drain: the first SIGTERM (or SIGINT) starts draining
(/ready 503, new requests 503, admitted requests finish, up to shutdown.drain_timeout_s), then uvicorn
shuts down and the process exits 0. A second signal exits at once."""

from __future__ import annotations

import asyncio
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


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._drain_task: asyncio.Task[None] | None = None
        self._draining = False
        self._freezer: asyncio.Task[None] | None = None

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
            return
        self._draining = True
        log.info("signal %d: draining", sig)
        # a signal handler runs between two bytecodes of the loop's thread: hand the work to the loop
        asyncio.get_event_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self.app)
        finally:
            self.should_exit = True


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address without API keys, unless the operator says so."""
    if settings.host in LOOPBACK or settings.host.startswith("127.") or settings.insecure_no_auth:
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
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                          log_config=None, access_log=False, timeout_graceful_shutdown=5, lifespan="on",
                          proxy_headers=False, http=protocol_class(http), timeout_keep_alive=http.keep_alive_timeout_s,
                          h11_max_incomplete_event_size=http.max_header_bytes, limit_concurrency=http.limit_concurrency,
                          backlog=http.backlog)
