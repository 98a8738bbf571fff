"""One WebSocket connection, from the handshake to the close: :func:`serve_connection`.

A session reads frames and answers them in order; one task per connection (in the session's
task group) sends whatever waits in its :class:`~.outbox.Outbox`. The first frame must be
``hello``; after ``welcome`` any number of ``start``, ``stop``, ``set``, ``subscribe``,
``unsubscribe`` and ``ping`` follow, for any number of runs. A frame that cannot be read, a
request that cannot be served, a frame beyond the rate limit: each gets an ``error`` with its
code, and nothing else happens — the connection, its other runs and other connections go on.

The session closes the connection itself (after sending what waits) when ``hello`` is missing
or refused (1008), when its outbox overflows or a send takes longer than the send timeout
(``slow_consumer``, 1008), and when the server shuts down (1001). Whatever way it ends, its runs
go on: it only stops watching them.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, assert_never

import anyio
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from stepwatch.protocol import (
    SUBPROTOCOL,
    ClientMessage,
    Error,
    ErrorCode,
    FrameError,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Set,
    Start,
    Stop,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode_client,
    encode,
    peek,
)
from stepwatch.server.gate import TokenBucket
from stepwatch.server.outbox import Outbox, OutboxOverflow

if TYPE_CHECKING:
    from stepwatch.server.app import Service

__all__ = ["CAPABILITIES", "Session", "serve_connection"]

logger = logging.getLogger(__name__)

#: What a version-1 server of this kind can do (``welcome.capabilities``).
CAPABILITIES = ("previews", "resume", "steer", "early_stop")
#: Seconds a closing handshake, or the last error to a stuck client, may take.
CLOSE_TIMEOUT = 1.0
#: WebSocket close codes the session uses.
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY = 1000, 1001, 1008
#: What sending on a connection the client has closed raises.
GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)
#: Codes after which the session closes the connection.
CLOSING_CODES = frozenset(
    {ErrorCode.HELLO_REQUIRED, ErrorCode.UNAUTHORIZED, ErrorCode.UNSUPPORTED_VERSION}
)


class Phase(Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSING = "closing"


async def serve_connection(websocket: WebSocket) -> None:
    """The ``/ws`` endpoint: check the handshake, then run a :class:`Session` to its end."""
    service: Service = websocket.app.state.service
    verdict = service.gate.check_handshake(websocket.headers, websocket.scope["subprotocols"])
    if not verdict.refused and service.closing:
        await websocket.send_denial_response(
            PlainTextResponse("the server is shutting down", status_code=503)
        )
        return
    if verdict.refused:
        assert verdict.status is not None
        logger.info("refused a WebSocket handshake: %s", verdict.reason)
        await websocket.send_denial_response(
            PlainTextResponse(verdict.reason, status_code=verdict.status)
        )
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    await Session(websocket, service, authorized=verdict.authorized).run()


def _request_ids(message: ClientMessage) -> tuple[str | None, str | None]:
    """The ``request_id`` and ``run_id`` an error about ``message`` should carry."""
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


class Session:
    """One open connection: its phase, outbox, rate limit, and the requests it makes."""

    def __init__(self, websocket: WebSocket, service: Service, *, authorized: bool) -> None:
        self.websocket = websocket
        self.service = service
        self.limits = service.config.limits
        self.outbox = Outbox(self.limits.outbox_size)
        self.bucket = TokenBucket(self.limits.messages_per_second, self.limits.message_burst)
        self.authorized = authorized
        self.phase = Phase.AWAITING_HELLO
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self._scope = anyio.CancelScope()
        #: When the send in progress began (loop time); ``None`` between sends.
        self._send_started: float | None = None

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        self.service.add_session(self)
        try:
            async with anyio.create_task_group() as tasks:
                self._scope = tasks.cancel_scope
                tasks.start_soon(self._send_loop)
                await self._receive_loop()
                self.outbox.close()
        finally:
            self.service.remove_session(self)
            self.service.runs.detach(self.outbox)

    def close(self, code: int, reason: str) -> None:
        """Read no more; send what waits, then close the connection with ``code``."""
        if self.phase is not Phase.CLOSING:
            self.phase = Phase.CLOSING
            self.close_code, self.close_reason = code, reason
        self.outbox.close()

    def _refuse(
        self, exc: ProtocolError, request_id: str | None = None, *, closing: bool = False
    ) -> None:
        self.outbox.reply(Error.from_exception(exc, request_id=request_id))
        if closing or exc.code in CLOSING_CODES:
            self.close(CLOSE_POLICY, exc.code.value)

    # -- receiving -----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while self.phase is not Phase.CLOSING:
            timeout = self.limits.hello_timeout if self.phase is Phase.AWAITING_HELLO else None
            message = None
            with anyio.move_on_after(timeout):
                message = await self.websocket.receive()
            if message is None:
                self._refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, "no hello in time"))
            elif message["type"] == "websocket.disconnect":
                return
            else:
                data = message.get("bytes")
                await self._on_frame(data if data is not None else message.get("text", ""))

    async def _on_frame(self, data: bytes | str) -> None:
        if not self.bucket.take():
            limit = self.limits.messages_per_second
            message = f"more than {limit:g} frames a second; the frame was dropped"
            self.outbox.reply(Error(ErrorCode.RATE_LIMITED, message))
            return
        try:
            if len(data) > self.limits.max_frame_bytes:
                raise FrameError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"a frame of {len(data)} bytes exceeds this server's limit of "
                    f"{self.limits.max_frame_bytes}",
                )
            request = decode_client(data)
        except ProtocolError as exc:
            ids = peek(data)
            if self.phase is Phase.AWAITING_HELLO:
                # A malformed hello keeps the decoder's code and field; any other first
                # frame is told that hello comes first. Either way the connection closes.
                if ids.type != Hello.TYPE and exc.code is not ErrorCode.UNSUPPORTED_VERSION:
                    exc = ProtocolError(
                        ErrorCode.HELLO_REQUIRED, f"the first frame must be hello ({exc})"
                    )
                self._refuse(exc, closing=True)
            else:
                self._refuse(exc, ids.request_id)
            return
        if self.phase is Phase.AWAITING_HELLO:
            await self._on_first(request)
        else:
            await self._dispatch(request)

    async def _on_first(self, request: ClientMessage) -> None:
        if not isinstance(request, Hello):
            message = f"the first frame must be hello, not {request.TYPE}"
            self._refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, message))
            return
        if not self.authorized and not self.service.gate.token_ok(request.token):
            self._refuse(ProtocolError(ErrorCode.UNAUTHORIZED, "a valid API token is required"))
            return
        self.authorized = True
        self.phase = Phase.OPEN
        self.outbox.reply(self._welcome())
        for point in request.resume:
            try:
                await self.service.runs.subscribe(point.run_id, point.after_seq, self.outbox)
            except ProtocolError as exc:
                self.outbox.reply(Error.from_exception(exc, run_id=point.run_id))

    def _welcome(self) -> Welcome:
        catalog = self.service.catalog
        return Welcome(
            server=self.service.name,
            capabilities=CAPABILITIES,
            limits=self.limits.welcome_limits(),
            models=catalog.model_infos,
            verifiers=catalog.verifier_infos,
        )

    async def _dispatch(self, request: ClientMessage) -> None:
        runs = self.service.runs
        try:
            match request:
                case Hello():
                    raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "hello was already sent")
                case Start():
                    await self._start(request)
                case Stop():
                    await runs.stop(request, self.outbox)
                case Set():
                    await runs.set(request, self.outbox)
                case Subscribe(run_id=run_id, after_seq=after_seq):
                    await runs.subscribe(run_id, after_seq, self.outbox)
                case Unsubscribe(run_id=run_id):
                    runs.unsubscribe(run_id, self.outbox)
                    self.outbox.reply(Unsubscribed(run_id))
                case Ping(nonce=nonce):
                    self.outbox.reply(Pong(nonce))
                case _:
                    assert_never(request)
        except ProtocolError as exc:
            about_request, about_run = _request_ids(request)
            self.outbox.reply(Error.from_exception(exc, request_id=about_request, run_id=about_run))

    async def _start(self, request: Start) -> None:
        runs = self.service.runs
        if runs.unfinished_started_by(self.outbox) >= self.limits.max_runs_per_connection:
            raise ProtocolError(
                ErrorCode.TOO_MANY_RUNS,
                f"this connection already has {self.limits.max_runs_per_connection} "
                "unfinished runs",
            )
        resolved = self.service.catalog.resolve(request)
        await runs.start(resolved, request.request_id, self.outbox)

    # -- sending -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        stalled: Exception | None = None
        gone = False
        async with anyio.create_task_group() as sending:
            sending.start_soon(self._watch_sends, sending.cancel_scope)
            try:
                while (frame := await self.outbox.get()) is not None:
                    self._send_started = anyio.current_time()
                    await self.websocket.send({"type": "websocket.send", "bytes": frame})
                    self._send_started = None
            except OutboxOverflow as exc:
                stalled = exc
            except GONE:
                gone = True  # the client went away; nothing more can be sent
                self._send_started = None  # a failed send is no stalled one
            sending.cancel_scope.cancel()
        if self._send_started is not None:
            stalled = TimeoutError(f"a send took longer than {self.limits.send_timeout:g} s")
        if stalled is not None:
            await self._drop_slow_consumer(stalled)
        elif not gone:
            await self._close_socket(self.close_code, self.close_reason)
        self._scope.cancel()

    async def _watch_sends(self, sending: anyio.CancelScope) -> None:
        """Cancel ``sending`` when one send has waited longer than the send timeout.

        One watchdog per connection instead of a timeout around every send: a send costs no
        timer, which matters when one event goes to many watchers.
        """
        timeout = self.limits.send_timeout
        while True:
            await anyio.sleep(timeout / 4)
            started = self._send_started
            if started is not None and anyio.current_time() - started > timeout:
                sending.cancel()
                return

    async def _drop_slow_consumer(self, exc: Exception) -> None:
        logger.info("closing a connection that does not read its events: %s", exc)
        self.close(CLOSE_POLICY, ErrorCode.SLOW_CONSUMER.value)
        error = Error(
            ErrorCode.SLOW_CONSUMER,
            "events were not read in time; reconnect and resume from the last seq you saw",
        )
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self.websocket.send({"type": "websocket.send", "bytes": encode(error)})
            except GONE:
                return
        await self._close_socket(CLOSE_POLICY, ErrorCode.SLOW_CONSUMER.value)

    async def _close_socket(self, code: int, reason: str) -> None:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self.websocket.close(code, reason)
            except GONE:
                pass
