"""What uvicorn's own settings leave open on a connection, closed here: :func:`protocols`.

uvicorn bounds much of what a client can make the server hold (idle keep-alive, the size of
headers it buffers, concurrent requests); :func:`~.serving.uvicorn_config` sets those. What it
does not bound, the two protocol classes made here do, for one server's :class:`ServiceLimits`:

- **Connections per client address** (``max_connections_per_client``): one more is closed at
  once, before anything is read, so one address cannot use up the process's open files.
- **Time to a complete request** (``request_timeout``): a connection that has not sent a whole
  request head that long after it opened (or after its last response) is closed. uvicorn waits
  for a half-sent request for ever, which is what a slowloris client counts on.
- **A socket whose close cannot be written**: when the app is done with a WebSocket, the
  transport is aborted if the connection is still open ``request_timeout`` seconds later.
  asyncio's ``close()`` waits for the peer to read everything buffered, so a peer that never
  reads would pin the socket and its megabytes of queued frames.
- **A send after the close**: a frame the app sends once the WebSocket layer has closed the
  connection itself (a frame over its size limit: 1009) raises uvicorn's disconnect error, as
  a send to a gone client does, not a ``RuntimeError``.
- **An upgrade request the WebSocket parser refuses** (a header line over 8 KiB) is answered
  400 at once, instead of never.

The WebSocket class also offers the app a :class:`~.wireframes.FrameWriter` for the connection
(:class:`SocketWriter`, under :data:`~.wireframes.FRAMES_EXTENSION` in the scope's
extensions): whole frames written to the transport in one write, without the ASGI send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from stepwatch.server.config import ServiceLimits
from stepwatch.server.wireframes import FRAMES_EXTENSION

__all__ = [
    "ClientSlots",
    "OncePerInterval",
    "SocketWriter",
    "WithoutQuery",
    "install_log_filters",
    "protocols",
]

logger = logging.getLogger(__name__)


class ClientSlots:
    """How many connections each client address holds, against a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: Counter[str] = Counter()

    def take(self, address: str) -> bool:
        """Hold one more connection for ``address``, unless it holds the cap already."""
        if self._held[address] >= self.cap:
            return False
        self._held[address] += 1
        return True

    def give_back(self, address: str) -> None:
        self._held[address] -= 1
        if self._held[address] <= 0:
            del self._held[address]


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return ""  # a Unix socket: every client shares one slot count


