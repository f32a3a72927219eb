"""uvicorn's HTTP/1.1 protocols (h11 and httptools) with the limits they lack, the same on both:

- a request head (request line + headers) larger than `http.max_header_bytes` is refused with 431 and the
  connection closed, while it is being read (h11 bounds its buffer through its incomplete-event size and
  each parsed head is measured; httptools has no limit, so the bytes are counted in its callbacks);
- a connection must send a complete request head within `http.head_timeout_s` of its first byte (or of
  opening): an idle or half-sent connection is closed instead of holding a file descriptor forever;
- a request body that stops arriving for `http.body_idle_timeout_s` closes the connection, and so does one
  still not complete `http.body_timeout_s` after it began (a byte now and then would otherwise hold the
  connection for ever: with enough of them, no connection is left for anyone, probes included);
- above `http.max_connections` open connections, a new one is closed at once.

The number of headers (`http.max_headers`) is checked in middleware/body_limit.py, for both stacks: the
size limit above already bounds their memory. Keep-alive idle time and uvicorn's own concurrency limit
are uvicorn settings, passed by server.py."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmops.settings import HttpSettings

HEAD_TOO_LARGE = b"request header fields too large"


class _Guard:
    """Timers and connection counting shared by both protocols (mixed in before the uvicorn class)."""

    limits: HttpSettings
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None  # absolute, from the body's first bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.limits.max_connections:
            transport.close()
            return
        self._arm_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # between requests: a head is (being) sent
            self._arm_head()
        else:
            self._cancel("_head_timer")
            if cycle.more_body:
                self._cancel("_body_timer")
                self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s, self._timed_out)
                if self._body_deadline is None:
                    self._body_deadline = self.loop.call_later(self.limits.body_timeout_s, self._body_late)
            else:
                self._cancel("_body_timer")
                self._cancel("_body_deadline")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("_head_timer")
        self._cancel("_body_timer")
        self._cancel("_body_deadline")
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head(self) -> None:
        if self._head_timer is None:  # absolute from the first byte: dribbling bytes does not extend it
            self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._timed_out()

    def _body_late(self) -> None:
        self._body_deadline = None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._timed_out()

    def _timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _send_431(self) -> None:
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (len(HEAD_TOO_LARGE), HEAD_TOO_LARGE))
        self.transport.close()


class GuardedH11(_Guard, H11Protocol):
    _head_too_large = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parse = self.conn.next_event

        def next_event() -> Any:  # a head that arrived whole in one read is measured here
            event = parse()
            if isinstance(event, h11.Request) and _head_size(event) > self.limits.max_header_bytes:
                self._head_too_large = True
                raise h11.RemoteProtocolError("request head too large")
            return event

        self.conn.next_event = next_event  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        buffered = len(self.conn.trailing_data[0])
        if self._head_too_large or buffered > self.limits.max_header_bytes:  # h11's "receive buffer too long"
            self._send_431()
            return
        super().send_400_response(msg)


def _head_size(event: h11.Request) -> int:
    return len(event.method) + len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)


def _httptools_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpTools(_Guard, HttpToolsProtocol):
        _head_bytes = 0
        _head_too_large = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > self.limits.max_header_bytes:
                self._head_too_large = True
                raise ValueError("request head too large")  # httptools stops parsing: send_400_response

        def send_400_response(self, msg: str) -> None:
            if self._head_too_large:
                self._send_431()
                return
            super().send_400_response(msg)

    return GuardedHttpTools


def protocol_class(limits: HttpSettings) -> type[asyncio.Protocol]:
    """The HTTP protocol for `limits.implementation` (auto: httptools when installed, else h11)."""
    name = limits.implementation
    if name == "auto":
        name = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base = _httptools_class() if name == "httptools" else GuardedH11
    return type(base.__name__, (base,), {"limits": limits})
