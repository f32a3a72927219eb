"""uvicorn's HTTP/1.1 protocols (h11 and httptools) with the limits they lack, the same on both:

- a request head (request line + headers) larger than `http.max_header_bytes` is refused with 431 and the
  connection closed, while it is being read (h11 bounds its buffer through its incomplete-event size and
  each parsed head is measured; httptools has no limit, so the bytes are counted in its callbacks);
- a connection must send a complete request head within `http.head_timeout_s` of its first byte (or of
  opening): an idle or half-sent connection is closed instead of holding a file descriptor forever;
- a request body that stops arriving for `http.body_idle_timeout_s` closes the connection, and so does one
  still not complete `http.body_timeout_s` after it began (a byte now and then would otherwise hold the
  connection for ever: with enough of them, no connection is left for anyone, probes included);
- above `http.max_connections` open connections, a new one is closed at once; and above
  `http.max_connections_per_client` from one address (loopback and trusted proxies exempt), that address's
  new one is (a thousand half-sent heads from one client otherwise took every connection for
  `head_timeout_s`, health probes' too, and it could start again at once).

The number of headers (`http.max_headers`) is checked in middleware/body_limit.py, for both stacks: the
size limit above already bounds their memory. Keep-alive idle time and uvicorn's own concurrency limit
are uvicorn settings, passed by server.py.

On httptools, each request's response goes out through `_Cycle.send`, uvicorn's own with two changes that
leave the bytes on the wire as they were:

- a response whose length is declared (`content-length`: every JSON answer, every error) is written in one
  `transport.write`, its head held until the first body message, instead of two writes (one system call
  and one TCP segment fewer; streams, chunked, write the head at once as before, so a client sees an SSE
  stream's headers before its first event);
- a chunked response's body messages before its last (a stream's events) are framed and written here, the
  same bytes as uvicorn's (`<size hex>\r\n<body>\r\n`, nothing for an empty one) in one write, without
  its checks of a message that is neither the start nor the end (one call fewer per streamed event); the
  last body, a HEAD request's, and any while writing is paused or the client gone take uvicorn's path;
- headers are validated as uvicorn validates them, for less: a header name once found valid is remembered
  (names are a small set: the app's and the server's own), each response's values are checked in one
  search over them joined (the patterns are single-character classes, so a search over the joined values
  finds exactly what one search a value finds), and the server's default headers (`date`, `server`) are
  checked and encoded once per list (uvicorn replaces the list when the date changes). Uvicorn spent 2 regular
  expression searches a header (16 for a gateway answer's 8) on this."""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import types
from collections.abc import Callable, Sequence
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmops.settings import HttpSettings

HEAD_TOO_LARGE = b"request header fields too large"
MAX_KNOWN_NAMES = 512  # valid response header names remembered (past it, each new one is checked every time)
SPECIAL_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class PerClient:
    """Open connections counted per client address, up to `limit` each; addresses in `exempt` (loopback,
    trusted proxies) and connections without one (a Unix socket) are not counted."""

    def __init__(self, limit: int, exempt: Sequence[str]) -> None:
        self.limit = limit
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in ("127.0.0.0/8", "::1/128", *exempt)]
        self.open: dict[str, int] = {}
        self._verdicts: dict[str, bool] = {}  # address -> exempt, for the addresses seen (bounded below)

    def enter(self, transport: asyncio.BaseTransport) -> tuple[bool, str | None]:
        """Whether the connection may stay, and the address it is counted under (give it back with `leave`;
        None: not counted)."""
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        if not isinstance(address, str) or self._exempt(address):
            return True, None
        count = self.open.get(address, 0)
        if count >= self.limit:
            return False, None
        self.open[address] = count + 1
        return True, address

    def leave(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)

    def _exempt(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
                verdict = any(ip in net for net in self.exempt)
            except ValueError:
                verdict = False
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict


class _Guard:
    """Timers and connection counting shared by both protocols (mixed in before the uvicorn class)."""

    limits: HttpSettings
    clients: PerClient | None = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any
    _client: str | None = None  # the address this connection is counted under
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None  # absolute, from the body's first bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.limits.max_connections:
            transport.close()
            return
        if self.clients is not None:
            allowed, self._client = self.clients.enter(transport)
            if not allowed:
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
        elif cycle.more_body:
            self._cancel("_head_timer")
            self._cancel("_body_timer")
            self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s, self._timed_out)
            if self._body_deadline is None:
                self._body_deadline = self.loop.call_later(self.limits.body_timeout_s, self._body_late)
        elif self._head_timer is not None or self._body_timer is not None or self._body_deadline is not None:
            self._cancel("_head_timer")  # (a whole request in one read, the usual case, has none to cancel)
            self._cancel("_body_timer")
            self._cancel("_body_deadline")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._client is not None and self.clients is not None:
            self.clients.leave(self._client)
            self._client = None
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


