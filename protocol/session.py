"""The client's session rules as a state machine, sans I/O: :class:`ClientSession`.

A :class:`ClientSession` is the client's side of one session, across any number of
connections: feed it every frame the server sends (:meth:`~ClientSession.receive_data`), tell
it when a connection opens (:meth:`~ClientSession.hello`) and when it drops
(:meth:`~ClientSession.connection_lost`), hand it every request you make
(:meth:`~ClientSession.send`); then take what to send (:meth:`~ClientSession.data_to_send`) and
what happened (:meth:`~ClientSession.events_received`). Call both right after any of those
methods. It keeps the rules every client follows:

- ``hello`` first; its resume points are the last ``seq`` seen of every run the session
  follows, at most ``MAX_RESUME_RUNS`` of them (or fewer, as the last ``welcome`` announced);
  the rest go out as ``subscribe`` once ``welcome`` is in;
- replies are matched to their requests: ``accepted``, ``applied`` and ``error`` by
  ``request_id``, ``subscribed``, ``unsubscribed`` and an ``unknown_run`` error by ``run_id``;
- each followed run's last ``seq`` is tracked, and an event at or below it (a replay after a
  reconnect repeating what arrived before the drop) is reported as a :class:`Duplicate`;
- a ``stop`` or ``set`` sent on a connection that dropped before its ``applied`` arrived is
  sent again, with the same ``request_id``, once its run's replay on the new connection is over
  and has not shown that ``applied`` (at once for a run no replay will come for).

The client's states::

    CONNECTING ── hello() ──► AWAITING_WELCOME ── welcome ──► OPEN
        ▲                             │                        │
        └──── hello() ──── CLOSED ◄───┴─── connection_lost() ──┘

The server's side of a connection is :class:`~.server_session.ServerSession`.

It opens no socket, starts no task and reads no clock: the Python client, the dashboard's
mirror of this module (``client/dashboard/src/session.js``), test clients and benchmarks drive
it over their own connections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias, assert_never

from . import limits
from .client_messages import (
    ClientMessage,
    Hello,
    Ping,
    ResumePoint,
    Set,
    Start,
    Stop,
    Subscribe,
    Unsubscribe,
)
from .codec import decode_server, encode
from .errors import ErrorCode
from .evolution import ADDED_SERVER_FIELDS
from .server_messages import (
    Accepted,
    Adjusted,
    Applied,
    Check,
    Error,
    Finished,
    Pong,
    Progress,
    RunEvent,
    ServerMessage,
    Started,
    Subscribed,
    Unsubscribed,
    Welcome,
)

__all__ = [
    "Answered",
    "ClientSession",
    "ClientState",
    "Duplicate",
    "Lost",
    "Request",
    "SessionEvent",
    "Unasked",
]

#: A request whose reply a session waits for.
Request: TypeAlias = Start | Stop | Set | Subscribe | Unsubscribe


@dataclass(frozen=True, slots=True)
class Answered:
    """The server answered ``request``, a request of this session, with ``reply``."""

    request: Request
    reply: Accepted | Applied | Subscribed | Unsubscribed | Error


@dataclass(frozen=True, slots=True)
class Duplicate:
    """``event`` is at or below the last ``seq`` seen of its run: it arrived before."""

    event: RunEvent


@dataclass(frozen=True, slots=True)
class Unasked:
    """The server sent ``message``, a reply or a ``welcome`` no request of this session waits
    for (a client that sends only through the session may take it as a protocol violation)."""

    message: Welcome | Accepted | Subscribed | Unsubscribed


@dataclass(frozen=True, slots=True)
class Lost:
    """The connection dropped before the server answered ``request``: the run may exist, but
    its id is unknown."""

    request: Start


#: What :meth:`ClientSession.events_received` returns: a ``welcome``, a new run event, an
#: ``error`` that answers no request, a ``pong``, the ``subscribed`` of a resume point, or one
#: of the session's own events.
SessionEvent: TypeAlias = (
    Welcome | RunEvent | Error | Pong | Subscribed | Answered | Duplicate | Unasked | Lost
)


class ClientState(Enum):
    """Where a :class:`ClientSession` is (see the diagram in the module docstring)."""

    CONNECTING = "connecting"
    AWAITING_WELCOME = "awaiting_welcome"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class _Followed:
    """A run the session receives the events of."""

    last_seq: int
    #: The ``last_seq`` of the replay in progress on this connection; ``None``: none is.
    replay_until: int | None = None


@dataclass(slots=True)
class _Steering:
    """A ``stop`` or ``set`` waiting for its ``applied``, and the connection it went out on."""

    request: Stop | Set
    frame: bytes
    connection: int


class ClientSession:
    """The client's side of a session (see the module docstring).

    ``resume_limit`` caps the resume points of one ``hello`` (the protocol's limit by default).
    """

    def __init__(self, *, resume_limit: int = limits.MAX_RESUME_RUNS) -> None:
        #: The server's latest ``welcome``; ``None`` before the first.
        self.welcome: Welcome | None = None
        #: How many connections the session has said ``hello`` on.
        self.connections = 0
        self._state = ClientState.CONNECTING
        self._resume_limit = resume_limit
        self._outgoing: list[bytes] = []
        self._events: list[SessionEvent] = []
        self._after_welcome: list[ResumePoint] = []
        self._followed: dict[str, _Followed] = {}
        self._ended: set[str] = set()
        self._starts: dict[str, tuple[Start, int]] = {}
        self._steers: dict[str, _Steering] = {}
        self._subscribes: dict[str, list[Subscribe]] = {}
        self._unsubscribes: dict[str, Unsubscribe] = {}

    # What the session knows.

    @property
    def state(self) -> ClientState:
        """Where the session is."""
        return self._state

    def follows(self, run_id: str) -> bool:
        """Whether the session receives the run's events, or has asked to."""
        return run_id in self._followed or run_id in self._subscribes

    def ended(self, run_id: str) -> bool:
        """Whether the session saw the run's ``finished`` (and does not watch it again)."""
        return run_id in self._ended

    def last_seq(self, run_id: str) -> int | None:
        """The highest ``seq`` seen of a followed run; ``None`` for a run it does not follow."""
        followed = self._followed.get(run_id)
        return None if followed is None else followed.last_seq

    def replay_from(self, run_id: str, after_seq: int) -> int:
        """The ``after_seq`` a new ``subscribe`` of ``run_id`` should carry for a watcher that
        wants the events after ``after_seq``.

        A server may drop what waits for this connection of a run it subscribes again, so the
        replay starts no later than what the session has seen or asked for already.
        """
        asked = [point.after_seq for point in self._subscribes.get(run_id, [])]
        seen = self.last_seq(run_id)
        return min([after_seq, *asked, *([] if seen is None else [seen])])

    @property
    def max_resume(self) -> int:
        """How many resume points the next ``hello`` carries at most."""
        if self.welcome is None:
            return self._resume_limit
        announced = self.welcome.limits.get("max_resume_runs", self._resume_limit)
        return min(announced, self._resume_limit)

    def resume_points(self) -> list[ResumePoint]:
        """Where each followed run resumes: after the lowest ``seq`` seen or asked for."""
        run_ids = [*self._followed, *(r for r in self._subscribes if r not in self._followed)]
        return [ResumePoint(run_id, self.replay_from(run_id, limits.MAX_INT)) for run_id in run_ids]

    # Driving it.

    def hello(
        self,
        client: str,
        token: str | None = None,
        resume: tuple[ResumePoint, ...] | None = None,
        features: tuple[str, ...] = tuple(sorted(ADDED_SERVER_FIELDS)),
    ) -> None:
        """Say ``hello`` on a connection that just opened.

        The resume points are the session's own (:meth:`resume_points`) unless ``resume``
        names them; those beyond :attr:`max_resume` go out as ``subscribe`` after ``welcome``.
        ``features`` are the added fields this client reads (see :mod:`.evolution`): all of this
        version's by default.
        Raises :class:`ProtocolError` for a ``hello`` the server would refuse.
        """
        points = self.resume_points() if resume is None else list(resume)
        limit = self.max_resume if resume is None else len(points)
        message = Hello(
            client=client,
            token=token,
            resume=tuple(points[:limit]),
            features=features,
        )
        frame = encode(message)
        self._state = ClientState.CONNECTING
        self._after_welcome = points[limit:]
        for point in points:
            self._followed.setdefault(point.run_id, _Followed(point.after_seq))
        self._begin(message, frame)

    def send(self, message: ClientMessage) -> None:
        """Send ``message``; its reply will come as :class:`Answered`.

        Raises :class:`ProtocolError`, with nothing sent or changed, for a message the server
        would refuse. The session sends whatever it is given in any state: the server judges
        (a test may well send ``ping`` before ``hello``).
        """
        self._begin(message, encode(message))

    def _begin(self, message: ClientMessage, frame: bytes) -> None:
        match message:
            case Hello():
                if self._state in (ClientState.CONNECTING, ClientState.CLOSED):
                    self._state = ClientState.AWAITING_WELCOME
                    self.connections += 1
            case Start(request_id=request_id):
                self._starts[request_id] = (message, self.connections)
            case Stop(request_id=request_id) | Set(request_id=request_id):
                self._steers[request_id] = _Steering(message, frame, self.connections)
            case Subscribe(run_id=run_id):
                self._subscribes.setdefault(run_id, []).append(message)
            case Unsubscribe(run_id=run_id):
                self._unsubscribes[run_id] = message
                self._followed.pop(run_id, None)
            case Ping():
                pass
            case _:
                assert_never(message)
        self._outgoing.append(frame)

    def receive_data(self, data: bytes | str) -> None:
        """Read one frame the server sent. Raises :class:`ProtocolError` for a frame the
        protocol refuses (the session is then unchanged)."""
        self.receive_message(decode_server(data))

    def receive_message(self, message: ServerMessage) -> None:
        """Take one message the server sent, already decoded."""
        match message:
            case Started() | Progress() | Check() | Adjusted() | Applied() | Finished():
                self._on_event(message)
            case Welcome():
                self._on_welcome(message)
            case Accepted():
                self._on_accepted(message)
            case Subscribed():
                self._on_subscribed(message)
            case Unsubscribed():
                request = self._unsubscribes.pop(message.run_id, None)
                self._events.append(
                    Unasked(message) if request is None else Answered(request, message)
                )
            case Error():
                self._on_error(message)
            case Pong():
                self._events.append(message)
            case _:
                assert_never(message)

    def connection_lost(self) -> None:
        """The connection dropped: frames not sent yet are dropped, a ``start`` it carried
        without an answer is :class:`Lost`, a ``stop`` or ``set`` waits to be sent again."""
        self._state = ClientState.CLOSED
        self._outgoing.clear()
        self._after_welcome = []
        self._unsubscribes.clear()
        for followed in self._followed.values():
            followed.replay_until = None
        for request_id, (start, connection) in list(self._starts.items()):
            if connection == self.connections:
                del self._starts[request_id]
                self._events.append(Lost(start))

    def data_to_send(self) -> list[bytes]:
        """The frames to send now, in order (each is returned once)."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def events_received(self) -> list[SessionEvent]:
        """What happened since the last call, in order (each is returned once)."""
        events, self._events = self._events, []
        return events

    # What a message does.

    def _on_welcome(self, welcome: Welcome) -> None:
        if self._state is not ClientState.AWAITING_WELCOME:
            self._events.append(Unasked(welcome))
            return
        self._state = ClientState.OPEN
        self.welcome = welcome
        self._events.append(welcome)
        for point in self._after_welcome:
            self.send(Subscribe(point.run_id, point.after_seq))
        self._after_welcome = []
        # Steering of runs no replay will come for (they finished here) goes out again now.
        self._resend(lambda run_id: run_id not in self._followed)

    def _on_event(self, event: RunEvent) -> None:
        followed = self._followed.get(event.run_id)
        if event.run_id in self._ended or (followed is not None and event.seq <= followed.last_seq):
            self._events.append(Duplicate(event))
        else:
            if followed is not None:
                followed.last_seq = event.seq
            self._events.append(event)
        if isinstance(event, Applied):
            steering = self._steers.pop(event.request_id, None)
            if steering is not None:
                self._events.append(Answered(steering.request, event))
        if isinstance(event, Finished):
            self._ended.add(event.run_id)
            self._followed.pop(event.run_id, None)
            self._resend(lambda run_id: run_id == event.run_id)
        elif followed is not None:
            self._replay_reached(event.run_id, followed)

    def _on_accepted(self, accepted: Accepted) -> None:
        found = self._starts.pop(accepted.request_id, None)
        if found is None:
            self._events.append(Unasked(accepted))
            return
        # The server subscribes the client that started a run.
        self._followed.setdefault(accepted.run_id, _Followed(0))
        self._events.append(Answered(found[0], accepted))

    def _on_subscribed(self, subscribed: Subscribed) -> None:
        run_id = subscribed.run_id
        asked = self._subscribes.pop(run_id, [])
        followed = self._followed.get(run_id)
        if followed is None and not asked:
            self._events.append(Unasked(subscribed))
            return
        floor = min([point.after_seq for point in asked] or [limits.MAX_INT])
        if followed is None:
            followed = self._followed[run_id] = _Followed(floor)
        # The replay comes from the lowest point asked; what it repeats is a duplicate.
        followed.last_seq = min(followed.last_seq, floor)
        followed.replay_until = subscribed.last_seq
        self._ended.discard(run_id)
        if asked:
            self._events.extend(Answered(request, subscribed) for request in asked)
        else:
            self._events.append(subscribed)  # a resume point's: the run's state now
        self._replay_reached(run_id, followed)

    def _on_error(self, error: Error) -> None:
        if error.request_id is not None:
            start = self._starts.pop(error.request_id, None)
            steering = self._steers.pop(error.request_id, None)
            if start is not None:
                self._events.append(Answered(start[0], error))
                return
            if steering is not None:
                self._events.append(Answered(steering.request, error))
                return
        elif error.code is ErrorCode.UNKNOWN_RUN and error.run_id is not None:
            # A watch, or a resume point, of a run the server does not know (any more).
            self._followed.pop(error.run_id, None)
            unsubscribe = self._unsubscribes.pop(error.run_id, None)
            asked: list[Request] = [*self._subscribes.pop(error.run_id, [])]
            if unsubscribe is not None:
                asked.append(unsubscribe)
            self._events.extend(Answered(request, error) for request in asked)
        self._events.append(error)

    def _replay_reached(self, run_id: str, followed: _Followed) -> None:
        if followed.replay_until is not None and followed.last_seq >= followed.replay_until:
            followed.replay_until = None
            self._resend(lambda other: other == run_id)

    def _resend(self, select: Callable[[str], bool]) -> None:
        for steering in self._steers.values():
            if steering.connection < self.connections and select(steering.request.run_id):
                steering.connection = self.connections
                self._outgoing.append(steering.frame)
