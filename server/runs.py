"""The run manager: queues runs, drives the sampler, logs and fans out events, takes control.

::

    start ──> DeviceQueue ──> worker ──> anyio.to_thread.run_sync(run_monitored)
                 (bounded)                      │ engine events (sampler thread)
                                                ▼
                                EventBridge (bounded, never blocks the sampler)
                                                │
                                   pump: translate, number, log, fan out
                                                │
                                    ┌───────────┼───────────┐
                                 Outbox      Outbox      Outbox     one per watching connection

- One queue per device in front of ``samplers_per_device`` workers (one sampler at a time per
  device by default). ``max_queue`` bounds the runs that wait; a full queue is ``queue_full``.
- Each run keeps its event log (:class:`~.eventlog.EventLog`) while it is in memory; a
  subscriber gets the log after its ``after_seq``, then the live events. Fan-out puts each
  event into every watcher's outbox, which never waits, so neither a slow watcher nor many of
  them slow the sampler or each other.
- A running run is kept as it goes: its row says ``running`` once it leaves the queue, and each
  event but progress (a check with its thumbnail) is stored before it is logged and sent, so a
  crash loses none of what watchers saw. A finished run's result, history and log are stored
  (image first) before its ``finished`` is logged and sent; it stays in memory for
  ``finished_retention`` seconds, then replays come from the store.
- A run goes on when its owner's connection goes away. When no connection watches or owns it
  for ``abandon_grace`` seconds, it is stopped with reason ``abandoned``.
- Only the holder of a run's control token (checked with :func:`hmac.compare_digest`) may stop
  or change it; whoever presents it becomes the run's owner.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import torch
from anyio.abc import TaskGroup

from stepwatch.protocol import (
    Accepted,
    Error,
    ErrorCode,
    Finished,
    HistoryEntry,
    ProtocolError,
    Set,
    Stop,
    Subscribed,
)
from stepwatch.protocol.values import FinishReason, RunState, StopMode
from stepwatch.server.bridge import EventBridge, StampedEvent
from stepwatch.server.catalog import Catalog, ResolvedRun
from stepwatch.server.config import ServiceLimits
from stepwatch.server.engine import events as engine
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.curves import MIN_RUNS, ExpectedCurve, curve_key
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.eventlog import EventLog, LoggedEvent, logged_from_frame
from stepwatch.server.outbox import Outbox
from stepwatch.server.store import Store, StoreError
from stepwatch.server.translate import RunTranslator

__all__ = ["LiveRun", "RunManager"]

logger = logging.getLogger(__name__)


def _sample_with_threads(threads: int | None, *args: Any, **options: Any) -> None:
    """Run the sampler (in its worker thread) on ``threads`` torch threads.

    Set in the thread that samples: a worker thread keeps the count it first saw otherwise.
    """
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    run_monitored(*args, **options)


@dataclass(frozen=True)
class ControlRequest:
    """A ``stop`` or ``set`` passed to the engine: who asked, under which request id."""

    outbox: Outbox
    request_id: str


class LiveRun:
    """A run the manager holds in memory: its parameters, control, event log and watchers."""

    def __init__(self, run_id: str, resolved: ResolvedRun, owner: Outbox) -> None:
        self.run_id = run_id
        self.token = secrets.token_urlsafe(24)
        self.resolved = resolved
        self.control = RunControl()
        self.translator = RunTranslator(run_id, resolved.parameters, previews=resolved.previews)
        self.log = EventLog()
        self.state: RunState = "queued"
        #: The engine has reported the end; the result is being stored.
        self.ending = False
        self.watchers: set[Outbox] = {owner}
        self.owner: Outbox | None = owner
        self.starter = owner
        self.requests: dict[str, ControlRequest] = {}
        #: The quality history so far (the stored one once the run has finished).
        self.history: list[HistoryEntry] = []
        self.done = anyio.Event()
        self.abandon_timer: anyio.CancelScope | None = None
        #: Keeping the running run's events in the store failed once (logged once).
        self.keep_failed = False

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def attached(self) -> bool:
        """Whether a connection watches or owns the run."""
        return bool(self.watchers) or self.owner is not None

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())


class DeviceQueue:
    """The runs waiting for, and running on, one device's samplers."""

    def __init__(self, device: str, samplers: int, max_queue: int) -> None:
        self.device = device
        self.samplers = samplers
        self.max_queue = max_queue
        self.waiting: deque[LiveRun] = deque()
        self.running: set[LiveRun] = set()
        self.reserved = 0
        self.closed = False
        self._wakeup = anyio.Event()

    def reserve(self) -> None:
        """Hold a place for a run about to be queued, or raise ``queue_full``."""
        would_wait = len(self.waiting) + self.reserved + len(self.running) - self.samplers + 1
        if would_wait > self.max_queue:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"{len(self.waiting)} runs are waiting for {self.device}; try again later",
            )
        self.reserved += 1

    def put(self, run: LiveRun) -> int:
        """Queue a run whose place was reserved; return how many runs are ahead of it."""
        self.reserved -= 1
        ahead = len(self.waiting) + len(self.running)
        position = ahead if ahead >= self.samplers else 0
        self.waiting.append(run)
        self._wakeup.set()
        return position

    def remove(self, run: LiveRun) -> bool:
        if run in self.waiting:
            self.waiting.remove(run)
            return True
        return False

    async def take(self) -> LiveRun | None:
        """The next run to sample; ``None`` once the queue is closed."""
        while not self.waiting or self.closed:
            if self.closed:
                return None
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        run = self.waiting.popleft()
        self.running.add(run)
        return run

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()