def _cycle_class() -> type[Any]:
    from uvicorn.protocols.http import httptools_impl as impl

    header_re, value_re, status_lines = impl.HEADER_RE, impl.HEADER_VALUE_RE, impl.STATUS_LINE
    names: dict[bytes, bytes] = {}  # header names found valid -> lower case
    defaults: list[Any] = [None, b""]  # the last default-headers list seen, and its lines encoded

    def valid_name(name: bytes) -> bytes:
        lower = names.get(name)
        if lower is None:
            if header_re.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            lower = name.lower()
            if len(names) < MAX_KNOWN_NAMES:
                names[name] = lower
        return lower

    def default_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
        if defaults[0] is not headers:
            lines = []
            for name, value in headers:
                if value_re.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                lines.append(b"%s: %s\r\n" % (valid_name(name), value))
            defaults[:] = [headers, b"".join(lines)]
        return defaults[1]  # type: ignore[no-any-return]

    class _Cycle(impl.RequestResponseCycle):
        """uvicorn's request-response cycle with the cheaper `send` of the module's docstring."""

        _held: bytes | None = None  # a declared-length response's head, written with its first body

        async def send(self, message: Any) -> None:
            held = self._held
            if held is not None:  # the head of a declared-length response, not written yet
                self._held = None
                if message["type"] == "http.response.body" and not self.disconnected and not self.flow.write_paused:
                    self._body(held, message)
                    return
                if not self.disconnected:
                    self.transport.write(held)
            elif self.chunked_encoding and message.get("more_body", False):  # a stream's event
                if (message["type"] == "http.response.body" and not self.response_complete and not self.disconnected
                        and not self.flow.write_paused and self.scope["method"] != "HEAD"):
                    body = message.get("body", b"")
                    if body:
                        self.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
                    return
            elif (not self.response_started and message["type"] == "http.response.start" and not self.access_log
                  and not self.disconnected and not self.flow.write_paused):
                self._start(message)
                return
            await super().send(message)  # uvicorn's own: the last body, its access line, flow control

        def _start(self, message: Any) -> None:
            self.response_started = True
            self.waiting_for_100_continue = False
            status = message["status"]
            content = [status_lines[status], default_lines(self.default_headers)]
            values, special = [], []
            for name, value in message.get("headers", ()):
                lower = valid_name(name)
                values.append(value)
                if lower in SPECIAL_HEADERS:
                    special.append((lower, value))
                content.extend((lower, b": ", value, b"\r\n"))
            if value_re.search(b"".join(values)):
                raise RuntimeError("Invalid HTTP header value.")
            closing = False
            for lower, value in special:  # as uvicorn reads them
                if lower == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif lower == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif lower == b"connection" and b"close" in [t.lower().strip() for t in value.split(b",")]:
                    self.keep_alive = False
                    closing = True
            if not self.keep_alive and not closing:
                content.append(b"connection: close\r\n")
            head_request = self.scope["method"] == "HEAD"
            if self.chunked_encoding is None and not head_request and status not in (204, 304):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            if self.chunked_encoding is False and not head_request:
                self._held = b"".join(content)  # written with the body: one write
            else:
                self.transport.write(b"".join(content))

        def _body(self, held: bytes, message: Any) -> None:
            """The first body message of a declared-length response, written with its head."""
            body = message.get("body", b"")
            if len(body) > self.expected_content_length:
                self.transport.write(held)  # as uvicorn: the head was out before the body's error
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self.transport.write(held + body)
            if not message.get("more_body", False):
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()

    return _Cycle


def _making_cycles(protocol: type[Any], cycle_class: type[Any]) -> Callable[..., None]:
    """uvicorn's `on_headers_complete`, the same code, making `cycle_class` cycles: its module's globals with
    `RequestResponseCycle` naming that class. (Setting a made cycle's `__class__` instead would cost more
    than it saves: the instance's attributes leave CPython's inline-values layout, and every access to
    them afterwards, uvicorn's included, takes the slow path.)"""
    from uvicorn.protocols.http import httptools_impl as impl

    original = protocol.on_headers_complete
    code = original.__code__
    if "RequestResponseCycle" not in code.co_names or code.co_freevars:  # not the code this was written for
        raise RuntimeError("uvicorn's on_headers_complete changed: review http_protocol._making_cycles")
    names = {**vars(impl), "RequestResponseCycle": cycle_class}
    return types.FunctionType(code, names, original.__name__, original.__defaults__)


def _httptools_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpTools(_Guard, HttpToolsProtocol):
        _head_bytes = 0
        _head_too_large = False
        on_headers_complete = _making_cycles(HttpToolsProtocol, _cycle_class())

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            if self._head_bytes > self.limits.max_header_bytes:
                self._too_large()
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:  # once per header: the count inlined
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self.limits.max_header_bytes:
                self._too_large()
            super().on_header(name, value)

        def _too_large(self) -> None:
            self._head_too_large = True
            raise ValueError("request head too large")  # httptools stops parsing: send_400_response

        def send_400_response(self, msg: str) -> None:
            if self._head_too_large:
                self._send_431()
                return
            super().send_400_response(msg)

    return GuardedHttpTools


def protocol_class(limits: HttpSettings, trusted_proxies: Sequence[str] = ()) -> type[asyncio.Protocol]:
    """The HTTP protocol for `limits.implementation` (auto: httptools when installed, else h11), its
    connections counted per client address (but those of `trusted_proxies`) when limited."""
    name = limits.implementation
    if name == "auto":
        name = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base = _httptools_class() if name == "httptools" else GuardedH11
    per = limits.max_connections_per_client
    clients = PerClient(per, trusted_proxies) if per is not None else None
    return type(base.__name__, (base,), {"limits": limits, "clients": clients})
