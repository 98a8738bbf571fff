"""Every run of the service and the requests clients make about them: :class:`RunManager`.

The manager accepts runs into the queue of their model's device (one queue per device in front
of ``samplers_per_device`` workers, which hand each run to the :class:`~.execution.RunExecutor`),
steers them for the holders of their control tokens, subscribes connections to them and gives
up the runs nobody watches.

- Each run keeps its event log (:class:`~.eventlog.EventLog`) while it is in memory; a
  subscriber gets the log after its ``after_seq``, then the live events. A run that has left
  memory replays from the store.
- A run goes on when its owner's connection goes away. When no connection watches or owns it
  for ``abandon_grace`` seconds, it is stopped with reason ``abandoned``.
- Only the holder of a run's control token (checked with :func:`hmac.compare_digest`) may stop
  or change it; whoever presents it becomes the run's owner.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from stepwatch.protocol import (
    Accepted,
    Applied,
    ErrorCode,
    FinishReason,
    ProtocolError,
    Set,
    SettingChange,
    Stop,
    StopMode,
    Subscribed,
    stamp,
)
from stepwatch.server.catalog import Catalog, ResolvedRun
from stepwatch.server.config import ServiceLimits
from stepwatch.server.devicequeue import DeviceQueue
from stepwatch.server.eventlog import logged_from_frame
from stepwatch.server.execution import RunExecutor, Sampler, unstarted
from stepwatch.server.liverun import ControlRequest, LiveRun
from stepwatch.server.outbox import Outbox
from stepwatch.server.store import Store, StoreError

__all__ = ["LiveRun", "RunManager"]

logger = logging.getLogger(__name__)


class RunManager:
    """Accepts, steers, subscribes to and gives up the service's runs. Open one with
    :meth:`open`, which runs the device queues' workers until it closes.

    The methods that answer clients raise :class:`~stepwatch.protocol.ProtocolError` with the
    protocol's codes; the session turns them into ``error`` replies.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        limits: ServiceLimits,
        sampler: Sampler,
        tasks: TaskGroup,
        samplers_per_device: int,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.limits = limits
        self._tasks = tasks
        self.accepting = True
        self._runs: dict[str, LiveRun] = {}
        self.executor = RunExecutor(sampler, store, limits, tasks, self._forget)
        self._queues: dict[str, DeviceQueue[LiveRun]] = {}
        for model in catalog.models.values():
            device = str(model.device)
            if device not in self._queues:
                self._queues[device] = DeviceQueue(device, samplers_per_device, limits.max_queue)
        self._request_ids = itertools.count(1)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        catalog: Catalog,
        store: Store,
        limits: ServiceLimits,
        sampler: Sampler,
        samplers_per_device: int = 1,
    ) -> AsyncIterator[RunManager]:
        """Run the workers of every device queue; on exit, shut down (see :meth:`shutdown`)."""
        async with anyio.create_task_group() as tasks:
            manager = cls(catalog, store, limits, sampler, tasks, samplers_per_device)
            for queue in manager._queues.values():
                for _ in range(queue.samplers):
                    tasks.start_soon(manager._work, queue, name=f"sampler {queue.device}")
            try:
                yield manager
            finally:
                if manager.accepting:
                    with anyio.CancelScope(shield=True):
                        await manager.shutdown()
                tasks.cancel_scope.cancel()

    def _forget(self, run: LiveRun) -> None:
        self._runs.pop(run.run_id, None)

    @property
    def store_failure(self) -> str | None:
        """Why the store last failed to write, until it is seen to write again."""
        return self.executor.store_failure

    # -- what the HTTP API and welcome show ---------------------------------------------------

    def live(self, run_id: str) -> LiveRun | None:
        """The run ``run_id`` if it is in memory."""
        return self._runs.get(run_id)

    def counts(self) -> dict[str, int]:
        """How many runs wait and run, for ``/healthz``."""
        return {
            "queued": sum(len(queue.waiting) for queue in self._queues.values()),
            "running": sum(len(queue.running) for queue in self._queues.values()),
        }

    def unfinished_started_by(self, outbox: Outbox) -> int:
        return sum(1 for run in self._runs.values() if run.starter is outbox and not run.finished)

    # -- requests ------------------------------------------------------------------------------

    async def start(self, resolved: ResolvedRun, request_id: str, owner: Outbox) -> LiveRun:
        """Accept a run: reply ``accepted`` to ``owner`` (subscribed from then on) and queue it."""
        if not self.accepting:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        queue = self._queues[str(resolved.model.device)]
        if self.store_failure is not None:
            await self._check_store()
        with queue.admission() as admission:
            run = LiveRun(resolved, owner)
            try:
                # Shielded: once recorded, the run is queued even if its connection goes
                # meanwhile (nobody is attached then, so it is abandoned after the grace period).
                with anyio.CancelScope(shield=True):
                    await self.store.add_run(run.run_id, resolved.parameters)
            except StoreError as exc:
                logger.error("cannot record a new run: %s", exc)
                self.executor.store_failure = str(exc)
                raise ProtocolError(
                    ErrorCode.STORE_FAILED, "the server cannot store runs now; try again later"
                ) from exc
            self._runs[run.run_id] = run
            if not queue.closed:
                # Nothing awaits between queueing and replying: ``accepted`` precedes every event.
                position = admission.queue(run)
                owner.reply(Accepted(request_id, run.run_id, run.token, position))
                return run
        # The server began to shut down while the run was being recorded.
        owner.reply(Accepted(request_id, run.run_id, run.token, 0))
        await self.executor.finish(run, unstarted("shutdown"))
        return run

    async def _check_store(self) -> None:
        """Refuse ``start`` with ``store_failed`` while the store still cannot write."""
        try:
            with anyio.CancelScope(shield=True):
                await self.store.check_writable()
        except StoreError as exc:
            self.executor.store_failure = str(exc)
            raise ProtocolError(
                ErrorCode.STORE_FAILED,
                "the server cannot store results now, so it starts no runs; try again later",
            ) from exc
        logger.info("the store can write again (it failed: %s)", self.store_failure)
        self.executor.store_failure = None

    async def stop(self, request: Stop, requester: Outbox) -> None:
        """Stop a run for the holder of its token; the engine acknowledges with ``applied``."""
        run = await self._owned(request.run_id, request.token)
        self._take_ownership(run, requester)
        if run.state == "queued":
            await self._end_in_queue(
                run, "stopped", ControlRequest(requester, request.request_id), request.mode
            )
            return
        control_id = self._control_id(run, requester, request.request_id)
        run.control.stop(request.mode, "stopped", control_id)

    async def set(self, request: Set, requester: Outbox) -> None:
        """Change a run's settings for the holder of its token (``applied`` follows)."""
        run = await self._owned(request.run_id, request.token)
        change = self.catalog.settings_change(request, run.resolved.parameters)
        self._take_ownership(run, requester)
        if run.state == "queued":
            # Acknowledged at once (step 0), as a stop is: the run starts with the change.
            before = run.resolved.parameters
            run.resolved = run.resolved.with_settings(change)
            changes = tuple(
                SettingChange(name, float(getattr(before, name)), float(new))
                for name, new in change.items()
            )
            applied = Applied(request.request_id, 0, changes, None)
            logged = run.log.append(stamp(applied, run.run_id, run.log.next_seq))
            run.publish(logged, ControlRequest(requester, request.request_id))
            return
        run.control.set(change, self._control_id(run, requester, request.request_id))

    async def subscribe(self, run_id: str, after_seq: int, outbox: Outbox) -> None:
        """Reply ``subscribed``, replay the events after ``after_seq``, then send live ones."""
        run = self._runs.get(run_id)
        if run is not None:
            self._cancel_abandon(run)
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

    async def _owned(self, run_id: str, token: str) -> LiveRun:
        run = self._runs.get(run_id)
        if run is None:
            if await self.store.last_seq(run_id) is not None:
                raise ProtocolError(ErrorCode.RUN_FINISHED, f"run {run_id} has finished", "run_id")
            raise ProtocolError(ErrorCode.UNKNOWN_RUN, f"no run {run_id!r} is known", "run_id")
        if not run.token_matches(token):
            raise ProtocolError(ErrorCode.FORBIDDEN, "this token does not control the run", "token")
        if run.finished or run.ending:
            raise ProtocolError(ErrorCode.RUN_FINISHED, f"run {run_id} has finished", "run_id")
        return run

    def _take_ownership(self, run: LiveRun, requester: Outbox) -> None:
        run.owner = requester
        self._cancel_abandon(run)

    def _control_id(self, run: LiveRun, requester: Outbox, request_id: str) -> str:
        control_id = f"c{next(self._request_ids)}"
        run.requests[control_id] = ControlRequest(requester, request_id)
        return control_id

    # -- abandoning ----------------------------------------------------------------------------

    def _abandon_if_unattached(self, run: LiveRun) -> None:
        if run.finished or run.attached or run.abandon_timer is not None:
            return
        timer = anyio.CancelScope()
        run.abandon_timer = timer
        self._tasks.start_soon(self._abandon_later, run, timer)

    async def _abandon_later(self, run: LiveRun, timer: anyio.CancelScope) -> None:
        with timer:
            await anyio.sleep(self.limits.abandon_grace)
            run.abandon_timer = None
            if not run.finished and not run.attached:
                logger.info("run %s has had nobody attached; abandoning it", run.run_id)
                await self._end(run, "abandoned")

    def _cancel_abandon(self, run: LiveRun) -> None:
        if run.abandon_timer is not None:
            run.abandon_timer.cancel()
            run.abandon_timer = None

    async def _end(self, run: LiveRun, reason: FinishReason) -> None:
        """End a run for the server's own reason (``abandoned``, ``shutdown``)."""
        if run.state == "queued":
            await self._end_in_queue(run, reason, None, "finish")
        elif not run.finished:
            # The server's own stops keep the current estimate rather than spend a tail.
            run.control.stop("estimate", reason)

    async def _end_in_queue(
        self, run: LiveRun, reason: FinishReason, request: ControlRequest | None, mode: StopMode
    ) -> None:
        queue = self._queues[str(run.resolved.model.device)]
        if not queue.remove(run):
            return
        run.ending = True
        if request is not None:
            applied = Applied(request.request_id, 0, (), mode)
            run.publish(run.log.append(stamp(applied, run.run_id, run.log.next_seq)), request)
        await self.executor.finish(run, unstarted(reason))

    # -- running -------------------------------------------------------------------------------

    async def _work(self, queue: DeviceQueue[LiveRun]) -> None:
        while (run := await queue.take()) is not None:
            try:
                await self.executor.execute(run)
            finally:
                queue.done(run)

    # -- shutting down -------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Accept no runs; finish every queued and running run with reason ``shutdown``.

        Waits up to ``shutdown_timeout`` seconds for running runs to reach their ``finished``.
        """
        self.accepting = False
        for queue in self._queues.values():
            queue.close()  # no worker takes another run
            for run in list(queue.waiting):
                await self._end(run, "shutdown")
        unfinished = [run for run in self._runs.values() if not run.finished]
        for run in unfinished:
            await self._end(run, "shutdown")
        with anyio.move_on_after(self.limits.shutdown_timeout):
            for run in unfinished:
                await run.done.wait()
