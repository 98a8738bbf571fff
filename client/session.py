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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar, Unpack, assert_never

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stepwatch.protocol import (
    Accepted,
    Adjusted,
    Applied,
    Check,
    ClientMessage,
    Error,
    ErrorCode,
    Finished,
    ModelInfo,
    Pong,
    Progress,
    ProtocolError,
    ResumePoint,
    ServerMessage,
    Set,
    Start,
    Started,
    Stop,
    Subscribe,
    Subscribed,
    Unsubscribed,
    VerifierInfo,
    Welcome,
    decode_server,
    encode,
    limits,
)

from .errors import ConnectionFailed, ConnectionLost, ProtocolViolation, Refused, StepwatchError
from .runs import Run, RunHandle, RunOptions
from .transport import DEFAULT_URL, Backoff, SessionSettings, client_name, open_connection

__all__ = ["Session", "SessionState", "connect"]

logger = logging.getLogger("stepwatch.client")

T = TypeVar("T")


class SessionState(Enum):
    """Where a session is in its life (see the diagram in the module docstring)."""

    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(eq=False)
class _Pending(Generic[T]):
    """A request that waits for its answer, and the connection it went out on (0: not yet)."""

    future: asyncio.Future[T]
    run_id: str | None = None
    frame: bytes = b""
    generation: int = 0


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
    connection, welcome = await open_connection(settings)
    session = Session(settings, connection, welcome)
    try:
        yield session
    finally:
        await session.close()


