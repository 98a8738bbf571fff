"""How long a run's steps take, and so how long the rest will: the ``progress`` event's ETA."""

from __future__ import annotations

from collections.abc import Callable

from stepwatch.protocol import Progress

from .events import fit_seconds

__all__ = ["ETA_SMOOTHING", "StepTimer"]

#: The weight of the newest step in the smoothed step time.
ETA_SMOOTHING = 0.3


class StepTimer:
    """Times the steps of one run with ``clock``; :meth:`start` when it starts, then
    :meth:`progress` after every step."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = self.last_step_at = 0.0
        self.step_seconds: float | None = None

    def start(self) -> float:
        """Mark the run's start; return the clock's reading."""
        self.started = self.last_step_at = self.clock()
        return self.started

    def progress(self, step: int, total: int) -> Progress:
        """The ``progress`` of ``step`` done out of ``total``, its ETA from the smoothed step
        time."""
        now = self.clock()
        took, self.last_step_at = now - self.last_step_at, now
        if self.step_seconds is None:
            self.step_seconds = took
        else:
            self.step_seconds += ETA_SMOOTHING * (took - self.step_seconds)
        eta = self.step_seconds * max(total - step, 0)
        return Progress(step, total, fit_seconds(now - self.started), fit_seconds(eta))
