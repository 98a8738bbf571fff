"""One session with a stepwatch server: start runs, watch runs, survive dropped connections.

:func:`connect` opens a :class:`Session`. One reader task per session reads every frame and
hands each run event to the handles of its run (:class:`~stepwatch.client.RunHandle`), each
reply to the call that waits for it (matched by ``request_id``, or by ``run_id`` for
``subscribe``). Calls on the session and its handles may run concurrently from any number of
tasks of one event loop.

The states::

    connect() ──► OPEN ──── connection drops ────► RECONNECTING ──── hello + resume ──┐
                   ▲                                    │                             │
                   └────────────────────────────────────┼─────────────────────────────┘
                                                        │ no success within reconnect_timeout,
                  close() / leaving ``async with``      │ or the server refuses the token
                   └──────────────► CLOSED ◄────────────┘

While RECONNECTING, calls wait. Reconnecting resumes every unfinished run from the last
``seq`` its handles received; handles drop anything at or below it, so an iterating caller
sees each event once. A ``stop`` or ``set`` whose acknowledgement the drop may have lost is
sent again (same ``request_id``) once the replay of its run is over and has not shown it.

Those rules live in the protocol's sans-I/O :class:`~stepwatch.protocol.ClientSession`; this
module is its I/O shell: it owns the connection, the reader task, the futures of the calls
that wait and the handles of the runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, Unpack, assert_never

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stepwatch.protocol import (
    Accepted,
    Adjusted,
    Answered,
    Applied,
    Check,
    ClientMessage,
    ClientSession,
    Duplicate,
    Error,
    ErrorCode,
    Finished,
    Lost,
    ModelInfo,
    Pong,
    Progress,
    ProtocolError,
    Request,
    ServerMessage,
    SessionEvent,
    Set,
    Start,
    Started,
    Stop,
    Subscribe,
    Subscribed,
    Unasked,
    VerifierInfo,
    Welcome,
    encode,
)

from .errors import ConnectionFailed, ConnectionLost, ProtocolViolation, Refused, StepwatchError
from .runs import Run, RunHandle, RunOptions
from .transport import DEFAULT_URL, Backoff, SessionSettings, client_name, open_connection
from .uploads import Upload, upload_image

__all__ = ["Session", "SessionState", "connect"]

logger = logging.getLogger("stepwatch.client")

T = TypeVar("T")


class SessionState(Enum):
    """Where a session is in its life (see the diagram in the module docstring)."""

    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@asynccontextmanager
async def connect(
    url: str = DEFAULT_URL,
    *,
    token: str | None = None,
    reconnect_timeout: float = 30.0,
    backoff: Backoff | None = None,
    open_timeout: float = 10.0,
    client: str | None = None,
) -> AsyncIterator[Session]:
    """Open a session with the server at ``url`` and close it when the block ends.

    ``token`` is the server's API token, when it requires one. If the connection drops, the
    session reconnects, waiting between attempts as ``backoff`` says, and gives up (raising
    :class:`~stepwatch.client.ConnectionLost` to every waiting call) when ``reconnect_timeout``
    seconds pass without success; 0 gives up at once. ``open_timeout`` bounds each attempt's
    handshake. ``client`` names this program in the server's logs.

    The first connection is not retried: an unreachable server raises
    :class:`~stepwatch.client.ConnectionFailed` at once, a refused token
    :class:`~stepwatch.client.Refused` with ``code`` ``ErrorCode.UNAUTHORIZED``. Runs outlive
    the session; leaving the block stops watching them, it does not stop them.
    """
    settings = SessionSettings(
        url=url,
        token=token,
        client=client or client_name(),
        reconnect_timeout=reconnect_timeout,
        backoff=backoff or Backoff(),
        open_timeout=open_timeout,
    )
    protocol = ClientSession()
    connection, welcome = await open_connection(settings, protocol)
    session = Session(settings, connection, welcome, protocol)
    try:
        yield session
    finally:
        await session.close()


class Session:
    """An open session: what the server offers, and the runs started or watched through it.

    Made by :func:`connect`; do not construct it yourself.
    """

    def __init__(
        self,
        settings: SessionSettings,
        connection: ClientConnection,
        welcome: Welcome,
        protocol: ClientSession,
    ) -> None:
        #: How this session connects.
        self.settings = settings
        #: How many times the session has reconnected after a drop.
        self.reconnects = 0
        self._welcome = welcome
        self._connection = connection
        self._protocol = protocol
        self._state = SessionState.OPEN
        self._opened = asyncio.Event()
        self._opened.set()
        self._error: StepwatchError | None = None
        self._request_numbers = itertools.count(1)
        self._runs: dict[str, list[RunHandle]] = {}
        # Handles of watch() calls whose subscription is not confirmed yet: they must not take
        # the live events this session may already receive of their run before the replay.
        self._joining: dict[str, list[RunHandle]] = {}
        self._starts: dict[str, asyncio.Future[Run]] = {}
        self._steers: dict[str, asyncio.Future[Applied]] = {}
        self._subscribes: dict[str, list[tuple[Subscribe, asyncio.Future[None]]]] = {}
        self._reader = asyncio.create_task(self._maintain(), name=f"stepwatch reader {id(self)}")

    # What the server offers.

    @property
    def welcome(self) -> Welcome:
        """The server's latest ``welcome`` (renewed on each reconnect)."""
        return self._welcome

    @property
    def server(self) -> str:
        """The server's name and version, e.g. ``stepwatch/0.1.0``."""
        return self._welcome.server

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        """The models ``generate(model=...)`` may name, with their defaults; the first is the
        default model."""
        return self._welcome.models

    @property
    def verifiers(self) -> tuple[VerifierInfo, ...]:
        """The verifiers ``generate(verifier=...)`` may name."""
        return self._welcome.verifiers

    @property
    def limits(self) -> dict[str, int]:
        """The limits in force, by name (``max_steps``, ``max_queue``, ...)."""
        return dict(self._welcome.limits)

    @property
    def capabilities(self) -> frozenset[str]:
        """The optional features the server has (``previews``, ``resume``, ``steer``, ...)."""
        return frozenset(self._welcome.capabilities)

    @property
    def state(self) -> SessionState:
        """Whether the session is open, reconnecting or closed."""
        return self._state

    # Requests.

    async def generate(self, prompt: str, **options: Unpack[RunOptions]) -> Run:
        """Start a run drawing ``prompt`` and return its handle once the server accepted it.

        ``options`` are the other fields of ``start`` (:class:`RunOptions`). The values are
        checked before sending, as the server would check them. Raises
        :class:`~stepwatch.client.Refused` for a bad request (``code`` ``INVALID_VALUE`` with
        the ``field``, ``UNKNOWN_MODEL``, ``UNKNOWN_VERIFIER``, ``INVALID_PROMPT``,
        ``QUEUE_FULL``, ...), :class:`~stepwatch.client.ConnectionLost` when the connection
        drops before the answer.
        """
        request_id = self.next_request_id()
        start = self._checked(lambda: Start(request_id=request_id, prompt=prompt, **options))
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._starts[request_id] = future
        await self._send(lambda: start)
        return await future

    async def upload(
        self, source: str | Path | bytes, *, content_type: str | None = None
    ) -> Upload:
        """Send an input image (a path or its bytes) to this session's server; name the
        returned :attr:`Upload.id` in :meth:`generate` as ``image``, ``mask`` or
        ``control_image``. See :func:`~stepwatch.client.upload_image`."""
        settings = self.settings
        return await upload_image(
            source, settings.url, token=settings.token, content_type=content_type
        )

    async def watch(self, run_id: str, after_seq: int = 0) -> RunHandle:
        """Watch any run the server knows, from the event after ``after_seq`` (0: all of it).

        Returns once the server confirmed the subscription; iterate the handle for the
        events. A finished run replays to its ``finished``. Raises
        :class:`~stepwatch.client.Refused` with ``ErrorCode.UNKNOWN_RUN`` for a run the
        server does not know.
        """
        self._checked(lambda: Subscribe(run_id=run_id, after_seq=after_seq))
        handle = RunHandle(run_id, after_seq=after_seq)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._joining.setdefault(run_id, []).append(handle)

        def subscribe() -> Subscribe:
            # The replay starts early enough for the handles that already follow the run.
            following = self._runs.get(run_id, []) + self._joining.get(run_id, [])
            wanted = min(other.last_seq for other in following)
            request = Subscribe(run_id, self._protocol.replay_from(run_id, wanted))
            self._subscribes.setdefault(run_id, []).append((request, waiter))
            return request

        await self._send(subscribe)
        await waiter
        return handle

    def next_request_id(self) -> str:
        """A ``request_id`` this session has not used."""
        return f"q{next(self._request_numbers)}"

    async def steer(self, request: Stop | Set) -> Applied:
        """Send ``stop`` or ``set`` and return the ``applied`` event that acknowledges it.

        :meth:`Run.stop <stepwatch.client.Run.stop>` and :meth:`Run.set
        <stepwatch.client.Run.set>` call this; use it directly to steer a run with a control
        token you got from elsewhere. A session that does not follow the run watches it first
        (from its start): after a reconnect, the run's replayed events are what tells the
        session whether a request in flight took effect or must be sent again.
        """
        self._checked(lambda: request)
        followed = request.run_id in self._runs or request.run_id in self._joining
        if not followed and not self._protocol.ended(request.run_id):
            await self.watch(request.run_id)
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._steers[request.request_id] = future
        await self._send(lambda: request)
        return await future

    async def close(self) -> None:
        """Close the session. Calls still waiting raise :class:`ConnectionFailed`."""
        if self._state is SessionState.CLOSED and self._reader.done():
            return
        self._state = SessionState.CLOSED
        self._reader.cancel()
        # wait() rather than await: a cancellation of close() itself must not be swallowed.
        await asyncio.wait([self._reader])
        await self._connection.close()
        self._end(ConnectionFailed("the session was closed"))

    def _checked(self, build: Callable[[], ClientMessage]) -> ClientMessage:
        message: ClientMessage | None = None
        try:
            message = build()
            encode(message)
            return message
        except ProtocolError as exc:
            request_id = getattr(message, "request_id", None)
            raise Refused.before_sending(exc, request_id) from exc

    async def _send(self, build: Callable[[], ClientMessage]) -> None:
        # The event may be cleared again between its wake-up and this task running: recheck.
        while not self._opened.is_set():
            await self._opened.wait()
        if self._error is not None:
            raise self._error
        self._protocol.send(build())
        with suppress(ConnectionClosed):
            # A frame lost with its connection is the reader's business: the protocol fails
            # or sends again what waits on that connection.
            await self._flush(self._connection)

    async def _flush(self, connection: ClientConnection) -> None:
        for frame in self._protocol.data_to_send():
            await connection.send(frame)

    # The reader.

    async def _maintain(self) -> None:
        try:
            while True:
                await self._read(self._connection)
                self._dropped()
                self._connection = await self._reconnect()
                self._reopened()
        except StepwatchError as exc:
            self._state = SessionState.CLOSED
            await self._connection.close()
            self._end(exc)
        except Exception as exc:  # a bug here must fail the callers, not leave them waiting
            logger.exception("the stepwatch session's reader failed")
            self._state = SessionState.CLOSED
            await self._connection.close()
            self._end(StepwatchError(f"the session's reader failed: {exc!r}"))

    async def _read(self, connection: ClientConnection) -> None:
        try:
            await self._flush(connection)
            async for frame in connection:
                try:
                    self._protocol.receive_data(frame)
                except ProtocolError as exc:
                    raise ProtocolViolation(f"the server sent a frame it may not: {exc}") from exc
                self._dispatch_all()
                await self._flush(connection)
        except ConnectionClosed:
            return

    def _dispatch_all(self) -> None:
        for event in self._protocol.events_received():
            self._dispatch(event)

    def _dispatch(self, event: SessionEvent) -> None:
        match event:
            case Started() | Progress() | Check() | Adjusted() | Applied() | Finished():
                self._on_event(event)
            case Duplicate(event=repeated):
                self._on_event(repeated)  # each handle counts what it drops
            case Answered(request=request, reply=reply):
                self._on_answer(request, reply)
            case Error():
                self._on_error(event)
            case Lost():
                self._on_lost(event.request)
            case Unasked(message=Accepted(request_id=request_id)):
                raise ProtocolViolation(f"the server accepted request {request_id} unasked")
            case Unasked(message=Subscribed(run_id=run_id)):
                raise ProtocolViolation(f"the server subscribed this session to {run_id}")
            case Unasked(message=message):
                raise ProtocolViolation(f"the server sent {message.TYPE} unasked")
            case Welcome() | Pong() | Subscribed():
                pass  # a resume point's subscribed: the replay that follows tells the rest
            case _:
                assert_never(event)

    def _on_event(self, event: Started | Progress | Check | Adjusted | Applied | Finished) -> None:
        for handle in self._runs.get(event.run_id, []):
            handle._deliver(event)
        if isinstance(event, Finished):
            self._runs.pop(event.run_id, None)

    def _on_answer(self, request: Request, reply: ServerMessage) -> None:
        match request, reply:
            case Start(), Accepted():
                run = Run(reply.run_id, reply.control_token, reply.queue_position, self)
                self._runs.setdefault(run.run_id, []).append(run)
                _settle(self._starts.pop(request.request_id, None), run)
            case Stop() | Set(), Applied():
                _settle(self._steers.pop(request.request_id, None), reply)
            case Start() | Stop() | Set(), Error():
                future = self._starts.pop(request.request_id, None)
                _fail(
                    future or self._steers.pop(request.request_id, None), Refused.from_error(reply)
                )
            case Subscribe(), Subscribed():
                self._runs.setdefault(request.run_id, []).extend(
                    self._joining.pop(request.run_id, [])
                )
                _settle(self._subscribed(request), None)
            case Subscribe(), Error():
                _fail(self._subscribed(request), Refused.from_error(reply))
            case _:  # this session sends no unsubscribe
                pass

    def _subscribed(self, request: Subscribe) -> asyncio.Future[None] | None:
        waiting = self._subscribes.get(request.run_id, [])
        for index, (sent, waiter) in enumerate(waiting):
            if sent is request:
                del waiting[index]
                return waiter
        return None

    def _on_error(self, error: Error) -> None:
        refusal = Refused.from_error(error)
        if error.request_id is not None:
            if error.code is not ErrorCode.RUN_FINISHED:
                # A request already acknowledged: a set the server applied in part (its
                # applied lists what changed) and refused in part. run_finished answers a
                # stop resent after a reconnect, which the replay had settled: nothing to say.
                logger.warning("stepwatch server %s: %s", self.settings.url, refusal)
            return
        if error.code is ErrorCode.UNKNOWN_RUN and error.run_id is not None:
            # A watch, or a resume point, of a run the server does not know (any more).
            for handle in self._joining.pop(error.run_id, []) + self._runs.pop(error.run_id, []):
                handle._fail(refusal)
            return
        logger.warning("stepwatch server %s reported %s", self.settings.url, refusal)

    def _on_lost(self, start: Start) -> None:
        message = (
            f"the connection to {self.settings.url} dropped before the server answered "
            "start; the run may exist, but this session cannot know its id"
        )
        _fail(self._starts.pop(start.request_id, None), ConnectionLost(message))

    # Losing and regaining the connection.

    def _dropped(self) -> None:
        self._state = SessionState.RECONNECTING
        self._opened.clear()
        self._protocol.connection_lost()
        self._dispatch_all()

    async def _reconnect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reconnect_timeout
        last_error: ConnectionFailed | None = None
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(self.settings.backoff.delay(attempt), remaining))
            logger.info("reconnecting to %s (attempt %d)", self.settings.url, attempt + 1)
            try:
                connection, self._welcome = await open_connection(self.settings, self._protocol)
            except ConnectionFailed as exc:
                last_error = exc
                continue
            return connection
        seconds = self.settings.reconnect_timeout
        cause = f": {last_error}" if last_error is not None else ""
        message = f"lost the connection to {self.settings.url} for {seconds:g} s{cause}"
        raise ConnectionLost(message) from last_error

    def _reopened(self) -> None:
        self.reconnects += 1
        self._state = SessionState.OPEN
        self._opened.set()

    def _end(self, error: StepwatchError) -> None:
        """Fail everything still waiting with ``error``; the session is over."""
        self._state = SessionState.CLOSED
        if self._error is None:
            self._error = error
        pending: list[asyncio.Future[Run] | asyncio.Future[Applied] | asyncio.Future[None]] = [
            *self._starts.values(),
            *self._steers.values(),
            *(waiter for waiting in self._subscribes.values() for _, waiter in waiting),
        ]
        for future in pending:
            _fail(future, self._error)
        for table in (self._runs, self._joining):
            for handles in table.values():
                for handle in handles:
                    handle._fail(self._error)
        self._starts.clear()
        self._steers.clear()
        self._subscribes.clear()
        self._runs.clear()
        self._joining.clear()
        self._opened.set()  # wake senders, who find the error


def _settle(future: asyncio.Future[T] | None, value: T) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)
