"""One client address may hold at most `http.max_connections_per_client` connections (loopback and trusted
proxies exempt): a thousand half-sent heads from one client took every connection, probes' too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from llmops.http_protocol import protocol_class
from llmops.settings import HttpSettings


class _Transport(asyncio.Transport):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer, self.closed = peer, False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": (self.peer, 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request is sent")


@pytest.mark.parametrize("implementation", ["httptools", "h11"])
def test_one_address_holds_at_most_its_share_of_connections(implementation: str) -> None:
    async def run() -> None:
        settings = HttpSettings(implementation=implementation, max_connections_per_client=3)
        protocol = protocol_class(settings, trusted_proxies=["10.0.0.0/8"])
        config = Config(app=_app, log_config=None, log_level=None, access_log=False)  # leaves logging alone
        config.load()
        state = ServerState()

        def connect(peer: str) -> tuple[Any, _Transport]:
            proto, transport = protocol(config=config, server_state=state, app_state={}), _Transport(peer)
            proto.connection_made(transport)
            return proto, transport

        mine = [connect("203.0.113.5") for _ in range(3)]
        assert not any(t.closed for _, t in mine)
        assert connect("203.0.113.5")[1].closed  # the fourth from that address
        assert not connect("198.51.100.7")[1].closed  # another address has its own share
        assert not any(connect(peer)[1].closed for peer in ["127.0.0.1", "10.1.2.3"] * 4)  # exempt
        first, transport = mine[0]
        transport.close()
        first.connection_lost(None)
        assert not connect("203.0.113.5")[1].closed  # a place given back is taken again
        for proto in state.connections.copy():
            proto.connection_lost(None)

    asyncio.run(run())
