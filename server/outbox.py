"""One connection's bounded outbox: :class:`Outbox`.

Everything the server sends on a connection passes through its outbox: replies and the run
events of every run the connection watches. Putting never waits, so a run's fan-out never waits
for a slow connection. The rules are the protocol README's:

- a **progress** event supersedes the progress of the same run still waiting: the older one is
  dropped and the newer one joins the end of the queue (so ``seq`` stays increasing);
- a **check** with a preview collapses the preview of an older check of the same run still
  waiting (that check goes out with ``preview`` nil);
- an event is sent as the connection's ``hello.features`` read it (:attr:`Outbox.features`):
  added fields it does not name are left out, and an ``applied`` made only of them is not sent;
- nothing else is ever dropped. When more than ``capacity`` live frames wait, the connection is
  too slow: the outbox *overflows*, takes nothing more, and its reader (the connection's sender)
  learns it from :meth:`Outbox.get` (:class:`OutboxOverflow`) and closes the connection with
  ``slow_consumer``; the client resumes from the last ``seq`` it saw.

A replay (the events a ``subscribe`` asks for) is queued at once and does not count against the
capacity: its frames are the run log's own bytes, so it costs the outbox little memory, and the
send timeout still drops a client that does not read it.

**Writing through.** With a :class:`~stepwatch.server.wireframes.FrameWriter` attached
(:meth:`Outbox.attach`), a frame put while nothing waits, no send is in progress and the socket
takes writes is written at once, from the call that put it (the run's fan-out), as the event's
one shared WebSocket frame: no task wakes, nothing is queued (a replay always queues, so that
its superseded previews collapse). Otherwise it queues, and the rules above apply unchanged, to
exactly the frames that wait: a connection whose socket backs up (its transport paused writing)
queues, coalesces, overflows or times out as before, and every frame still leaves in the order
it was put. The connection's sender takes what waits in one batch (:meth:`Outbox.take`) and
writes it in one write.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from stepwatch.protocol import ServerMessage, encode
from stepwatch.server.eventlog import LoggedEvent
from stepwatch.server.wireframes import FrameWriter, binary_frame

__all__ = ["Outbox", "OutboxOverflow"]


class OutboxOverflow(Exception):
    """More frames waited for the connection than its outbox holds."""


@dataclass(eq=False)
class _Waiting:
    """A frame waiting to be sent, or a run event whose frame may still change."""

    frame: bytes
    run_id: str | None = None
    event: LoggedEvent | None = None
    counted: bool = True
    dropped: bool = False
    collapsed: bool = False

    def bytes_to_send(self) -> bytes:
        """The message's payload (what an ASGI send takes)."""
        if self.collapsed and self.event is not None:
            return self.event.collapsed
        return self.frame

    def wire_to_send(self) -> bytes:
        """The whole WebSocket frame (what a :class:`FrameWriter` takes); an event's is made
        once for all its watchers."""
        if self.event is None:
            return binary_frame(self.frame)
        return self.event.collapsed_wire if self.collapsed else self.event.wire


