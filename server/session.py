"""One WebSocket connection, from the handshake to the close: :func:`serve_connection`.

A session reads frames and answers them in order; one task per connection (in the session's
task group) sends whatever waits in its :class:`~.outbox.Outbox`. Where the server offers a
:class:`~.wireframes.FrameWriter` (uvicorn with this package's protocol class does) and
``limits.write_through`` is on, the outbox writes a frame straight to the socket when nothing
waits for it, and the task sends only what queued behind a busy socket, a batch per write.

The first frame must be ``hello``; after ``welcome`` any number of ``start``, ``stop``,
``set``, ``subscribe``, ``unsubscribe`` and ``ping`` follow, for any number of runs. A frame
that cannot be read, a request that cannot be served, a frame beyond the rate limit: each gets
an ``error`` with its code, and nothing else happens — the connection, its other runs and
other connections go on.

The session closes the connection itself (after sending what waits) when ``hello`` is missing
or refused (1008), when its outbox overflows or a send takes longer than the send timeout
(``slow_consumer``, 1008), and when the server shuts down (1001). Whatever way it ends, its runs
go on: it only stops watching them.

The protocol's rules for the connection (hello first, the errors that close it) are the
protocol's sans-I/O :class:`~stepwatch.protocol.ServerSession`; this module is its I/O shell.
A session gets the narrow :class:`SessionServices` it uses, not the whole service.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import assert_never

import anyio
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from stepwatch.protocol import (
    SUBPROTOCOL,
    ClientMessage,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    ServerSession,
    ServerState,
    Set,
    Start,
    Stop,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    encode,
    for_peer,
)
from stepwatch.protocol.server_session import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY
from stepwatch.server.catalog import Catalog
from stepwatch.server.config import ServiceLimits
from stepwatch.server.gate import Gate, TokenBucket
from stepwatch.server.outbox import Outbox, OutboxOverflow
from stepwatch.server.runs import RunManager
from stepwatch.server.uploads import UploadSource, load_inputs
from stepwatch.server.wireframes import FrameWriter, frame_writer

__all__ = [
    "CAPABILITIES",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "OpenSessions",
    "Session",
    "SessionServices",
    "serve_connection",
]

logger = logging.getLogger(__name__)

#: What a version-1 server of this kind can do (``welcome.capabilities``).
CAPABILITIES = ("previews", "resume", "steer", "early_stop", "search", "search_controls")
#: Seconds a closing handshake, or the last error to a stuck client, may take.
CLOSE_TIMEOUT = 1.0
#: What sending on a connection the client has closed raises.
GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)


class OpenSessions:
    """The sessions open now, and whether the server is closing (then it takes no new ones).

    The service owns one; each :class:`Session` adds itself when it starts and removes itself
    when it ends, whichever way.
    """

    def __init__(self) -> None:
        self._sessions: set[Session] = set()
        self._none = anyio.Event()
        self._none.set()
        self._closing = False

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions))

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def closing(self) -> bool:
        """Whether the server is shutting down."""
        return self._closing

    def add(self, session: Session) -> None:
        self._sessions.add(session)
        if self._none.is_set():
            self._none = anyio.Event()

    def remove(self, session: Session) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._none.set()

    def begin_closing(self) -> None:
        """The server shuts down: new connections are refused from now on."""
        self._closing = True

    def close_all(self, reason: str) -> None:
        """Close every session (1001, ``reason``) once it has sent what waits."""
        for session in self:
            session.close(CLOSE_GOING_AWAY, reason)

    async def wait_closed(self) -> None:
        """Return when no session is open."""
        await self._none.wait()


@dataclass(frozen=True, slots=True)
class SessionServices:
    """What a WebSocket session uses of the service, and nothing more."""

    #: ``welcome.server``.
    name: str
    gate: Gate
    catalog: Catalog
    runs: RunManager
    limits: ServiceLimits
    sessions: OpenSessions
    #: Where the input images a ``start`` names are read from.
    uploads: UploadSource


async def serve_connection(websocket: WebSocket) -> None:
    """The ``/ws`` endpoint: check the handshake, then run a :class:`Session` to its end."""
    services: SessionServices = websocket.app.state.session_services
    verdict = services.gate.check_handshake(websocket.headers, websocket.scope["subprotocols"])
    if not verdict.refused and services.sessions.closing:
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
    await Session(websocket, services, authorized=verdict.authorized).run()


class Session:
    """One open connection: its protocol state, outbox, rate limit, and the requests it makes."""

    def __init__(
        self, websocket: WebSocket, services: SessionServices, *, authorized: bool
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.limits = services.limits
        self.outbox = Outbox(self.limits.outbox_size, self.limits.send_batch_bytes)
        #: The server's direct writer for this connection; ``None``: frames go by ASGI sends.
        self.writer: FrameWriter | None = None
        if self.limits.write_through:
            self.writer = frame_writer(websocket.scope)
        if self.writer is not None:
            self.outbox.attach(self.writer)
        self.bucket = TokenBucket(self.limits.messages_per_second, self.limits.message_burst)
        self.authorized = authorized
        self.protocol = ServerSession(max_frame_bytes=self.limits.max_frame_bytes)
        self._scope = anyio.CancelScope()
        #: When the send in progress began (loop time); ``None`` between sends.
        self._send_started: float | None = None

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        self.services.sessions.add(self)
        try:
            async with anyio.create_task_group() as tasks:
                self._scope = tasks.cancel_scope
                tasks.start_soon(self._send_loop)
                await self._receive_loop()
                self.outbox.close()
        finally:
            self.services.sessions.remove(self)
            self.services.runs.watching.detach(self.outbox)

    def close(self, code: int, reason: str) -> None:
        """Read no more; send what waits, then close the connection with ``code``."""
        self.protocol.close(code, reason)
        self.outbox.close()

    def _reply(self, error: Error) -> None:
        """Send ``error``; close once it is out when it closes the connection."""
        self.outbox.reply(error)
        if self.protocol.state is ServerState.CLOSING:
            self.outbox.close()

    # -- receiving -----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while self.protocol.state is not ServerState.CLOSING:
            waiting = self.protocol.state is ServerState.AWAITING_HELLO
            timeout = self.limits.hello_timeout if waiting else None
            message = None
            with anyio.move_on_after(timeout):
                message = await self.websocket.receive()
            if message is None:
                self._reply(self.protocol.hello_timed_out())
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
        match self.protocol.receive_frame(data):
            case Error() as error:
                self._reply(error)
            case Hello() as hello:
                await self._on_hello(hello)
            case request:
                await self._dispatch(request)

    async def _on_hello(self, hello: Hello) -> None:
        if not self.authorized and not self.services.gate.token_ok(hello.token):
            self._reply(self.protocol.refuse_token())
            return
        self.authorized = True
        self.protocol.accept()
        # Added fields the client does not read stay out (a client older than them names none).
        self.outbox.reply(for_peer(self._welcome(), hello.features))
        self.outbox.features = frozenset(hello.features)  # and from its run events
        for point in hello.resume:
            try:
                await self.services.runs.watching.subscribe(
                    point.run_id, point.after_seq, self.outbox
                )
            except ProtocolError as exc:
                self.outbox.reply(Error.from_exception(exc, run_id=point.run_id))

    def _welcome(self) -> Welcome:
        catalog = self.services.catalog
        return Welcome(
            server=self.services.name,
            capabilities=CAPABILITIES,
            limits=self.limits.welcome_limits(),
            models=catalog.model_infos,
            verifiers=catalog.verifier_infos,
        )

    async def _dispatch(self, request: ClientMessage) -> None:
        runs = self.services.runs
        try:
            match request:
                case Hello():  # never here: the protocol answers a second hello itself
                    pass
                case Start():
                    await self._start(request)
                case Stop():
                    await runs.steering.stop(request, self.outbox)
                case Set():
                    await runs.steering.set(request, self.outbox)
                case Subscribe(run_id=run_id, after_seq=after_seq):
                    await runs.watching.subscribe(run_id, after_seq, self.outbox)
                case Unsubscribe(run_id=run_id):
                    runs.watching.unsubscribe(run_id, self.outbox)
                    self.outbox.reply(Unsubscribed(run_id))
                case Ping(nonce=nonce):
                    self.outbox.reply(Pong(nonce))
                case _:
                    assert_never(request)
        except ProtocolError as exc:
            self.outbox.reply(self.protocol.refuse_request(request, exc))

    async def _start(self, request: Start) -> None:
        runs = self.services.runs
        if runs.unfinished_started_by(self.outbox) >= self.limits.max_runs_per_connection:
            raise ProtocolError(
                ErrorCode.TOO_MANY_RUNS,
                f"this connection already has {self.limits.max_runs_per_connection} "
                "unfinished runs",
            )
        inputs = await load_inputs(self.services.uploads, request)
        resolved = self.services.catalog.resolve(request, inputs)
        await runs.start(resolved, request.request_id, self.outbox)

    # -- sending -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        stalled: Exception | None = None
        gone = False
        async with anyio.create_task_group() as sending:
            sending.start_soon(self._watch_sends, sending.cancel_scope)
            try:
                while frames := await self.outbox.take():
                    self._send_started = anyio.current_time()
                    await self._send(frames)
                    self._send_started = None
                    self.outbox.sent()
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
            await self._close_socket(self.protocol.close_code, self.protocol.close_reason)
        self._scope.cancel()

    async def _send(self, frames: Sequence[bytes]) -> None:
        """Send a batch the outbox gave: in one write through the server's writer, else one
        ASGI send per message."""
        if self.writer is not None:
            await self.writer.send(frames)
            return
        for frame in frames:
            await self.websocket.send({"type": "websocket.send", "bytes": frame})

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
