"""The runs waiting for, and running on, one device's samplers: :class:`DeviceQueue`.

Admitting a run takes two steps with an await between them (the store records the run), so a
place is held first: :meth:`DeviceQueue.admission` holds it for the ``with`` block and gives it
back when the block leaves without queueing the run, whatever way it leaves. ``max_queue``
bounds the runs that wait; a full queue is ``queue_full``.

A worker that takes a run may take compatible runs with it, to sample them as one batch
(:meth:`DeviceQueue.gather`): those already waiting, from anywhere in the queue, and those whose
``start`` is being admitted at that moment (the store is recording them), for at most a short
window. Nothing else is waited for, so a run alone starts as soon as the device is free. The
run at the head always leads the next batch, so a run skipped by a batch is never overtaken by
more than the runs of that one batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import anyio

from stepwatch.protocol import ErrorCode, ProtocolError

__all__ = ["Admission", "DeviceQueue"]

R = TypeVar("R")


class Admission(Generic[R]):
    """A place held in a queue for one run until :meth:`queue` puts the run there."""

    def __init__(self, queue: DeviceQueue[R]) -> None:
        self._queue = queue
        self.used = False

    def queue(self, run: R) -> int:
        """Queue ``run`` in the held place; return how many runs are ahead of it."""
        if self.used:
            raise RuntimeError("an admission queues one run")
        self.used = True
        return self._queue._put(run)


class DeviceQueue(Generic[R]):
    """The runs waiting for, and running on, one device's ``samplers`` workers."""

    def __init__(self, device: str, samplers: int, max_queue: int) -> None:
        self.device = device
        self.samplers = samplers
        self.max_queue = max_queue
        self.waiting: deque[R] = deque()
        self.running: set[R] = set()
        self._held = 0
        self.closed = False
        self._wakeup = anyio.Event()
        #: Set when a held place is queued or given back (what :meth:`gather` waits for).
        self._admitted = anyio.Event()

    @contextmanager
    def admission(self) -> Iterator[Admission[R]]:
        """Hold a place for a run about to be queued, or raise ``queue_full``."""
        would_wait = len(self.waiting) + self._held + len(self.running) - self.samplers + 1
        if would_wait > self.max_queue:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"{len(self.waiting)} runs are waiting for {self.device}; try again later",
            )
        self._held += 1
        admission = Admission(self)
        try:
            yield admission
        finally:
            if not admission.used:
                self._held -= 1
                self._admitted.set()

    def _put(self, run: R) -> int:
        self._held -= 1
        ahead = len(self.waiting) + len(self.running)
        position = ahead if ahead >= self.samplers else 0
        self.waiting.append(run)
        self._wakeup.set()
        self._admitted.set()
        return position

    def remove(self, run: R) -> bool:
        """Take a waiting run out of the queue; whether it was waiting."""
        if run in self.waiting:
            self.waiting.remove(run)
            return True
        return False

    async def take(self) -> R | None:
        """The next run to sample; ``None`` once the queue is closed."""
        while not self.waiting or self.closed:
            if self.closed:
                return None
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        run = self.waiting.popleft()
        self.running.add(run)
        return run

    async def gather(self, fits: Callable[[R], bool], limit: int, window: float) -> list[R]:
        """Take up to ``limit`` waiting runs that ``fits``, in queue order, to sample with the run
        just taken. While starts are being admitted (their places held), wait for them to be
        queued, up to ``window`` seconds in all; otherwise wait for nothing."""
        gathered: list[R] = []
        with anyio.move_on_after(window):
            while True:
                gathered += self._take_fitting(fits, limit - len(gathered))
                if len(gathered) >= limit or self._held == 0 or self.closed:
                    return gathered
                self._admitted = anyio.Event()
                await self._admitted.wait()
        return gathered + self._take_fitting(fits, limit - len(gathered))

    def _take_fitting(self, fits: Callable[[R], bool], limit: int) -> list[R]:
        taken = [run for run in self.waiting if fits(run)][: max(limit, 0)]
        for run in taken:
            self.waiting.remove(run)
            self.running.add(run)
        return taken

    def done(self, run: R) -> None:
        """A worker is done with ``run``."""
        self.running.discard(run)

    def close(self) -> None:
        """No worker takes another run."""
        self.closed = True
        self._wakeup.set()
