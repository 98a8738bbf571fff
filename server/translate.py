"""Engine events into protocol run events, in one place: :class:`RunTranslator`.

The engine speaks in its own typed events (:mod:`stepwatch.server.engine.events`); clients see
the protocol's run events. One translator per run gives each event the ``seq`` its log assigns,
keeps the run's live settings so that ``applied`` and ``adjusted`` can report old and new
values, and clips whatever a verifier reported to what the wire carries. Events with no protocol
counterpart (the acknowledgement of a stop the server itself requested) are dropped here, before
they are numbered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import assert_never

from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    ErrorCode,
    Finished,
    HistoryEntry,
    Image,
    Preview,
    Progress,
    RunError,
    RunEvent,
    RunParameters,
    SettingChange,
    Started,
)
from stepwatch.protocol import limits as wire
from stepwatch.protocol.values import FinishReason, StopMode
from stepwatch.server.engine import events as engine
from stepwatch.server.engine.events import FailureCode
from stepwatch.server.engine.params import SettingsChange

__all__ = ["RunTranslator", "error_code"]

#: The settings a run's ``applied`` and ``adjusted`` events report, with their wire names.
LIVE_SETTINGS = ("quality_threshold", "scale_factor", "check_interval", "cfg")


def error_code(failure: FailureCode) -> ErrorCode:
    """The protocol's code for an engine failure."""
    match failure:
        case FailureCode.INVALID_PARAMS:
            return ErrorCode.INVALID_VALUE
        case FailureCode.UNSUPPORTED_SCHEDULER:
            return ErrorCode.UNSUPPORTED_SCHEDULER
        case FailureCode.NAN_DETECTED:
            return ErrorCode.NAN_DETECTED
        case FailureCode.VERIFIER_FAILED:
            return ErrorCode.VERIFIER_FAILED
        case FailureCode.OUT_OF_MEMORY:
            return ErrorCode.OUT_OF_MEMORY
        case FailureCode.SINK_FAILED | FailureCode.INTERNAL:
            return ErrorCode.INTERNAL
        case _:
            assert_never(failure)


def _text(text: str) -> str:
    return text if len(text) <= wire.MAX_MESSAGE_CHARS else text[: wire.MAX_MESSAGE_CHARS - 1] + "…"


def _seconds(value: float) -> float:
    return min(max(value, 0.0), wire.MAX_SECONDS) if math.isfinite(value) else 0.0


def _score(value: float) -> float:
    return min(max(value, wire.MIN_SCORE), wire.MAX_SCORE)


def _cfg(value: float) -> float:
    return min(max(value, wire.MIN_CFG), wire.MAX_CFG)


def _components(components: Mapping[str, float]) -> dict[str, float]:
    """The components a verifier reported, cut to what the wire carries (named, at most 16)."""
    kept: dict[str, float] = {}
    for name, value in components.items():
        if len(kept) == wire.MAX_COMPONENTS:
            break
        if name and math.isfinite(value):
            kept[name[: wire.MAX_NAME_CHARS]] = float(value)
    return kept


