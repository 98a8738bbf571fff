"""Expected-score curves: what a model usually scores at each point of a run.

A verifier's score means little without the point of the run it was taken at: an early x0
estimate is blurry and scores low however well the run is going. An :class:`ExpectedCurve`
holds, for one model, verifier and sampler, the median and a low quantile of the score at each
fraction of the run (step / total steps), from the checks of completed runs. The policy
(:mod:`.policy`) compares a run's score with it: "clearly below what this model usually scores
here" is a reason to raise guidance; "the score this model reaches at the end is usually reached
by now" is part of the reason to stop.

Curves come from two places: shipped with a model (the built-in model's, computed by
``stepwatch.server.models.builtin.curves`` from its own runs) and learned from the history of
completed runs in the server's store (:meth:`ExpectedCurve.from_runs`), which say how many runs
they rest on. This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Points of the run a learned curve is kept at: 5%, 10%, ..., 100% of the steps.
BINS = 20
#: The quantile the low band is drawn at: a run under it is clearly behind (1 run in 10 is).
LOW_QUANTILE = 0.1
#: Runs a curve learned from history needs before the policy trusts it.
MIN_RUNS = 8


@dataclass(frozen=True)
class ExpectedCurve:
    """Median and low-band score by fraction of the run, and the runs it rests on."""

    progress: tuple[float, ...]
    median: tuple[float, ...]
    low: tuple[float, ...]
    runs: int
    source: str = "history"
    #: The mean change of the final score when runs under the low band at the middle of the run
    #: had CFG raised there, and how many runs that rests on (``None``: never measured).
    raise_gain: float | None = None
    raise_runs: int = 0

    def __post_init__(self) -> None:
        if not self.progress or not len(self.progress) == len(self.median) == len(self.low):
            raise ValueError("a curve needs one median and one low value per point")
        if list(self.progress) != sorted(self.progress):
            raise ValueError("a curve's points must be in increasing order")

    def at(self, progress: float) -> tuple[float, float]:
        """``(median, low)`` at ``progress`` (0..1), interpolated, held flat beyond the ends."""
        points = self.progress
        if progress <= points[0]:
            return self.median[0], self.low[0]
        if progress >= points[-1]:
            return self.median[-1], self.low[-1]
        right = bisect.bisect_right(points, progress)
        left = right - 1
        share = (progress - points[left]) / (points[right] - points[left])
        return (
            self.median[left] + share * (self.median[right] - self.median[left]),
            self.low[left] + share * (self.low[right] - self.low[left]),
        )

    @property
    def final(self) -> float:
        """The median score at the end of a run."""
        return self.median[-1]

    def describe(self) -> str:
        """Say where the curve comes from, for reasons: ``shipped curve of 192 runs``."""
        return f"{self.source} curve of {self.runs} runs"

    @classmethod
    def from_runs(
        cls, runs: Iterable[Sequence[tuple[float, float]]], source: str = "history"
    ) -> ExpectedCurve | None:
        """Learn a curve from runs given as ``(progress, score)`` checks; ``None`` when no bin
        of the run has a check. Each bin takes the checks whose progress rounds up into it."""
        bins: list[list[float]] = [[] for _ in range(BINS)]
        count = 0
        for checks in runs:
            count += 1
            for progress, score in checks:
                index = min(BINS - 1, max(0, math.ceil(progress * BINS) - 1))
                bins[index].append(score)
        kept = [(i, values) for i, values in enumerate(bins) if values]
        if not kept:
            return None
        return cls(
            progress=tuple((i + 1) / BINS for i, _ in kept),
            median=tuple(statistics.median(v) for _, v in kept),
            low=tuple(_quantile(v, LOW_QUANTILE) for _, v in kept),
            runs=count,
            source=source,
        )

    @property
    def raising_hurts(self) -> bool:
        """Whether raising CFG was measured to leave runs that fell behind worse off."""
        return self.raise_gain is not None and self.raise_gain <= 0

    def to_json(self) -> dict[str, Any]:
        """The curve as a JSON object (see :meth:`from_json`)."""
        data: dict[str, Any] = {
            "progress": list(self.progress),
            "median": [round(v, 4) for v in self.median],
            "low": [round(v, 4) for v in self.low],
            "runs": self.runs,
        }
        if self.raise_gain is not None:
            data["raise_gain"] = round(self.raise_gain, 4)
            data["raise_runs"] = self.raise_runs
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "shipped") -> ExpectedCurve:
        """Read a curve written by :meth:`to_json`."""
        return cls(
            progress=tuple(float(v) for v in data["progress"]),
            median=tuple(float(v) for v in data["median"]),
            low=tuple(float(v) for v in data["low"]),
            runs=int(data["runs"]),
            source=source,
            raise_gain=None if data.get("raise_gain") is None else float(data["raise_gain"]),
            raise_runs=int(data.get("raise_runs", 0)),
        )


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def curve_key(verifier: str, sampler: str) -> str:
    """The key a model's shipped curves are filed under: ``adherence/dpmpp_2m``."""
    return f"{verifier}/{sampler}"
