"""Who watches which run, and giving up the runs nobody watches: :class:`Watching`.

A subscriber gets the run's log after its ``after_seq``, then the live events; a run that has
left memory replays from the store. A run goes on when its owner's connection goes away; when no
connection watches or owns it for ``abandon_grace`` seconds, it is ended with reason
``abandoned``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
from anyio.abc import TaskGroup

from stepwatch.protocol import ErrorCode, FinishReason, ProtocolError, Subscribed
from stepwatch.server.eventlog import logged_from_frame
from stepwatch.server.liverun import LiveRun
from stepwatch.server.outbox import Outbox
from stepwatch.server.store import Store

__all__ = ["Watching"]

logger = logging.getLogger(__name__)


class Watching:
    """Subscribes connections to runs and ends the runs left unattached.

    ``runs`` is the service's runs in memory, by id; ``end`` ends a run for the server's own
    reason. Uses ``tasks`` for the abandonment timers.
    """

    def __init__(
        self,
        runs: Mapping[str, LiveRun],
        store: Store,
        abandon_grace: float,
        tasks: TaskGroup,
        end: Callable[[LiveRun, FinishReason], Awaitable[None]],
    ) -> None:
        self._runs = runs
        self.store = store
        self.abandon_grace = abandon_grace
        self._tasks = tasks
        self._end = end

    async def subscribe(self, run_id: str, after_seq: int, outbox: Outbox) -> None:
        """Reply ``subscribed``, replay the events after ``after_seq``, then send live ones."""
        run = self._runs.get(run_id)
        if run is not None:
            self.keep(run)
            outbox.forget_run(run_id)
            outbox.reply(Subscribed(run_id, run.state, run.log.last_seq))
            for event in run.log.after(after_seq):
                outbox.event(run_id, event, replay=True)
            if not run.finished:
                run.watchers.add(outbox)
            return
        stored = await self.store.last_seq(run_id)
        frames = await self.store.finished_events(run_id, after_seq) if stored else None
        if stored is None or frames is None:
            raise ProtocolError(ErrorCode.UNKNOWN_RUN, f"no run {run_id!r} is known", "run_id")
        outbox.forget_run(run_id)
        outbox.reply(Subscribed(run_id, "finished", stored))
        for frame in frames:
            outbox.event(run_id, logged_from_frame(frame), replay=True)

    def unsubscribe(self, run_id: str, outbox: Outbox) -> None:
        """Stop sending ``run_id``'s events to ``outbox`` (and drop those waiting)."""
        outbox.forget_run(run_id)
        run = self._runs.get(run_id)
        if run is not None:
            run.watchers.discard(outbox)
            self._abandon_if_unattached(run)

    def detach(self, outbox: Outbox) -> None:
        """A connection closed: it watches and owns nothing any more."""
        for run in list(self._runs.values()):
            run.watchers.discard(outbox)
            if run.owner is outbox:
                run.owner = None
            self._abandon_if_unattached(run)

    def keep(self, run: LiveRun) -> None:
        """Somebody attached to ``run``: it is not to be abandoned."""
        if run.abandon_timer is not None:
            run.abandon_timer.cancel()
            run.abandon_timer = None

    def _abandon_if_unattached(self, run: LiveRun) -> None:
        if run.finished or run.attached or run.abandon_timer is not None:
            return
        timer = anyio.CancelScope()
        run.abandon_timer = timer
        self._tasks.start_soon(self._abandon_later, run, timer)

    async def _abandon_later(self, run: LiveRun, timer: anyio.CancelScope) -> None:
        with timer:
            await anyio.sleep(self.abandon_grace)
            run.abandon_timer = None
            if not run.finished and not run.attached:
                logger.info("run %s has had nobody attached; abandoning it", run.run_id)
                await self._end(run, "abandoned")
