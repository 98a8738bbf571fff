"""A run's event log: every run event, numbered, encoded once, kept for replay.

Each event is encoded to its frame once, when it is logged, and the same bytes go to every
watcher and, when the run has finished, into the store; so are its WebSocket frame and, should a
later preview supersede its own, its frame without the preview (both made on first use, once).
:meth:`EventLog.after` is what a ``subscribe`` or ``hello.resume`` replays; :meth:`EventLog.kept`
is what the store keeps (the log without superseded progress, which a replay would leave out
anyway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from stepwatch.protocol import (
    Check,
    Progress,
    RunEvent,
    added_in_use,
    decode_server,
    encode,
    visible_to,
)
from stepwatch.server.wireframes import binary_frame

__all__ = ["EventLog", "LoggedEvent", "collapse_preview", "logged_from_frame"]


@dataclass(frozen=True)
class LoggedEvent:
    """One event of a run: its message, its frame, and when the engine emitted it.

    ``emitted_ns`` is :func:`time.monotonic_ns` when the sampler thread handed the event over
    (0 for events read back from the store); benchmarks measure delivery latency against it.
    """

    message: RunEvent
    frame: bytes
    emitted_ns: int = 0
    #: The event as each set of ``hello.features`` reads it, made once per set.
    _seen: dict[frozenset[str], LoggedEvent | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    @cached_property
    def added(self) -> frozenset[str]:
        """The added fields this event uses (see :func:`~stepwatch.protocol.added_in_use`)."""
        return added_in_use(self.message)

    def seen_by(self, features: frozenset[str]) -> LoggedEvent | None:
        """This event as a peer that reads ``features`` gets it; ``None``: not at all (see
        :func:`~stepwatch.protocol.visible_to`)."""
        if self.added <= features:
            return self
        if features not in self._seen:
            message = visible_to(self.message, features)
            self._seen[features] = (
                None if message is None else LoggedEvent(message, encode(message), self.emitted_ns)
            )
        return self._seen[features]

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def coalescible(self) -> bool:
        """Whether a newer event of the same kind supersedes this one (progress only)."""
        return isinstance(self.message, Progress)

    @property
    def has_preview(self) -> bool:
        return isinstance(self.message, Check) and self.message.preview is not None

    @cached_property
    def wire(self) -> bytes:
        """:attr:`frame` as a whole WebSocket frame, made once for every watcher."""
        return binary_frame(self.frame)

    @cached_property
    def collapsed(self) -> bytes:
        """The frame of this check once a later preview superseded its own: ``preview`` nil
        (encoded once, however many watchers were behind)."""
        assert isinstance(self.message, Check)
        return encode(dataclasses.replace(self.message, preview=None))

    @cached_property
    def collapsed_wire(self) -> bytes:
        """:attr:`collapsed` as a whole WebSocket frame."""
        return binary_frame(self.collapsed)


def collapse_preview(event: LoggedEvent) -> bytes:
    """The frame of a check whose preview was superseded: the same check, ``preview`` nil."""
    return event.collapsed


def logged_from_frame(frame: bytes) -> LoggedEvent:
    """A stored frame back as a logged event (the store keeps frames, not messages)."""
    message = decode_server(frame)
    if not isinstance(message, RunEvent):
        raise ValueError(f"a stored {type(message).__name__} is not a run event")
    return LoggedEvent(message, frame)


class EventLog:
    """The events of one run in ``seq`` order (``seq`` n is at index n - 1)."""

    def __init__(self) -> None:
        self._events: list[LoggedEvent] = []
        self._checks: list[LoggedEvent] = []

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next event gets."""
        return len(self._events) + 1

    def prepare(self, message: RunEvent, emitted_ns: int = 0) -> LoggedEvent:
        """Encode ``message``, the next event, without logging it yet.

        Raises :class:`~stepwatch.protocol.ProtocolError` when the message cannot be encoded.
        """
        if message.seq != self.next_seq:
            raise ValueError(f"seq {message.seq} does not follow {len(self._events)}")
        return LoggedEvent(message, encode(message), emitted_ns)

    def add(self, event: LoggedEvent) -> None:
        """Log an event made by :meth:`prepare`."""
        if event.seq != self.next_seq:
            raise ValueError(f"seq {event.seq} does not follow {len(self._events)}")
        self._log(event)

    def append(self, message: RunEvent, emitted_ns: int = 0) -> LoggedEvent:
        """Encode and log ``message``, the next event."""
        event = self.prepare(message, emitted_ns)
        self._log(event)
        return event

    def _log(self, event: LoggedEvent) -> None:
        self._events.append(event)
        if isinstance(event.message, Check):
            self._checks.append(event)

    @property
    def checks(self) -> Sequence[LoggedEvent]:
        """The logged checks, in order (kept as they are logged: a run's history is read at
        every check, and scanning the whole log each time grew with the square of its length)."""
        return self._checks

    @property
    def last_seq(self) -> int:
        return len(self._events)

    def after(self, seq: int) -> Sequence[LoggedEvent]:
        """Every event with a ``seq`` above ``seq``, in order."""
        return self._events[max(seq, 0) :]

    def kept(self) -> list[LoggedEvent]:
        """The log without progress that a later progress supersedes."""
        return list(without_superseded_progress(self._events))

    def __iter__(self) -> Iterator[LoggedEvent]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)


def without_superseded_progress(events: Sequence[LoggedEvent]) -> Iterable[LoggedEvent]:
    """``events`` with every progress event dropped but the last one."""
    last_progress = max(
        (index for index, event in enumerate(events) if event.coalescible), default=-1
    )
    for index, event in enumerate(events):
        if not event.coalescible or index == last_progress:
            yield event
