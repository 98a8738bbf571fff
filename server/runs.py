"""The service's runs from ``start`` to their end: :class:`RunManager`.

The manager admits runs into the queue of their model's device (one queue per device in front
of ``samplers_per_device`` workers, which hand each run to the :class:`~.execution.RunExecutor`)
and ends them for the server's own reasons (``abandoned``, ``shutdown``). It holds the runs in
memory, by id, which its two other parts share: :class:`~.steering.Steering` (``stop`` and
``set`` for the holders of control tokens) and :class:`~.watching.Watching` (subscriptions and
abandonment). A ``start`` is recorded in the store before it is answered, and refused with
``store_failed`` while the store cannot write.

A worker that takes a run whose parameters let it share a denoiser call
(:func:`~stepwatch.server.engine.batch.batch_key`) gathers up to ``max_batch - 1`` more runs of
the same key from its queue (:meth:`~.devicequeue.DeviceQueue.gather`: those waiting, and those
being admitted, for at most ``batch_window`` seconds) and samples them as one batch; a run with
no company takes the lone path it always took, with no wait.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from stepwatch.protocol import (
    Accepted,
    Applied,
    ErrorCode,
    FinishReason,
    ProtocolError,
    StopMode,
    stamp,
)
from stepwatch.server.catalog import Catalog, ResolvedRun
from stepwatch.server.config import ServiceLimits
from stepwatch.server.devicequeue import DeviceQueue
from stepwatch.server.engine.batch import batch_key
from stepwatch.server.execution import BatchSampler, RunExecutor, Sampler, unstarted
from stepwatch.server.liverun import ControlRequest, LiveRun
from stepwatch.server.outbox import Outbox
from stepwatch.server.steering import Steering
from stepwatch.server.store import Store, StoreError
from stepwatch.server.watching import Watching

__all__ = ["Batching", "LiveRun", "RunManager"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batching:
    """How the service lets runs share a batch: the engine for batches, the most runs in one,
    and how long a run waits for starts being admitted to join it (seconds)."""

    sampler: BatchSampler
    max_batch: int
    window: float


class RunManager:
    """Admits the service's runs and ends them; :attr:`steering` and :attr:`watching` take the
    other requests about them. Open one with :meth:`open`, which runs the device queues'
    workers until it closes.

    :meth:`start` raises :class:`~stepwatch.protocol.ProtocolError` with the protocol's codes;
    the session turns them into ``error`` replies.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        limits: ServiceLimits,
        sampler: Sampler,
        tasks: TaskGroup,
        samplers_per_device: int,
        batching: Batching | None = None,
    ) -> None:
        self.catalog = catalog
        self.batching = batching
        self.store = store
        self.limits = limits
        self._tasks = tasks
        self.accepting = True
        self._runs: dict[str, LiveRun] = {}
        batch_sampler = batching.sampler if batching is not None else None
        self.executor = RunExecutor(sampler, store, limits, tasks, self._forget, batch_sampler)
        self.watching = Watching(self._runs, store, limits.abandon_grace, tasks, self.end)
        self.steering = Steering(self._runs, catalog, store, self.watching, self.end_in_queue)
        self._queues: dict[str, DeviceQueue[LiveRun]] = {}
        for model in catalog.models.values():
            device = str(model.device)
            if device not in self._queues:
                self._queues[device] = DeviceQueue(device, samplers_per_device, limits.max_queue)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        catalog: Catalog,
        store: Store,
        limits: ServiceLimits,
        sampler: Sampler,
        samplers_per_device: int = 1,
        batching: Batching | None = None,
    ) -> AsyncIterator[RunManager]:
        """Run the workers of every device queue; on exit, shut down (see :meth:`shutdown`).
        ``batching``: how runs share batches (``None``: every run alone)."""
        async with anyio.create_task_group() as tasks:
            manager = cls(catalog, store, limits, sampler, tasks, samplers_per_device, batching)
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
            if self.batching is not None and self.batching.max_batch > 1:
                run.batch_key = batch_key(resolved.model, resolved.params)
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

    # -- ending --------------------------------------------------------------------------------

    async def end(self, run: LiveRun, reason: FinishReason) -> None:
        """End a run for the server's own reason (``abandoned``, ``shutdown``)."""
        if run.state == "queued":
            await self.end_in_queue(run, reason, None, "finish")
        elif not run.finished:
            # The server's own stops keep the current estimate rather than spend a tail.
            run.control.stop("estimate", reason)

    async def end_in_queue(
        self, run: LiveRun, reason: FinishReason, request: ControlRequest | None, mode: StopMode
    ) -> None:
        """End a run that has not left its queue; ``request`` (an owner's stop) is answered."""
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
            batch = [run]
            try:
                batch += await self._companions(queue, run)
                if len(batch) == 1:
                    await self.executor.execute(run)
                else:
                    await self.executor.execute_batch(batch)
            finally:
                for taken in batch:
                    queue.done(taken)

    async def _companions(self, queue: DeviceQueue[LiveRun], run: LiveRun) -> list[LiveRun]:
        """The queued runs that share ``run``'s batch (none when batching is off or ``run``
        has no batch key)."""
        key, batching = run.batch_key, self.batching
        if key is None or batching is None:
            return []

        def fits(other: LiveRun) -> bool:
            return other.batch_key == key

        return await queue.gather(fits, batching.max_batch - 1, batching.window)

    # -- shutting down -------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Accept no runs; finish every queued and running run with reason ``shutdown``.

        Waits up to ``shutdown_timeout`` seconds for running runs to reach their ``finished``.
        """
        self.accepting = False
        for queue in self._queues.values():
            queue.close()  # no worker takes another run
            for run in list(queue.waiting):
                await self.end(run, "shutdown")
        unfinished = [run for run in self._runs.values() if not run.finished]
        for run in unfinished:
            await self.end(run, "shutdown")
        with anyio.move_on_after(self.limits.shutdown_timeout):
            for run in unfinished:
                await run.done.wait()