class RunManager:
    """Every run of the service. Use it as an async context manager (it runs the workers).

    The methods that answer clients raise :class:`~stepwatch.protocol.ProtocolError` with the
    protocol's codes; the session turns them into ``error`` replies.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        limits: ServiceLimits,
        samplers_per_device: int = 1,
        sampler_threads: int | None = None,
    ) -> None:
        self.catalog = catalog
        #: torch's intra-op threads in each sampler thread (``None``: torch's default).
        self.sampler_threads = sampler_threads
        self.store = store
        self.limits = limits
        self.accepting = True
        self._runs: dict[str, LiveRun] = {}
        self._queues: dict[str, DeviceQueue] = {}
        for model in catalog.models.values():
            device = str(model.device)
            if device not in self._queues:
                self._queues[device] = DeviceQueue(device, samplers_per_device, limits.max_queue)
        self._request_ids = itertools.count(1)
        #: Why the store last failed to write, until it is seen to write again.
        self.store_failure: str | None = None
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> RunManager:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        for queue in self._queues.values():
            for _ in range(queue.samplers):
                self._task_group.start_soon(self._work, queue, name=f"sampler {queue.device}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        if self.accepting:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, traceback)

    @property
    def _tasks(self) -> TaskGroup:
        assert self._task_group is not None, "use the RunManager as an async context manager"
        return self._task_group

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
        queue.reserve()
        run = LiveRun(secrets.token_hex(8), resolved, owner)
        try:
            # Shielded: once recorded, the run is queued even if its connection goes meanwhile
            # (nobody is attached then, so it is abandoned after the grace period).
            with anyio.CancelScope(shield=True):
                await self.store.add_run(run.run_id, resolved.parameters)
        except StoreError as exc:
            queue.reserved -= 1
            logger.error("cannot record a new run: %s", exc)
            self.store_failure = str(exc)
            raise ProtocolError(
                ErrorCode.STORE_FAILED, "the server cannot store runs now; try again later"
            ) from exc
        self._runs[run.run_id] = run
        if queue.closed:  # the server began to shut down while the run was being recorded
            queue.reserved -= 1
            owner.reply(Accepted(request_id, run.run_id, run.token, 0))
            await self._finish(run, run.translator.unstarted(1, "shutdown"), 0)
            return run
        # Nothing awaits between queueing and replying, so ``accepted`` precedes every event.
        position = queue.put(run)
        owner.reply(Accepted(request_id, run.run_id, run.token, position))
        return run

    async def _check_store(self) -> None:
        """Refuse ``start`` with ``store_failed`` while the store still cannot write."""
        try:
            with anyio.CancelScope(shield=True):
                await self.store.check_writable()
        except StoreError as exc:
            self.store_failure = str(exc)
            raise ProtocolError(
                ErrorCode.STORE_FAILED,
                "the server cannot store results now, so it starts no runs; try again later",
            ) from exc
        logger.info("the store can write again (it failed: %s)", self.store_failure)
        self.store_failure = None

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
        run.control.stop(engine.StopMode(request.mode), engine.FinishReason.STOPPED, control_id)

    async def set(self, request: Set, requester: Outbox) -> None:
        """Change a run's settings for the holder of its token (``applied`` follows)."""
        run = await self._owned(request.run_id, request.token)
        change = self.catalog.settings_change(request, run.resolved.parameters)
        self._take_ownership(run, requester)
        if run.state == "queued":
            # Acknowledged at once (step 0), as a stop is: the run starts with the change.
            run.resolved = run.resolved.with_settings(change)
            applied = run.translator.queued_set(
                run.log.next_seq, request.request_id, change, run.resolved.parameters
            )
            if applied is not None:
                self._publish(
                    run,
                    run.log.append(applied),
                    ControlRequest(requester, request.request_id),
                )
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
            run.control.stop(engine.StopMode.ESTIMATE, engine.FinishReason(reason))

    async def _end_in_queue(
        self, run: LiveRun, reason: FinishReason, request: ControlRequest | None, mode: StopMode
    ) -> None:
        queue = self._queues[str(run.resolved.model.device)]
        if not queue.remove(run):
            return
        run.ending = True
        if request is not None:
            applied = run.translator.queued_stop(run.log.next_seq, request.request_id, mode)
            self._publish(run, run.log.append(applied), request)
        await self._finish(run, run.translator.unstarted(run.log.next_seq, reason), 0)

    # -- running -------------------------------------------------------------------------------

    async def _work(self, queue: DeviceQueue) -> None:
        while (run := await queue.take()) is not None:
            try:
                await self._execute(run)
            except Exception:  # a bug here must not stop the device's queue
                logger.exception("run %s failed in the server", run.run_id)
                if not run.finished:
                    message = run.translator.failed(run.log.next_seq, "the server failed the run")
                    await self._finish(run, message, 0)
            finally:
                queue.running.discard(run)

    async def _execute(self, run: LiveRun) -> None:
        run.state = "running"
        try:
            await self.store.mark_running(run.run_id, run.resolved.parameters)
        except StoreError as exc:
            self._keeping_failed(run, exc)
        bridge = EventBridge()
        sample = partial(
            _sample_with_threads,
            self.sampler_threads,
            run.resolved.model,
            run.resolved.params,
            self.catalog.verifiers,
            run.control,
            bridge.put,
            curve=await self._expected_curve(run),
        )
        async with anyio.create_task_group() as pump:
            pump.start_soon(self._pump, run, bridge)
            try:
                await anyio.to_thread.run_sync(sample, abandon_on_cancel=False)
            finally:
                bridge.close()
        if not run.finished:
            message = run.translator.failed(run.log.next_seq, "the sampler ended without a result")
            await self._finish(run, message, 0)

    async def _expected_curve(self, run: LiveRun) -> ExpectedCurve | None:
        """The policy's yardstick: the model's shipped curve for the run's verifier and sampler,
        else one learned from the store's completed runs once it rests on enough of them."""
        model, params = run.resolved.model, run.resolved.params
        assert params.verifier is not None and params.sampler is not None
        shipped = model.curves.get(curve_key(params.verifier, params.sampler))
        if shipped is not None:
            return shipped
        try:
            runs = await self.store.quality_history(model.name, params.verifier, params.sampler)
        except StoreError:
            logger.warning("the store cannot be read; run %s has no expected curve", run.run_id)
            return None
        learned = ExpectedCurve.from_runs(runs)
        return learned if learned is not None and learned.runs >= MIN_RUNS else None

    async def _pump(self, run: LiveRun, bridge: EventBridge) -> None:
        async for stamped in bridge:
            if isinstance(stamped.event, engine.Finished):
                run.ending = True
                message = run.translator.finished(stamped.event.result, run.log.next_seq)
                await self._finish(run, message, stamped.emitted_ns)
            else:
                await self._forward(run, stamped)

    async def _forward(self, run: LiveRun, stamped: StampedEvent) -> None:
        event = stamped.event
        check: tuple[int, HistoryEntry] | None = None
        if isinstance(event, engine.Check):
            check = (len(run.history), run.translator.history_entry(event.quality))
            run.history.append(check[1])
        request = None
        if isinstance(event, engine.Applied) and event.request_id is not None:
            request = run.requests.pop(event.request_id, None)
        client_id = request.request_id if request is not None else None
        message = run.translator.translate(event, run.log.next_seq, client_id)
        if message is not None:
            try:
                logged = run.log.prepare(message, stamped.emitted_ns)
            except ProtocolError:
                logger.exception("run %s: cannot encode %s", run.run_id, type(message).__name__)
            else:
                if not logged.coalescible:
                    await self._keep(run, logged, check)
                run.log.add(logged)
                self._publish(run, logged, request)
        if isinstance(event, engine.Applied) and event.refused and request is not None:
            request.outbox.reply(
                Error(ErrorCode.INVALID_VALUE, event.refused, None, client_id, run.run_id)
            )

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

    def _publish(
        self, run: LiveRun, event: LoggedEvent, request: ControlRequest | None = None
    ) -> None:
        """Send ``event`` to every watcher, and an acknowledgement to a steering non-watcher.

        A connection may steer a run it does not watch (it holds the token from elsewhere); the
        ``applied`` that answers it still reaches it.
        """
        for outbox in run.watchers:
            outbox.event(run.run_id, event)
        if request is not None and request.outbox not in run.watchers:
            request.outbox.event(run.run_id, event)

    async def _finish(self, run: LiveRun, message: Finished, emitted_ns: int) -> None:
        """Store the result, then log and send ``finished``: the run is over."""
        run.ending = True
        try:
            event = run.log.prepare(message, emitted_ns)
        except ProtocolError as exc:
            logger.error("run %s: cannot encode its result: %s", run.run_id, exc)
            event = run.log.prepare(run.translator.failed(message.seq, f"the result: {exc}"))
        assert isinstance(event.message, Finished)
        try:
            with anyio.CancelScope(shield=True):
                await self.store.save_result(event.message, [*run.log.kept(), event])
        except StoreError as exc:
            # A finished seen is a result kept: what was not kept is reported as failed, and
            # no run starts until the store can write again.
            logger.error("run %s: its result was not stored: %s", run.run_id, exc)
            self.store_failure = str(exc)
            failed = run.translator.failed(
                message.seq, f"the result was not stored: {exc}", ErrorCode.STORE_FAILED
            )
            event = run.log.prepare(failed, emitted_ns)
        run.log.add(event)
        run.state = "finished"
        self._publish(run, event)
        run.watchers.clear()
        run.requests.clear()
        self._cancel_abandon(run)
        run.done.set()
        self._tasks.start_soon(self._forget_later, run)

    async def _forget_later(self, run: LiveRun) -> None:
        await anyio.sleep(self.limits.finished_retention)
        self._runs.pop(run.run_id, None)

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