def _reset(transport: asyncio.Transport) -> None:
    """Close at once with a TCP reset: the kernel drops what waits to be sent. A plain close
    would leave the socket lingering (an orphan in FIN_WAIT1) as long as the peer's window
    stays shut."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class SocketWriter:
    """Whole WebSocket frames straight to one connection's transport (a
    :class:`~.wireframes.FrameWriter`).

    The frames bypass websockets' own framing, which is safe where it has nothing to add: the
    server masks nothing, no extension is negotiated (compression is off), and websockets
    itself writes only whole control frames (pong, close), each in one write as these are.
    """

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def can_write(self) -> bool:
        protocol = self._protocol
        return (
            protocol.writable.is_set()
            and protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.disconnected
            and not protocol.transport.is_closing()
            and protocol.conn.state is State.OPEN
            and not protocol.conn.extensions
        )

    def write(self, frame: bytes) -> None:
        self._protocol.transport.write(frame)

    async def send(self, frames: Sequence[bytes]) -> None:
        await self._protocol.writable.wait()
        if not self.can_write():
            raise ClientDisconnected()
        self.write(frames[0] if len(frames) == 1 else b"".join(frames))


def protocols(
    limits: ServiceLimits,
) -> tuple[type[H11Protocol], type[WebSocketsSansIOProtocol]]:
    """The HTTP and WebSocket protocol classes uvicorn should use for a server with ``limits``
    (they share one count of connections per client address)."""
    slots = ClientSlots(limits.max_connections_per_client)
    timeout = limits.request_timeout

    class GuardedWebSocket(WebSocketsSansIOProtocol):
        slot: str | None = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.handshake_initiated and self.conn.handshake_exc is not None:
                # The parser refused the request and wrote its answer (431, 414), which uvicorn
                # never sends: it sends responses only for requests it received.
                output = b"".join(self.conn.data_to_send())
                if not output:
                    self.conn.send_response(self.conn.reject(400, "invalid WebSocket request\n"))
                    output = b"".join(self.conn.data_to_send())
                self.transport.write(output)
                self.handshake_initiated = self.handshake_complete = self.close_sent = True
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.slot is not None:
                slots.give_back(self.slot)
                self.slot = None
            super().connection_lost(exc)

        def handle_connect(self, event: Request) -> None:
            super().handle_connect(event)
            if self.response.status_code == 101:  # the scope exists; the app has not run yet
                self.scope["extensions"][FRAMES_EXTENSION] = SocketWriter(self)  # type: ignore[assignment]

        async def send(self, message: ASGISendEvent) -> None:
            await self.writable.wait()
            after_close = self.close_sent and self.initial_response is None
            if after_close and message["type"] in ("websocket.send", "websocket.close"):
                raise ClientDisconnected()
            await super().send(message)

        async def run_asgi(self) -> None:
            try:
                await super().run_asgi()
            finally:
                self.loop.call_later(timeout, self._abort_if_open)

        def _abort_if_open(self) -> None:
            if not self.disconnected:
                _reset(self.transport)

    class GuardedHTTP(H11Protocol):
        slot: str | None = None
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            address = _address(transport)
            if not slots.take(address):
                _reset(transport)
                return
            self.slot = address
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.slot is not None:
                slots.give_back(self.slot)
                self.slot = None
            if self.transport is not None:
                super().connection_lost(exc)

        def handle_events(self) -> None:
            scope = self.scope
            super().handle_events()
            if self.scope is not scope:
                self._disarm()  # a whole request head arrived

        def handle_websocket_upgrade(self, event: Any) -> None:
            super().handle_websocket_upgrade(event)
            upgraded = self.transport.get_protocol()
            if isinstance(upgraded, GuardedWebSocket):  # the WebSocket gives the slot back
                upgraded.slot, self.slot = self.slot, None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection has as long

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(timeout, self._request_timed_out)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _request_timed_out(self) -> None:
            self.deadline = None
            if self.transport.get_protocol() is self:
                _reset(self.transport)

    return GuardedHTTP, GuardedWebSocket


class OncePerInterval(logging.Filter):
    """Let one record of a kind through per ``interval`` seconds, without its traceback.

    asyncio logs every failed ``accept()`` (``Too many open files``) with a traceback, hundreds
    a second while the process is out of files; once a minute says the same.
    """

    def __init__(
        self, message: str, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.message = message
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.message not in record.getMessage():
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return False
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args = None
        record.exc_info = None
        record.exc_text = None
        if self._suppressed:
            record.msg = f"{record.msg} ({self._suppressed} more since the last report)"
        self._last, self._suppressed = now, 0
        return True


class WithoutQuery(logging.Filter):
    """Leave the query string out of uvicorn's WebSocket lines (``"WebSocket /ws?..." 403``):
    a client that put its API token in the URL would otherwise have it written to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and '"WebSocket %s"' in record.msg:
            args = record.args
            if isinstance(args, tuple) and len(args) >= 2 and isinstance(args[1], str):
                record.args = (args[0], args[1].partition("?")[0], *args[2:])
        return True


def install_log_filters() -> None:
    """Put :class:`WithoutQuery` on uvicorn's log and :class:`OncePerInterval` on asyncio's
    ``accept()`` failures (once per process; serving again adds nothing)."""
    wanted: tuple[tuple[str, logging.Filter], ...] = (
        ("uvicorn.error", WithoutQuery()),
        ("asyncio", OncePerInterval("out of system resource")),
    )
    for name, log_filter in wanted:
        target = logging.getLogger(name)
        if not any(type(existing) is type(log_filter) for existing in target.filters):
            target.addFilter(log_filter)