class Outbox:
    """The frames waiting for one connection, at most ``capacity`` of them.

    Call :meth:`reply` and :meth:`event` from the event loop (they never wait); one task sends
    what :meth:`take` (or :meth:`get`) returns. ``batch_bytes`` bounds one batch of
    :meth:`take` (it always holds at least one frame). Not thread-safe.
    """

    def __init__(self, capacity: int, batch_bytes: int = 1 << 20) -> None:
        self.capacity = capacity
        self.batch_bytes = batch_bytes
        self._writer: FrameWriter | None = None
        #: The sender holds a batch it has not finished writing.
        self._sending = False
        self._queue: deque[_Waiting] = deque()
        self._waiting = 0
        self._progress: dict[str, _Waiting] = {}
        self._preview: dict[str, _Waiting] = {}
        self._ready = anyio.Event()
        self._closed = False
        self.overflowed = False
        #: The added fields the peer reads (its ``hello.features``); ``None``: every field.
        self.features: frozenset[str] | None = None

    @property
    def closed(self) -> bool:
        """Whether the outbox takes no more frames (closed, or overflowed)."""
        return self._closed or self.overflowed

    def __len__(self) -> int:
        """Live frames waiting to be sent."""
        return self._waiting

    def attach(self, writer: FrameWriter) -> None:
        """Write frames through ``writer`` (see the module docstring): whole WebSocket frames,
        at once when nothing waits; :meth:`take` and :meth:`get` return whole frames too."""
        self._writer = writer

    @property
    def wire(self) -> bool:
        """Whether what :meth:`take` returns is whole WebSocket frames (a writer is attached),
        not message payloads."""
        return self._writer is not None

    def reply(self, message: ServerMessage) -> None:
        """Queue a reply (``welcome``, ``error``, ...); replies are never dropped."""
        frame = encode(message)
        if self._may_write_through():
            assert self._writer is not None
            self._writer.write(binary_frame(frame))
        else:
            self._push(_Waiting(frame))

    def event(self, run_id: str, event: LoggedEvent, *, replay: bool = False) -> None:
        """Queue a run event, superseding waiting progress or previews of the same run.

        ``replay`` events (see the module docstring) do not count against the capacity.
        """
        if self.closed:
            return
        if self.features is not None:
            seen = event.seen_by(self.features)
            if seen is None:
                return
            event = seen
        # A replay always queues: a late watcher gets only the newest of its previews.
        if not replay and self._may_write_through():
            assert self._writer is not None
            self._writer.write(event.wire)  # no per-watcher allocation: the shared frame
            return
        item = _Waiting(event.frame, run_id, event, counted=not replay)
        if event.coalescible:
            older = self._progress.pop(run_id, None)
            if older is not None:
                self._drop(older)
            self._progress[run_id] = item
        elif event.has_preview:
            older = self._preview.pop(run_id, None)
            if older is not None:
                older.collapsed = True
            self._preview[run_id] = item
        self._push(item)

    def forget_run(self, run_id: str) -> None:
        """Drop every waiting event of ``run_id`` (the connection stopped watching it)."""
        for item in self._queue:
            if item.run_id == run_id and not item.dropped:
                self._drop(item)
        self._progress.pop(run_id, None)
        self._preview.pop(run_id, None)

    def close(self) -> None:
        """Take no more frames; :meth:`get` returns what waits, then ``None``."""
        self._closed = True
        self._ready.set()

    def _may_write_through(self) -> bool:
        """Whether a frame put now is written at once: a writer is attached, nothing waits or
        is being sent, the outbox is open and the socket takes writes."""
        writer = self._writer
        return (
            writer is not None
            and not self._queue
            and not self._sending
            and not self.closed
            and writer.can_write()
        )

    def _drop(self, item: _Waiting) -> None:
        item.dropped = True
        if item.counted:
            self._waiting -= 1

    def _push(self, item: _Waiting) -> None:
        if self.closed:
            return
        if item.counted and self._waiting >= self.capacity:
            self.overflowed = True
            self._ready.set()
            return
        self._queue.append(item)
        self._waiting += item.counted
        self._ready.set()

    async def get(self) -> bytes | None:
        """The next frame to send; ``None`` once the outbox is closed and empty.

        Raises :class:`OutboxOverflow` once the outbox has overflowed.
        """
        while True:
            if self.overflowed:
                raise OutboxOverflow(f"more than {self.capacity} frames waited")
            item = self._pop()
            if item is not None:
                return self._bytes(item)
            if self._closed:
                return None
            self._ready = anyio.Event()
            await self._ready.wait()

    async def take(self) -> Sequence[bytes]:
        """Every frame that waits, in order, up to :attr:`batch_bytes` (at least one); waits
        for one if none does; empty once the outbox is closed and empty. Until the next call
        (or :meth:`sent`) nothing is written through: the batch is being sent.

        Raises :class:`OutboxOverflow` once the outbox has overflowed.
        """
        self._sending = False
        first = await self.get()
        if first is None:
            return ()
        batch, size = [first], len(first)
        while size < self.batch_bytes and (item := self._pop()) is not None:
            frame = self._bytes(item)
            batch.append(frame)
            size += len(frame)
        self._sending = True
        return batch

    def sent(self) -> None:
        """The batch :meth:`take` returned has been written: frames may write through again."""
        self._sending = False

    def _pop(self) -> _Waiting | None:
        while self._queue:
            item = self._queue.popleft()
            if item.dropped:
                continue
            self._waiting -= item.counted
            if item.run_id is not None:
                self._release(item)
            return item
        return None

    def _bytes(self, item: _Waiting) -> bytes:
        return item.wire_to_send() if self._writer is not None else item.bytes_to_send()

    def _release(self, item: _Waiting) -> None:
        assert item.run_id is not None
        for pending in (self._progress, self._preview):
            if pending.get(item.run_id) is item:
                del pending[item.run_id]
