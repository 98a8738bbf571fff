"""Opening one stepwatch connection: the WebSocket handshake, ``hello`` and ``welcome``.

This is the only module that touches the ``websockets`` library's connection setup; every
failure it can raise is translated here into the client's own errors (see
:mod:`stepwatch.client.errors`). :class:`Backoff` says how long to wait between reconnection
attempts; the session (:mod:`stepwatch.client.session`) decides when to make them.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from stepwatch.protocol import (
    SUBPROTOCOL,
    ClientSession,
    Error,
    ProtocolError,
    Welcome,
    decode_server,
    limits,
)

from .errors import ConnectionFailed, ProtocolViolation, Refused

__all__ = ["DEFAULT_URL", "Backoff", "SessionSettings", "client_name", "open_connection"]

#: Where a local ``stepwatch serve`` listens by default.
DEFAULT_URL: Final = "ws://127.0.0.1:8765/ws"


def client_name() -> str:
    """This client's name and version for ``hello.client``, e.g. ``stepwatch-python/0.1.0``."""
    try:
        return f"stepwatch-python/{version('stepwatch')}"
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "stepwatch-python"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnection attempts: exponential, capped, with jitter.

    Attempt ``n`` (from 0) waits between half and all of ``min(cap, initial * factor**n)``
    seconds ("equal jitter"), so clients that lost the same server do not come back in step,
    and no attempt follows the previous one at once.
    """

    #: The longest first delay, in seconds.
    initial: float = 0.1
    #: How much the delay grows per attempt.
    factor: float = 2.0
    #: The longest delay, in seconds.
    cap: float = 5.0
    #: The source of jitter, a function returning a float in [0, 1); tests pass their own.
    random: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.cap < self.initial:
            raise ValueError("backoff needs initial > 0, factor >= 1 and cap >= initial")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (0 for the first reconnection)."""
        # The exponent is clamped so a long outage cannot overflow the float.
        ceiling = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return ceiling / 2 + self.random() * ceiling / 2


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How a session connects; see :func:`stepwatch.client.connect` for each field."""

    url: str = DEFAULT_URL
    token: str | None = None
    client: str = field(default_factory=client_name)
    reconnect_timeout: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    open_timeout: float = 10.0


async def open_connection(
    settings: SessionSettings, session: ClientSession
) -> tuple[ClientConnection, Welcome]:
    """Connect, say ``hello`` through ``session`` and return the connection and ``welcome``.

    The session (:class:`~stepwatch.protocol.ClientSession`) resumes every run it follows:
    the points that do not fit in ``hello`` go out as ``subscribe`` right after ``welcome``,
    and so do the ``stop`` and ``set`` it sends again. The server answers each resume point
    with ``subscribed`` and the events after it, which the caller then reads.

    Raises :class:`ConnectionFailed` when the server cannot be reached or does not complete the
    handshake in ``settings.open_timeout`` seconds, :class:`Refused` when it answers ``hello``
    with an error (``unauthorized``), :class:`ProtocolViolation` when it answers nonsense.
    """
    connection = await _handshake(settings)
    try:
        session.hello(settings.client, settings.token)
        for frame in session.data_to_send():
            await connection.send(frame)
        welcome = await _welcome(connection, settings, session)
        for frame in session.data_to_send():
            await connection.send(frame)
    except ConnectionClosed as exc:
        session.connection_lost()
        await connection.close()
        raise ConnectionFailed(f"{settings.url} closed the connection during hello") from exc
    except BaseException:
        session.connection_lost()
        await connection.close()
        raise
    return connection, welcome


async def _handshake(settings: SessionSettings) -> ClientConnection:
    where = settings.url
    try:
        connection = await websocket_connect(
            settings.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            max_size=limits.MAX_SERVER_FRAME_BYTES,
            open_timeout=settings.open_timeout,
            # Frames are msgpack around already-compressed PNG/WebP: deflate buys nothing.
            compression=None,
        )
    except InvalidURI as exc:
        raise ConnectionFailed(f"{where} is not a WebSocket URL (ws://HOST:PORT/ws)") from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = (exc.response.body or b"").decode(errors="replace").strip()[:200]
        detail = f": {body}" if body else ""
        message = f"{where} refused the WebSocket handshake (HTTP {status}){detail}"
        raise ConnectionFailed(message) from exc
    except InvalidHandshake as exc:
        raise ConnectionFailed(f"{where} failed the WebSocket handshake: {exc}") from exc
    except TimeoutError as exc:
        raise ConnectionFailed(f"{where} did not answer within {settings.open_timeout} s") from exc
    except OSError as exc:
        # asyncio words a refused connection as "Connect call failed (...)"; the errno says it.
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise ConnectionFailed(f"cannot reach {where}: {reason}") from exc
    if connection.subprotocol != SUBPROTOCOL:
        await connection.close()
        raise ConnectionFailed(f"{where} does not speak the {SUBPROTOCOL} subprotocol")
    return connection


async def _welcome(
    connection: ClientConnection, settings: SessionSettings, session: ClientSession
) -> Welcome:
    try:
        async with asyncio.timeout(settings.open_timeout):
            frame = await connection.recv()
    except TimeoutError as exc:
        raise ConnectionFailed(f"{settings.url} sent no welcome in time") from exc
    try:
        reply = decode_server(frame)
    except ProtocolError as exc:
        raise ProtocolViolation(f"the server answered hello with a bad frame: {exc}") from exc
    session.receive_message(reply)
    session.events_received()  # the welcome, which the caller gets back
    if isinstance(reply, Error):
        raise Refused.from_error(reply)
    if not isinstance(reply, Welcome):
        raise ProtocolViolation(f"the server answered hello with {reply.TYPE}, not welcome")
    return reply
