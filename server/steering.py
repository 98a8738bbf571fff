"""Stopping and changing runs for the holders of their control tokens: :class:`Steering`.

Only the holder of a run's control token (checked with :func:`hmac.compare_digest`) may stop or
change it; whoever presents it becomes the run's owner. A running run's request goes to the
engine, which acknowledges it with ``applied`` at the next step boundary; a queued run's is
acknowledged at once (step 0), and the run starts with the change or never starts. A stop or
keep of one candidate of a search always goes to the engine, which applies it at the first step
boundary it reaches (see :mod:`~.engine.search`).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping

from stepwatch.protocol import (
    SEARCH_SETTINGS,
    Applied,
    ErrorCode,
    FinishReason,
    ProtocolError,
    SearchSettingChange,
    Set,
    SettingChange,
    Stop,
    StopMode,
    stamp,
)
from stepwatch.server.catalog import Catalog
from stepwatch.server.liverun import ControlRequest, LiveRun
from stepwatch.server.outbox import Outbox
from stepwatch.server.store import Store
from stepwatch.server.watching import Watching

__all__ = ["EndInQueue", "Steering"]

#: Ends a queued run: the run, the reason, the request that asked (if any) and the stop mode.
EndInQueue = Callable[[LiveRun, FinishReason, ControlRequest | None, StopMode], Awaitable[None]]


class Steering:
    """Takes ``stop`` and ``set`` requests for the runs in ``runs`` (the service's, by id).

    The methods raise :class:`~stepwatch.protocol.ProtocolError` with the protocol's codes.
    """

    def __init__(
        self,
        runs: Mapping[str, LiveRun],
        catalog: Catalog,
        store: Store,
        watching: Watching,
        end_in_queue: EndInQueue,
    ) -> None:
        self._runs = runs
        self.catalog = catalog
        self.store = store
        self.watching = watching
        self._end_in_queue = end_in_queue
        self._control_ids = itertools.count(1)

    async def stop(self, request: Stop, requester: Outbox) -> None:
        """Stop a run for the holder of its token; ``applied`` acknowledges it."""
        run = await self._owned(request.run_id, request.token, requester)
        asked = ControlRequest(requester, request.request_id)
        if request.candidate is not None or request.keep is not None:
            self._candidate(run, request, asked)
            return
        if run.state == "queued":
            await self._end_in_queue(run, "stopped", asked, request.mode)
            return
        run.control.stop(request.mode, "stopped", self._hand_over(run, asked))

    def _candidate(self, run: LiveRun, request: Stop, asked: ControlRequest) -> None:
        """Hand a stop or keep of one candidate to the engine, refusing what never fits."""
        field, candidate = ("candidate", request.candidate)
        if candidate is None:
            field, candidate = ("keep", request.keep)
        assert candidate is not None
        candidates = run.resolved.parameters.candidates
        if candidates == 1:
            raise ProtocolError(ErrorCode.INVALID_VALUE, "a single run has no candidates", field)
        if candidate >= candidates:
            message = f"the search has candidates 0 to {candidates - 1}"
            raise ProtocolError(ErrorCode.INVALID_VALUE, message, field)
        control_id = self._hand_over(run, asked)
        if field == "keep":
            run.control.keep_candidate(candidate, control_id)
        else:
            run.control.stop_candidate(candidate, control_id)

    async def set(self, request: Set, requester: Outbox) -> None:
        """Change a run's settings for the holder of its token; ``applied`` acknowledges it."""
        run = await self._owned(request.run_id, request.token, requester)
        change = self.catalog.settings_change(request, run.resolved.parameters)
        asked = ControlRequest(requester, request.request_id)
        if run.state != "queued":
            run.control.set(change, self._hand_over(run, asked))
            return
        before = run.resolved.parameters
        run.resolved = run.resolved.with_settings(change)
        changes = tuple(
            SettingChange(name, float(getattr(before, name)), float(new))  # type: ignore[arg-type]
            for name, new in change.items()
            if name not in SEARCH_SETTINGS
        )
        searched = tuple(
            SearchSettingChange(name, float(getattr(before.search, name)), float(new))  # type: ignore[arg-type]
            for name, new in change.items()
            if name in SEARCH_SETTINGS
        )
        applied = Applied(request.request_id, 0, changes, None, searched)
        run.publish(run.log.append(stamp(applied, run.run_id, run.log.next_seq)), asked)

    async def _owned(self, run_id: str, token: str, requester: Outbox) -> LiveRun:
        """The run ``run_id`` if ``token`` controls it and it can still change; ``requester``
        becomes its owner."""
        run = self._runs.get(run_id)
        if run is None:
            if await self.store.last_seq(run_id) is not None:
                raise ProtocolError(ErrorCode.RUN_FINISHED, f"run {run_id} has finished", "run_id")
            raise ProtocolError(ErrorCode.UNKNOWN_RUN, f"no run {run_id!r} is known", "run_id")
        if not run.token_matches(token):
            raise ProtocolError(ErrorCode.FORBIDDEN, "this token does not control the run", "token")
        if run.finished or run.ending:
            raise ProtocolError(ErrorCode.RUN_FINISHED, f"run {run_id} has finished", "run_id")
        run.owner = requester
        self.watching.keep(run)
        return run

    def _hand_over(self, run: LiveRun, asked: ControlRequest) -> str:
        """The id the engine knows ``asked`` under (request ids are the clients' own, and two
        connections may use the same one)."""
        control_id = f"c{next(self._control_ids)}"
        run.requests[control_id] = asked
        return control_id
