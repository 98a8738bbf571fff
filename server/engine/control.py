"""Steering a run from another thread: :class:`RunControl`.

The run's owner (through the server) calls :meth:`RunControl.stop` and :meth:`RunControl.set` from
any thread; the sampler thread calls :meth:`RunControl.take` at every step boundary and applies
what it gets before the next step. Each request is acknowledged by an
:class:`~.events.Applied` event carrying the step at which it took effect.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .errors import ParamError
from .events import FinishReason, StopMode
from .params import SettingsChange

STOP_REASONS = (FinishReason.STOPPED, FinishReason.ABANDONED, FinishReason.SHUTDOWN)


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
class PendingControls:
    """What the sampler takes at a step boundary: the settings changes in arrival order and the
    stop request, if any."""

    changes: tuple[SetRequest, ...] = ()
    stop: StopRequest | None = None


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
        self._stop: StopRequest | None = None
        self._stop_taken = False
        # Read without the lock on the sampler's hot path; a stale False only delays a request
        # by one step.
        self._pending = False

    def stop(
        self,
        mode: StopMode = StopMode.FINISH,
        reason: FinishReason = FinishReason.STOPPED,
        request_id: str | None = None,
    ) -> None:
        """Ask the run to end at the next step boundary.

        ``finish`` keeps the decoded x0 estimate of that step as the result; ``abort`` returns no
        image. A later ``abort`` upgrades a pending ``finish``; otherwise the first stop wins.
        ``reason`` is one of ``stopped``, ``abandoned`` and ``shutdown``.
        """
        mode = StopMode(mode)
        if reason not in STOP_REASONS:
            raise ParamError("reason", f"a stop reason is one of {', '.join(STOP_REASONS)}")
        with self._lock:
            if self._stop_taken:
                return
            current = self._stop
            if current is None or (current.mode is StopMode.FINISH and mode is StopMode.ABORT):
                self._stop = StopRequest(mode, FinishReason(reason), request_id)
            self._pending = True

    def set(self, change: SettingsChange, request_id: str | None = None) -> None:
        """Ask the run to change live settings at the next step boundary."""
        if not isinstance(change, SettingsChange):
            raise ParamError("change", "must be a SettingsChange")
        with self._lock:
            self._changes.append(SetRequest(change, request_id))
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
            self._pending = False
            stop, self._stop = self._stop, None
            self._stop_taken = self._stop_taken or stop is not None
            return PendingControls(changes, stop)