class Session:
    """An open session: what the server offers, and the runs started or watched through it.

    Made by :func:`connect`; do not construct it yourself.
    """

    def __init__(
        self, settings: SessionSettings, connection: ClientConnection, welcome: Welcome
    ) -> None:
        #: How this session connects.
        self.settings = settings
        #: How many times the session has reconnected after a drop.
        self.reconnects = 0
        self._welcome = welcome
        self._connection = connection
        self._generation = 1
        self._state = SessionState.OPEN
        self._opened = asyncio.Event()
        self._opened.set()
        self._error: StepwatchError | None = None
        self._request_numbers = itertools.count(1)
        self._runs: dict[str, list[RunHandle]] = {}
        # Handles of watch() calls whose subscription is not confirmed yet: they must not take
        # the live events this session may already receive of their run before the replay.
        self._joining: dict[str, list[RunHandle]] = {}
        self._starts: dict[str, _Pending[Run]] = {}
        self._steers: dict[str, _Pending[Applied]] = {}
        self._subscribes: dict[str, list[asyncio.Future[None]]] = {}
        self._replay_until: dict[str, int] = {}
        # Runs whose finished this session saw: steering them needs no watch (it is refused).
        self._ended: set[str] = set()
        self._resend: list[_Pending[Applied]] = []
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
        frame = self._encode(lambda: Start(request_id=request_id, prompt=prompt, **options))
        pending: _Pending[Run] = _Pending(asyncio.get_running_loop().create_future())
        self._starts[request_id] = pending
        await self._send(frame, pending)
        return await pending.future

    async def watch(self, run_id: str, after_seq: int = 0) -> RunHandle:
        """Watch any run the server knows, from the event after ``after_seq`` (0: all of it).

        Returns once the server confirmed the subscription; iterate the handle for the
        events. A finished run replays to its ``finished``. Raises
        :class:`~stepwatch.client.Refused` with ``ErrorCode.UNKNOWN_RUN`` for a run the
        server does not know.
        """
        self._encode(lambda: Subscribe(run_id=run_id, after_seq=after_seq))  # checks it
        # The server may drop what waits for this connection of a run it subscribes again, so
        # the replay starts early enough for the handles that already follow the run.
        following = self._runs.get(run_id, []) + self._joining.get(run_id, [])
        replay_from = min([after_seq, *(other.last_seq for other in following)])
        frame = self._encode(lambda: Subscribe(run_id=run_id, after_seq=replay_from))
        handle = RunHandle(run_id, after_seq=after_seq)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribes.setdefault(run_id, []).append(waiter)
        self._joining.setdefault(run_id, []).append(handle)
        await self._send(frame, None)
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
        frame = self._encode(lambda: request)
        followed = request.run_id in self._runs or request.run_id in self._joining
        if not followed and request.run_id not in self._ended:
            await self.watch(request.run_id)
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        pending = _Pending(future, run_id=request.run_id, frame=frame)
        self._steers[request.request_id] = pending
        await self._send(frame, pending)
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

    def _encode(self, build: Callable[[], ClientMessage]) -> bytes:
        message: ClientMessage | None = None
        try:
            message = build()
            return encode(message)
        except ProtocolError as exc:
            request_id = getattr(message, "request_id", None)
            raise Refused.before_sending(exc, request_id) from exc

    async def _send(self, frame: bytes, pending: _Pending[T] | None) -> None:
        # The event may be cleared again between its wake-up and this task running: recheck.
        while not self._opened.is_set():
            await self._opened.wait()
        if self._error is not None:
            raise self._error
        if pending is not None:
            pending.generation = self._generation
        with suppress(ConnectionClosed):
            # A frame lost with its connection is the reader's business: it fails or resends
            # what waits on that connection.
            await self._connection.send(frame)

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
            await self._flush_resends(connection)
            async for frame in connection:
                try:
                    message = decode_server(frame)
                except ProtocolError as exc:
                    raise ProtocolViolation(f"the server sent a frame it may not: {exc}") from exc
                self._dispatch(message)
                await self._flush_resends(connection)
        except ConnectionClosed:
            return

    async def _flush_resends(self, connection: ClientConnection) -> None:
        while self._resend:
            await connection.send(self._resend.pop(0).frame)

    def _dispatch(self, message: ServerMessage) -> None:
        match message:
            case Started() | Progress() | Check() | Adjusted() | Applied() | Finished():
                self._on_event(message)
            case Accepted():
                self._on_accepted(message)
            case Subscribed():
                self._on_subscribed(message)
            case Error():
                self._on_error(message)
            case Pong():
                pass
            case Welcome() | Unsubscribed():
                raise ProtocolViolation(f"the server sent {message.TYPE} unasked")
            case _:
                assert_never(message)

    def _on_event(self, event: Started | Progress | Check | Adjusted | Applied | Finished) -> None:
        handles = self._runs.get(event.run_id, [])
        for handle in handles:
            handle._deliver(event)
        if isinstance(event, Applied):
            pending = self._steers.pop(event.request_id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(event)
        if isinstance(event, Finished):
            self._ended.add(event.run_id)
            self._runs.pop(event.run_id, None)
            self._replay_until.pop(event.run_id, None)
        self._replay_reached(event.run_id, event.seq)

    def _on_accepted(self, accepted: Accepted) -> None:
        pending = self._starts.pop(accepted.request_id, None)
        if pending is None:
            raise ProtocolViolation(f"the server accepted request {accepted.request_id} unasked")
        run = Run(accepted.run_id, accepted.control_token, accepted.queue_position, self)
        self._runs.setdefault(run.run_id, []).append(run)
        if not pending.future.done():
            pending.future.set_result(run)

    def _on_subscribed(self, subscribed: Subscribed) -> None:
        joining = self._joining.pop(subscribed.run_id, [])
        if joining:
            self._runs.setdefault(subscribed.run_id, []).extend(joining)
        if subscribed.run_id not in self._runs:
            raise ProtocolViolation(f"the server subscribed this session to {subscribed.run_id}")
        for waiter in self._subscribes.pop(subscribed.run_id, []):
            if not waiter.done():
                waiter.set_result(None)
        self._replay_until[subscribed.run_id] = subscribed.last_seq
        seen = max(handle.last_seq for handle in self._runs[subscribed.run_id])
        self._replay_reached(subscribed.run_id, seen)

    def _on_error(self, error: Error) -> None:
        refusal = Refused.from_error(error)
        if error.request_id is not None:
            pending = self._starts.pop(error.request_id, None) or self._steers.pop(
                error.request_id, None
            )
            if pending is not None and not pending.future.done():
                pending.future.set_exception(refusal)
            elif error.code is not ErrorCode.RUN_FINISHED:
                # A request already acknowledged: a set the server applied in part (its
                # applied lists what changed) and refused in part. run_finished answers a
                # stop resent after a reconnect, which the replay had settled: nothing to say.
                logger.warning("stepwatch server %s: %s", self.settings.url, refusal)
            return
        if error.code is ErrorCode.UNKNOWN_RUN and error.run_id is not None:
            # A watch, or a resume point, of a run the server does not know (any more).
            for waiter in self._subscribes.pop(error.run_id, []):
                if not waiter.done():
                    waiter.set_exception(refusal)
            for handle in self._joining.pop(error.run_id, []) + self._runs.pop(error.run_id, []):
                handle._fail(refusal)
            return
        logger.warning("stepwatch server %s reported %s", self.settings.url, refusal)

    def _replay_reached(self, run_id: str, seq: int) -> None:
        until = self._replay_until.get(run_id)
        if until is None or seq < until:
            return
        del self._replay_until[run_id]
        self._resend.extend(self._stale_steers(lambda pending: pending.run_id == run_id))

    def _stale_steers(self, select: Callable[[_Pending[Applied]], bool]) -> list[_Pending[Applied]]:
        stale = [
            pending
            for pending in self._steers.values()
            if 0 < pending.generation < self._generation and select(pending)
        ]
        for pending in stale:
            pending.generation = self._generation
        return stale

    # Losing and regaining the connection.

    def _dropped(self) -> None:
        self._state = SessionState.RECONNECTING
        self._opened.clear()
        self._replay_until.clear()
        lost = [rid for rid, p in self._starts.items() if p.generation == self._generation]
        for request_id in lost:
            pending = self._starts.pop(request_id)
            message = (
                f"the connection to {self.settings.url} dropped before the server answered "
                "start; the run may exist, but this session cannot know its id"
            )
            pending.future.set_exception(ConnectionLost(message))

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
                connection, self._welcome = await open_connection(
                    self.settings, self._resume_points(), self._max_resume()
                )
            except ConnectionFailed as exc:
                last_error = exc
                continue
            return connection
        seconds = self.settings.reconnect_timeout
        cause = f": {last_error}" if last_error is not None else ""
        message = f"lost the connection to {self.settings.url} for {seconds:g} s{cause}"
        raise ConnectionLost(message) from last_error

    def _reopened(self) -> None:
        self._generation += 1
        self.reconnects += 1
        self._state = SessionState.OPEN
        # Steering of runs that will not be replayed (they finished here) goes out again now.
        self._resend.extend(self._stale_steers(lambda pending: pending.run_id not in self._runs))
        self._opened.set()

    def _resume_points(self) -> list[ResumePoint]:
        following: dict[str, list[RunHandle]] = {}
        for table in (self._runs, self._joining):
            for run_id, handles in table.items():
                following.setdefault(run_id, []).extend(handles)
        return [
            ResumePoint(run_id, min(handle.last_seq for handle in handles))
            for run_id, handles in following.items()
            if handles
        ]

    def _max_resume(self) -> int:
        announced = self._welcome.limits.get("max_resume_runs", limits.MAX_RESUME_RUNS)
        return min(announced, limits.MAX_RESUME_RUNS)

    def _end(self, error: StepwatchError) -> None:
        """Fail everything still waiting with ``error``; the session is over."""
        self._state = SessionState.CLOSED
        if self._error is None:
            self._error = error
        pending: list[asyncio.Future[Run] | asyncio.Future[Applied] | asyncio.Future[None]] = [
            *(p.future for p in self._starts.values()),
            *(p.future for p in self._steers.values()),
            *(w for waiters in self._subscribes.values() for w in waiters),
        ]
        for future in pending:
            if not future.done():
                future.set_exception(self._error)
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
