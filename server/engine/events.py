"""What a run reports while it goes: typed, frozen engine events.

:func:`~.monitor.run_monitored` calls its event sink, an :data:`EventSink`, from the sampler's
thread, in this order::

    Started  (Progress | Check | Adjusted | Applied)*  Finished

- :class:`Started` once, with the resolved parameters and the planned number of steps;
- :class:`Progress` after every denoising step;
- :class:`Check` every ``check_interval`` steps, with the verifier's score, the policy's decision
  and a thumbnail of the decoded x0 estimate;
- :class:`Adjusted` when a decision changed the run (CFG raised);
- :class:`Applied` when a control request (a ``set`` or a ``stop``) took effect;
- :class:`Finished` last, always, carrying the :class:`RunResult` that the call also returns.

The sink must return quickly: the sampler waits for it. A server forwards events to its event loop
(e.g. through a bounded memory stream) and never blocks in the sink. This module imports neither
torch nor diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from .params import PreviewFormat, RunParams, SettingsChange


class Decision(StrEnum):
    """What the policy decided at a check."""

    CONTINUE = "continue"
    RAISE_CFG = "raise_cfg"
    EARLY_STOP = "early_stop"


class FinishReason(StrEnum):
    """Why a run ended.

    ``abandoned`` and ``shutdown`` are stop reasons a server passes in through
    :meth:`~.control.RunControl.stop` (the owner went away; the server is shutting down).
    """

    COMPLETED = "completed"
    EARLY_STOP = "early_stop"
    STOPPED = "stopped"
    FAILED = "failed"
    ABANDONED = "abandoned"
    SHUTDOWN = "shutdown"


class StopMode(StrEnum):
    """How a stop request ends a run: ``finish`` re-plans the rest into a short tail to zero
    noise and returns its finished image (see :mod:`.finish`), ``estimate`` returns the decoded
    x0 estimate of the current step at once, ``abort`` returns no image."""

    FINISH = "finish"
    ESTIMATE = "estimate"
    ABORT = "abort"


class FailureCode(StrEnum):
    """Why a run failed, as a stable code for clients."""

    INVALID_PARAMS = "invalid_params"
    UNSUPPORTED_SCHEDULER = "unsupported_scheduler"
    NAN_DETECTED = "nan_detected"
    VERIFIER_FAILED = "verifier_failed"
    OUT_OF_MEMORY = "out_of_memory"
    SINK_FAILED = "sink_failed"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Preview:
    """An encoded thumbnail of the decoded x0 estimate."""

    format: PreviewFormat
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class QualityRecord:
    """One check as the run's quality history keeps it.

    ``cfg`` is the guidance scale the steps up to this check ran with (a raise decided here
    applies from the next step); ``elapsed`` is seconds since the run started.
    """

    step: int
    score: float
    components: Mapping[str, float]
    threshold: float
    decision: Decision
    reason: str
    cfg: float
    elapsed: float


@dataclass(frozen=True)
class Started:
    """The run has started with these resolved parameters and plans ``total_steps`` steps."""

    params: RunParams
    total_steps: int


@dataclass(frozen=True)
class Progress:
    """Step ``step`` of ``total`` is done. ``eta`` (seconds) extrapolates a moving average."""

    step: int
    total: int
    elapsed: float
    eta: float


@dataclass(frozen=True)
class Check:
    """A check at ``quality.step``: the score, the decision and the previewed x0 estimate."""

    quality: QualityRecord
    preview: Preview


@dataclass(frozen=True)
class Adjusted:
    """A decision changed the run: ``what`` went from ``old`` to ``new`` after step ``step``."""

    step: int
    what: str
    old: float
    new: float
    reason: str


@dataclass(frozen=True)
class Applied:
    """A control request took effect at the step boundary after step ``step``.

    For a ``set``, ``change`` holds what was applied and ``refused`` says what was not and why
    (empty when everything applied). For a ``stop``, ``stop`` is its mode.
    """

    step: int
    request_id: str | None
    change: SettingsChange | None = None
    stop: StopMode | None = None
    refused: str = ""


@dataclass(frozen=True)
class RunFailure:
    """Why a failed run failed: a stable code and a message for people."""

    code: FailureCode
    message: str


@dataclass(frozen=True)
class ResultImage:
    """The run's image, PNG-encoded."""

    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    ``image`` is the pipeline's final image for ``completed``, the decoded x0 estimate at the stop
    step for ``early_stop`` and a ``finish`` stop, and ``None`` for an abort or a failure.
    ``final_score`` is the score of the last check (``None`` when no check ran).
    """

    reason: FinishReason
    steps_run: int
    total_steps: int
    final_score: float | None
    history: tuple[QualityRecord, ...]
    image: ResultImage | None
    elapsed: float
    params: RunParams
    error: RunFailure | None = None


@dataclass(frozen=True)
class Finished:
    """The run is over; the same result :func:`~.monitor.run_monitored` returns."""

    result: RunResult


EngineEvent = Started | Progress | Check | Adjusted | Applied | Finished
EventSink = Callable[[EngineEvent], None]
