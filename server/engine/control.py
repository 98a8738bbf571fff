"""Steering a run from another thread: :class:`RunControl`.

The run's owner (through the server) calls :meth:`RunControl.stop` and :meth:`RunControl.set` from
any thread; the sampler thread calls :meth:`RunControl.take` at every step boundary and applies
what it gets before the next step. Each request made with a request id is
acknowledged by an ``applied`` event carrying the step at which it took effect.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final, Literal, get_args

from stepwatch.protocol import FinishReason, StopMode

from .errors import ParamError
from .params import SettingsChange, check_change

#: The reasons a stop may give: the owner's, or the server's own (see
#: :class:`~stepwatch.protocol.FinishReason`).
STOP_REASONS: Final[tuple[FinishReason, ...]] = ("stopped", "abandoned", "shutdown")
STOP_MODES: Final[tuple[StopMode, ...]] = get_args(StopMode)


@dataclass(frozen=True)
class StopRequest:
    """A request to end the run, and the reason the result will carry."""

    mode: StopMode
    reason: FinishReason
    request_id: str | None


@dataclass(frozen=True)
class SetRequest:
    """A request to change live settings."""

    change: SettingsChange
    request_id: str | None


@dataclass(frozen=True)
class CandidateRequest:
    """A request to stop one candidate of a search, or to keep it and stop every other."""

    action: Literal["stop", "keep"]
    candidate: int
    request_id: str | None


@dataclass(frozen=True)
class PendingControls:
    """What the sampler takes at a step boundary: the settings changes and the candidate
    requests in arrival order, and the stop request, if any."""

    changes: tuple[SetRequest, ...] = ()
    stop: StopRequest | None = None
    candidates: tuple[CandidateRequest, ...] = ()


_NOTHING = PendingControls()


class RunControl:
    """Thread-safe requests to one run, read by the sampler at each step boundary.

    Create one per run and hand it to :func:`~.monitor.run_monitored`; keep a reference to steer
    the run. Requests made before the run starts are applied at its first step boundary (a stop
    made before the first step ends the run before it denoises anything).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: list[SetRequest] = []
        self._candidates: list[CandidateRequest] = []
        self._stop: StopRequest | None = None
        self._stop_taken = False
        # Read without the lock on the sampler's hot path; a stale False only delays a request
        # by one step.
        self._pending = False

    def stop(
        self,
        mode: StopMode = "finish",
        reason: FinishReason = "stopped",
        request_id: str | None = None,
    ) -> None:
        """Ask the run to end at the next step boundary.

        ``finish`` finishes the run with a short clean tail, ``estimate`` keeps the decoded x0
        estimate of that step, ``abort`` returns no image. A later ``abort`` upgrades a pending
        ``finish``; otherwise the first stop wins. ``reason`` is one of
        ``stopped``, ``abandoned`` and ``shutdown``.
        """
        if mode not in STOP_MODES:
            raise ParamError("mode", f"a stop mode is one of {', '.join(STOP_MODES)}")
        if reason not in STOP_REASONS:
            raise ParamError("reason", f"a stop reason is one of {', '.join(STOP_REASONS)}")
        with self._lock:
            if self._stop_taken:
                return
            current = self._stop
            if current is None or (current.mode == "finish" and mode == "abort"):
                self._stop = StopRequest(mode, reason, request_id)
            self._pending = True

    def set(self, change: SettingsChange, request_id: str | None = None) -> None:
        """Ask the run to change live settings (by name, to new values) at the next step
        boundary. Raises :class:`~.errors.ParamError` for a change the protocol's ``set``
        would refuse."""
        checked = check_change(change)
        with self._lock:
            self._changes.append(SetRequest(checked, request_id))
            self._pending = True

    def stop_candidate(self, candidate: int, request_id: str | None = None) -> None:
        """Ask a search to stop ``candidate`` at the next step boundary (the search goes on)."""
        self._candidate("stop", candidate, request_id)

    def keep_candidate(self, candidate: int, request_id: str | None = None) -> None:
        """Ask a search to stop every candidate but ``candidate`` at the next step boundary;
        ``candidate`` finishes as the run's result."""
        self._candidate("keep", candidate, request_id)

    def _candidate(
        self, action: Literal["stop", "keep"], candidate: int, request_id: str | None
    ) -> None:
        if isinstance(candidate, bool) or not isinstance(candidate, int) or candidate < 0:
            raise ParamError("candidate", f"a candidate is a number from 0, got {candidate!r}")
        with self._lock:
            self._candidates.append(CandidateRequest(action, candidate, request_id))
            self._pending = True

    def take(self) -> PendingControls:
        """Take every pending request; called by the sampler thread at each step boundary.

        Each request is handed out once. Once a stop has been taken the run is ending, and later
        stops are ignored.
        """
        if not self._pending:
            return _NOTHING
        with self._lock:
            changes = tuple(self._changes)
            self._changes.clear()
            candidates = tuple(self._candidates)
            self._candidates.clear()
            self._pending = False
            stop, self._stop = self._stop, None
            self._stop_taken = self._stop_taken or stop is not None
            return PendingControls(changes, stop, candidates)
