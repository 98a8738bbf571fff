"""The server's side of one connection, sans I/O: :class:`ServerSession`.

It keeps the rules of the connection's first frames and its end: ``hello`` first (anything
else, a ``hello`` the decoder refuses, a bad token or a version the server does not speak is
answered with an ``error`` and closes the connection, 1008), a second ``hello`` refused, and
every ``error`` about a request carrying its ``request_id`` and ``run_id``. What a request does
is the server's business; so are the socket, the rate limit and the outbox.
"""

from __future__ import annotations

from enum import Enum
from typing import assert_never

from . import limits
from .client_messages import ClientMessage, Hello, Ping, Set, Start, Stop, Subscribe, Unsubscribe
from .codec import decode_client, peek
from .errors import ErrorCode, FrameError, ProtocolError
from .server_messages import Error

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSING_CODES",
    "ServerSession",
    "ServerState",
    "request_ids",
]

#: WebSocket close codes the protocol uses: a normal end, a server going away, a refusal.
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY = 1000, 1001, 1008


class ServerState(Enum):
    """Where a :class:`ServerSession` is: waiting for ``hello``, open, or closing."""

    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSING = "closing"


#: Codes after which the server closes the connection.
CLOSING_CODES = frozenset(
    {ErrorCode.HELLO_REQUIRED, ErrorCode.UNAUTHORIZED, ErrorCode.UNSUPPORTED_VERSION}
)


def request_ids(message: ClientMessage) -> tuple[str | None, str | None]:
    """The ``request_id`` and ``run_id`` an error about ``message`` carries."""
    match message:
        case Start(request_id=request_id):
            return request_id, None
        case Stop(request_id=request_id, run_id=run_id) | Set(request_id=request_id, run_id=run_id):
            return request_id, run_id
        case Subscribe(run_id=run_id) | Unsubscribe(run_id=run_id):
            return None, run_id
        case Hello() | Ping():
            return None, None
        case _:
            assert_never(message)


class ServerSession:
    """The server's side of one connection: hello first, and the errors that close it.

    Call :meth:`receive_frame` for every frame; serve the request it returns, or send the
    ``error`` it returns and, when :attr:`state` is then ``CLOSING``, close the connection with
    :attr:`close_code` and :attr:`close_reason` once it is sent. After ``hello``, check its
    token and call :meth:`accept` (then send ``welcome``) or :meth:`refuse_token`.
    ``max_frame_bytes`` is the largest frame the server reads.
    """

    def __init__(self, *, max_frame_bytes: int = limits.MAX_CLIENT_FRAME_BYTES) -> None:
        self.state = ServerState.AWAITING_HELLO
        #: How the connection is to close (meaningful once :attr:`state` is ``CLOSING``).
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self._max_frame_bytes = max_frame_bytes

    def receive_frame(self, data: bytes | str) -> ClientMessage | Error:
        """The request ``data`` carries, or the ``error`` that answers it."""
        try:
            if len(data) > self._max_frame_bytes:
                raise FrameError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"a frame of {len(data)} bytes exceeds this server's limit of "
                    f"{self._max_frame_bytes}",
                )
            request = decode_client(data)
        except ProtocolError as exc:
            ids = peek(data)
            if self.state is not ServerState.AWAITING_HELLO:
                return self.refuse(exc, ids.request_id)
            # A malformed hello keeps the decoder's code and field; any other first frame is
            # told that hello comes first. Either way the connection closes.
            if ids.type != Hello.TYPE and exc.code is not ErrorCode.UNSUPPORTED_VERSION:
                exc = ProtocolError(
                    ErrorCode.HELLO_REQUIRED, f"the first frame must be hello ({exc})"
                )
            return self.refuse(exc, closing=True)
        if self.state is ServerState.AWAITING_HELLO and not isinstance(request, Hello):
            message = f"the first frame must be hello, not {request.TYPE}"
            return self.refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, message))
        if self.state is not ServerState.AWAITING_HELLO and isinstance(request, Hello):
            return self.refuse(
                ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "hello was already sent")
            )
        return request

    def hello_timed_out(self) -> Error:
        """The ``error`` for a connection that sent no ``hello`` in time (it closes)."""
        return self.refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, "no hello in time"))

    def refuse_token(self) -> Error:
        """The ``error`` for a ``hello`` without a valid API token (the connection closes)."""
        return self.refuse(ProtocolError(ErrorCode.UNAUTHORIZED, "a valid API token is required"))

    def accept(self) -> None:
        """The ``hello`` was good: the session is open (send ``welcome`` now)."""
        self.state = ServerState.OPEN

    def refuse(
        self, exc: ProtocolError, request_id: str | None = None, *, closing: bool = False
    ) -> Error:
        """The ``error`` that reports ``exc``; closing codes close the connection."""
        if closing or exc.code in CLOSING_CODES:
            self.close(CLOSE_POLICY, exc.code.value)
        return Error.from_exception(exc, request_id=request_id)

    def refuse_request(self, request: ClientMessage, exc: ProtocolError) -> Error:
        """The ``error`` that answers ``request``, with its ``request_id`` and ``run_id``."""
        about_request, about_run = request_ids(request)
        return Error.from_exception(exc, request_id=about_request, run_id=about_run)

    def close(self, code: int, reason: str) -> None:
        """Read no more; the connection closes with ``code`` (the first close wins)."""
        if self.state is not ServerState.CLOSING:
            self.state = ServerState.CLOSING
            self.close_code, self.close_reason = code, reason