class RunTranslator:
    """Translates the events of one run.

    ``previews`` says whether checks carry their thumbnails (a run asked for ``preview_size``
    0 gets none). Not thread-safe: the run manager calls it from the event loop only.
    """

    def __init__(self, run_id: str, parameters: RunParameters, *, previews: bool) -> None:
        self.run_id = run_id
        self.parameters = parameters
        self.previews = previews
        self.settings: dict[str, float] = {
            name: float(getattr(parameters, name)) for name in LIVE_SETTINGS
        }

    def translate(
        self, event: engine.EngineEvent, seq: int, request_id: str | None
    ) -> RunEvent | None:
        """The run event ``seq`` for ``event``, or ``None`` when clients are not told about it.

        ``request_id`` is the client's id of the request an :class:`engine.Applied`
        acknowledges (``None`` for a stop the server requested, which gets no ``applied``).
        """
        match event:
            case engine.Started():
                return Started(self.run_id, seq, self.parameters)
            case engine.Progress(step=step, total=total, elapsed=elapsed, eta=eta):
                return Progress(self.run_id, seq, step, total, _seconds(elapsed), _seconds(eta))
            case engine.Check(quality=quality, preview=preview):
                return self._check(quality, preview, seq)
            case engine.Adjusted():
                return self._adjusted(event, seq)
            case engine.Applied():
                return self._applied(event, seq, request_id)
            case engine.Finished(result=result):
                return self.finished(result, seq)
            case _:
                assert_never(event)

    def _check(self, quality: engine.QualityRecord, preview: engine.Preview, seq: int) -> Check:
        thumbnail = None
        if self.previews:
            thumbnail = Preview(preview.format.value, preview.width, preview.height, preview.data)
        return Check(
            run_id=self.run_id,
            seq=seq,
            step=quality.step,
            score=_score(quality.score),
            components=_components(quality.components),
            threshold=_score(quality.threshold),
            decision=quality.decision.value,
            reason=_text(quality.reason),
            cfg=_cfg(quality.cfg),
            preview=thumbnail,
        )

    def _adjusted(self, event: engine.Adjusted, seq: int) -> Adjusted | None:
        if event.what not in self.settings:
            return None
        self.settings[event.what] = event.new
        return Adjusted(
            run_id=self.run_id,
            seq=seq,
            step=event.step,
            setting=event.what,  # type: ignore[arg-type]  # checked against LIVE_SETTINGS above
            old=event.old,
            new=event.new,
            reason=_text(event.reason),
        )

    def _applied(self, event: engine.Applied, seq: int, request_id: str | None) -> Applied | None:
        if request_id is None:
            return None
        if event.stop is not None:
            return Applied(self.run_id, seq, request_id, event.step, (), event.stop.value)
        changes = []
        for name in LIVE_SETTINGS:
            new = getattr(event.change, name, None) if event.change is not None else None
            if new is not None:
                changes.append(SettingChange(name, self.settings[name], float(new)))  # type: ignore[arg-type]
                self.settings[name] = float(new)
        if not changes:
            return None
        return Applied(self.run_id, seq, request_id, event.step, tuple(changes), None)

    def finished(self, result: engine.RunResult, seq: int) -> Finished:
        """The run's ``finished`` event ``seq`` for the engine's result."""
        error = None
        if result.reason is engine.FinishReason.FAILED:
            failure = result.error or engine.RunFailure(FailureCode.INTERNAL, "no reason given")
            error = RunError(error_code(failure.code), _text(failure.message))
        image = None
        if result.image is not None:
            image = Image(result.image.width, result.image.height, result.image.png)
        return Finished(
            run_id=self.run_id,
            seq=seq,
            reason=result.reason.value,
            steps_run=result.steps_run,
            elapsed=_seconds(result.elapsed),
            final_score=None if result.final_score is None else _score(result.final_score),
            history=tuple(self.history_entry(record) for record in result.history),
            image=image,
            error=error,
        )

    @staticmethod
    def history_entry(record: engine.QualityRecord) -> HistoryEntry:
        """A check as the run's quality history reports it."""
        return HistoryEntry(
            step=record.step,
            score=_score(record.score),
            components=_components(record.components),
            decision=record.decision.value,
            cfg=_cfg(record.cfg),
            threshold=_score(record.threshold),
            elapsed=_seconds(record.elapsed),
        )

    def queued_set(
        self,
        seq: int,
        request_id: str,
        change: SettingsChange,
        parameters: RunParameters,
    ) -> Applied | None:
        """The ``applied`` (step 0) of a ``set`` of a run that has not left the queue; the run
        will start with ``parameters``, which hold the change."""
        self.parameters = parameters
        return self._applied(engine.Applied(0, None, change=change), seq, request_id)

    def queued_stop(self, seq: int, request_id: str, mode: StopMode) -> Applied:
        """The ``applied`` of the owner's stop of a run that had not left the queue."""
        return Applied(self.run_id, seq, request_id, 0, (), mode)

    def unstarted(self, seq: int, reason: FinishReason) -> Finished:
        """The ``finished`` of a run that ended before it left the queue."""
        return Finished(self.run_id, seq, reason, 0, 0.0, None, (), None, None)

    def failed(self, seq: int, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> Finished:
        """A ``finished`` for a run the server could not carry to its end."""
        return Finished(
            self.run_id,
            seq,
            "failed",
            0,
            0.0,
            None,
            (),
            None,
            RunError(code, _text(message)),
        )
