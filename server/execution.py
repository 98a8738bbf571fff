"""A run's life from leaving its device queue to its stored ``finished``: :class:`RunExecutor`.

::

    DeviceQueue ──> worker ──> anyio.to_thread.run_sync(sampler)
                                      │ engine events, in the protocol's words (sampler thread)
                                      ▼
                        EventBridge (bounded, never blocks the sampler)
                                      │
             stamp (run_id, seq, the client's request id), encode once, keep, fan out
                                      │
                         ┌────────────┼────────────┐
                      Outbox       Outbox       Outbox      one per watching connection

The engine is reached through one declared interface, :class:`Sampler`: the real one is
:func:`engine_sampler` (:func:`~stepwatch.server.engine.monitor.run_monitored` on a worker
thread); tests put a scripted engine there. Runs that share a batch (gathered by the run
manager) go through a second interface, :class:`BatchSampler` (the real one
:func:`engine_batch_sampler`, :func:`~stepwatch.server.engine.batch.run_batch`): each run of a
batch keeps its own bridge, pump, events and result, exactly as a lone run does; a run that
leaves the batch early has its ``finished`` stored and sent while the others go on.

- A running run is kept as it goes: its row says ``running`` once it leaves the queue, and each
  event but progress (a check with its thumbnail) is stored before it is logged and sent, so a
  crash loses none of what watchers saw.
- A finished run's result, history and log are stored (image first) before its ``finished`` is
  logged and sent; it stays in memory for ``finished_retention`` seconds, then replays come from
  the store. A result that cannot be stored is reported as ``failed`` (``store_failed``), and
  :attr:`RunExecutor.store_failure` says why until the store is seen to write again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import torch
from anyio.abc import TaskGroup

from stepwatch.protocol import (
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    FinishReason,
    HistoryEntry,
    ProtocolError,
    RunError,
    stamp,
)
from stepwatch.server.bridge import EventBridge
from stepwatch.server.config import ServiceLimits
from stepwatch.server.engine.batch import BatchMember, run_batch
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.curves import MIN_RUNS, ExpectedCurve, curve_key
from stepwatch.server.engine.events import EngineEvent, EventSink, fit_text
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import ResolvedParams
from stepwatch.server.engine.verifiers import VerifierRegistry
from stepwatch.server.eventlog import LoggedEvent
from stepwatch.server.liverun import LiveRun
from stepwatch.server.store import Store, StoreError

__all__ = [
    "BatchSampler",
    "RunExecutor",
    "Sampler",
    "engine_batch_sampler",
    "engine_sampler",
    "failed",
    "unstarted",
]

logger = logging.getLogger(__name__)


class Sampler(Protocol):
    """The engine as the service calls it: run ``params`` on ``model``, reading ``control`` at
    every step boundary and handing every event to ``sink`` (the protocol's run events,
    unstamped, as :mod:`stepwatch.server.engine.events` orders them); return the ``finished``
    that ends them. Called on a worker thread; must never raise."""

    def __call__(
        self,
        model: LoadedModel,
        params: ResolvedParams,
        control: RunControl,
        sink: EventSink,
        curve: ExpectedCurve | None,
    ) -> Finished: ...


def engine_sampler(verifiers: VerifierRegistry, threads: int | None = None) -> Sampler:
    """The real engine: monitored runs scored by ``verifiers``, on ``threads`` torch threads in
    each sampler thread (``None``: torch's default)."""

    def sample(
        model: LoadedModel,
        params: ResolvedParams,
        control: RunControl,
        sink: EventSink,
        curve: ExpectedCurve | None,
    ) -> Finished:
        # Set in the thread that samples: a worker thread keeps the count it first saw.
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return run_monitored(model, params, verifiers, control, sink, curve=curve)

    return sample


class BatchSampler(Protocol):
    """The engine for runs that share a batch: run ``members`` (runs of ``model`` the engine's
    :func:`~stepwatch.server.engine.batch.batch_key` gave one key) as lanes of one pipeline
    call, each member's events to its own sink; return each member's ``finished``, in order.
    Called on a worker thread; must never raise."""

    def __call__(self, model: LoadedModel, members: Sequence[BatchMember]) -> list[Finished]: ...


def engine_batch_sampler(verifiers: VerifierRegistry, threads: int | None = None) -> BatchSampler:
    """The real engine for batches, as :func:`engine_sampler` is for lone runs."""

    def sample(model: LoadedModel, members: Sequence[BatchMember]) -> list[Finished]:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return run_batch(model, members, verifiers)

    return sample


def unstarted(reason: FinishReason) -> Finished:
    """The ``finished`` of a run that ended before it left the queue."""
    return Finished(reason, 0, 0.0, None, (), None, None)


def failed(message: str, code: ErrorCode = ErrorCode.INTERNAL) -> Finished:
    """A ``finished`` for a run the server could not carry to its end."""
    return Finished("failed", 0, 0.0, None, (), None, RunError(code, fit_text(message)))


class RunExecutor:
    """Samples the runs its workers take from the device queues and records what they report.

    ``forget`` is called with a finished run once its retention is over. Uses ``tasks`` (the run
    manager's task group) for the timers of finished runs. ``batch_sampler`` samples batches
    (``None``: the service samples every run alone).
    """

    def __init__(
        self,
        sampler: Sampler,
        store: Store,
        limits: ServiceLimits,
        tasks: TaskGroup,
        forget: Callable[[LiveRun], None],
        batch_sampler: BatchSampler | None = None,
    ) -> None:
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.store = store
        self.limits = limits
        self._tasks = tasks
        self._forget = forget
        #: Why the store last failed to write, until it is seen to write again.
        self.store_failure: str | None = None

    async def execute(self, run: LiveRun) -> None:
        """Sample ``run`` to its ``finished`` (which is stored and sent before this returns)."""
        try:
            await self._sample(run)
        except Exception:  # a bug here must not stop the device's queue
            logger.exception("run %s failed in the server", run.run_id)
            if not run.finished:
                await self.finish(run, failed("the server failed the run"))

    async def execute_batch(self, runs: Sequence[LiveRun]) -> None:
        """Sample ``runs`` (of one batch key, two or more) as one batch, each to its
        ``finished``."""
        try:
            await self._sample_batch(runs)
        except Exception:  # as in execute: the device's queue goes on
            logger.exception("a batch of %d runs failed in the server", len(runs))
            for run in runs:
                if not run.finished:
                    await self.finish(run, failed("the server failed the run"))

    async def _prepare(self, run: LiveRun) -> ExpectedCurve | None:
        """Mark ``run`` running (in memory and in the store); its policy's expected curve."""
        run.state = "running"
        try:
            await self.store.mark_running(run.run_id, run.resolved.parameters)
        except StoreError as exc:
            self._keeping_failed(run, exc)
        return await self._expected_curve(run)

    async def _sample(self, run: LiveRun) -> None:
        curve = await self._prepare(run)
        bridge = EventBridge()

        def sample() -> Finished:
            model, params = run.resolved.model, run.resolved.params
            return self.sampler(model, params, run.control, bridge.put, curve)

        await self._run_sampler(sample, [(run, bridge)])

    async def _sample_batch(self, runs: Sequence[LiveRun]) -> None:
        assert self.batch_sampler is not None
        batch_sampler = self.batch_sampler
        curves = [await self._prepare(run) for run in runs]
        bridges = [EventBridge() for _ in runs]
        members = [
            BatchMember(run.resolved.params, run.control, bridge.put, curve)
            for run, bridge, curve in zip(runs, bridges, curves, strict=True)
        ]
        model = runs[0].resolved.model
        logger.info("sampling %d runs as one batch: %s", len(runs), [r.run_id for r in runs])
        await self._run_sampler(
            lambda: batch_sampler(model, members), list(zip(runs, bridges, strict=True))
        )

    async def _run_sampler(
        self, sample: Callable[[], object], pumps: list[tuple[LiveRun, EventBridge]]
    ) -> None:
        """Run ``sample`` on a worker thread while each run's events are pumped from its bridge;
        a run the sampler left without a ``finished`` fails."""
        async with anyio.create_task_group() as pump:
            for run, bridge in pumps:
                pump.start_soon(self._pump, run, bridge)
            try:
                await anyio.to_thread.run_sync(sample, abandon_on_cancel=False)
            finally:
                for _, bridge in pumps:
                    bridge.close()
        for run, _ in pumps:
            if not run.finished:
                await self.finish(run, failed("the sampler ended without a result"))

    async def _expected_curve(self, run: LiveRun) -> ExpectedCurve | None:
        """The policy's yardstick: the model's shipped curve for the run's verifier and sampler,
        else one learned from the store's completed runs once it rests on enough of them."""
        model, parameters = run.resolved.model, run.resolved.parameters
        shipped = model.curves.get(curve_key(parameters.verifier, parameters.sampler))
        if shipped is not None:
            return shipped
        try:
            runs = await self.store.quality_history(
                model.name, parameters.verifier, parameters.sampler
            )
        except StoreError:
            logger.warning("the store cannot be read; run %s has no expected curve", run.run_id)
            return None
        learned = ExpectedCurve.from_runs(runs)
        return learned if learned is not None and learned.runs >= MIN_RUNS else None

    async def _pump(self, run: LiveRun, bridge: EventBridge) -> None:
        async for event, emitted_ns in bridge:
            if isinstance(event, Finished):
                await self.finish(run, event, emitted_ns)
            else:
                await self._forward(run, event, emitted_ns)

    async def _forward(self, run: LiveRun, event: EngineEvent, emitted_ns: int) -> None:
        """Stamp an event of the running run, keep it, log it and send it."""
        request = None
        if isinstance(event, Applied | Error) and event.request_id is not None:
            request = run.requests.get(event.request_id)
            if request is None:
                return  # not a request of this service's clients
        if isinstance(event, Error):
            assert request is not None
            reply = dataclasses.replace(event, request_id=request.request_id, run_id=run.run_id)
            request.outbox.reply(reply)
            return
        if isinstance(event, Applied):
            assert request is not None
            event = dataclasses.replace(event, request_id=request.request_id)
        try:
            logged = run.log.prepare(stamp(event, run.run_id, run.log.next_seq), emitted_ns)
        except ProtocolError:
            logger.exception("run %s: cannot encode %s", run.run_id, type(event).__name__)
            return
        if not logged.coalescible:
            check = None
            if isinstance(logged.message, Check):
                check = (len(run.log.checks), run.entry(logged))
            await self._keep(run, logged, check)
        run.log.add(logged)
        run.publish(logged, request)

    async def _keep(
        self, run: LiveRun, event: LoggedEvent, check: tuple[int, HistoryEntry] | None
    ) -> None:
        """Store an event of the running run before anyone sees it (a crash keeps it)."""
        try:
            with anyio.CancelScope(shield=True):
                await self.store.keep_event(event, check)
        except StoreError as exc:
            self._keeping_failed(run, exc)

    def _keeping_failed(self, run: LiveRun, exc: StoreError) -> None:
        if not run.keep_failed:
            run.keep_failed = True
            logger.error("run %s: its checks are not being stored: %s", run.run_id, exc)

    async def finish(self, run: LiveRun, message: Finished, emitted_ns: int = 0) -> None:
        """Stamp and store the run's result, then log and send ``finished``: the run is over."""
        run.ending = True
        seq = run.log.next_seq
        try:
            event = run.log.prepare(stamp(message, run.run_id, seq), emitted_ns)
        except ProtocolError as exc:
            logger.error("run %s: cannot encode its result: %s", run.run_id, exc)
            event = run.log.prepare(stamp(failed(f"the result: {exc}"), run.run_id, seq))
        assert isinstance(event.message, Finished)
        try:
            with anyio.CancelScope(shield=True):
                await self.store.save_result(event.message, [*run.log.kept(), event])
        except StoreError as exc:
            # A finished seen is a result kept: what was not kept is reported as failed, and
            # no run starts until the store can write again.
            logger.error("run %s: its result was not stored: %s", run.run_id, exc)
            self.store_failure = str(exc)
            not_stored = failed(f"the result was not stored: {exc}", ErrorCode.STORE_FAILED)
            event = run.log.prepare(stamp(not_stored, run.run_id, seq), emitted_ns)
        run.log.add(event)
        run.state = "finished"
        run.publish(event)
        run.watchers.clear()
        run.requests.clear()
        if run.abandon_timer is not None:
            run.abandon_timer.cancel()
            run.abandon_timer = None
        run.done.set()
        self._tasks.start_soon(self._forget_later, run)

    async def _forget_later(self, run: LiveRun) -> None:
        await anyio.sleep(self.limits.finished_retention)
        self._forget(run)
