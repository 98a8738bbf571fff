"""A scripted engine at the service's declared engine interface
(:class:`~stepwatch.server.execution.Sampler`), for service tests that are about the service —
queues, ownership, fan-out, replay, the store — and not about denoising.

It plays a run the way :mod:`stepwatch.server.engine.events` orders a real one: ``started``,
a ``progress`` per step, a ``check`` every ``check_interval`` steps (scores from a script, a
tiny thumbnail), ``adjusted`` when a low score raises CFG, ``applied`` / ``error`` for the
owner's requests taken at each step boundary, and ``finished`` with a solid-colour PNG. It never
touches torch or a pipeline, so a service test on it spends its time in the service.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence

from PIL import Image as PILImage

from stepwatch import protocol
from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    FinishReason,
    HistoryEntry,
    Preview,
    Progress,
    SettingChange,
    Started,
)
from stepwatch.server.engine.control import RunControl, StopRequest
from stepwatch.server.engine.curves import ExpectedCurve
from stepwatch.server.engine.events import EventSink
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.params import ResolvedParams


def _png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class ScriptedEngine:
    """Plays runs from a script. ``scores`` are the checks' scores in turn (the last repeats);
    each step takes ``step_seconds``. ``gate``, when given, holds every run before its first
    step until it is set. ``runs`` counts the runs played."""

    def __init__(
        self,
        scores: Sequence[float] = (0.5,),
        step_seconds: float = 0.0,
        gate: threading.Event | None = None,
    ) -> None:
        self.scores = tuple(scores)
        self.step_seconds = step_seconds
        self.gate = gate
        self.runs = 0

    def __call__(
        self,
        model: LoadedModel,
        params: ResolvedParams,
        control: RunControl,
        sink: EventSink,
        curve: ExpectedCurve | None,
    ) -> Finished:
        self.runs += 1
        return _ScriptedRun(self, params, control, sink).play()


class _ScriptedRun:
    def __init__(
        self, engine: ScriptedEngine, params: ResolvedParams, control: RunControl, sink: EventSink
    ) -> None:
        self.engine, self.control, self.sink = engine, control, sink
        self.p = params.parameters
        self.cfg = self.p.cfg
        self.threshold = self.p.quality_threshold
        self.interval = self.p.check_interval
        self.history: list[HistoryEntry] = []
        self.started = time.monotonic()

    def play(self) -> Finished:
        self.sink(Started(self.p))
        if self.engine.gate is not None:
            self.engine.gate.wait()
        reason: FinishReason = "completed"
        step = 0
        stop = self._controls(0)
        if stop is not None:  # a stop before the first step ends the run with nothing
            return self._finished(stop.reason, 0, image=False)
        for step in range(1, self.p.steps + 1):
            time.sleep(self.engine.step_seconds)
            self.sink(Progress(step, self.p.steps, self._elapsed(), None))
            stop = self._controls(step)
            if stop is not None:
                return self._finished(stop.reason, step, image=stop.mode != "abort")
            if step % self.interval == 0 and self._check(step) == "early_stop":
                reason = "early_stop"
                break
        return self._finished(reason, step, image=True)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _controls(self, step: int) -> StopRequest | None:
        pending = self.control.take()
        for request in pending.changes:
            changes = []
            for name, value in request.change.items():
                if name == "cfg" and (value > 1.0) != (self.p.cfg > 1.0):
                    if request.request_id is not None:
                        message = "cannot switch guidance on or off mid-run"
                        self.sink(Error(ErrorCode.INVALID_VALUE, message, None, request.request_id))
                    continue
                old = {"cfg": self.cfg, "quality_threshold": self.threshold}.get(
                    name, float(self.interval)
                )
                if name == "cfg":
                    self.cfg = value
                elif name == "quality_threshold":
                    self.threshold = value
                elif name == "check_interval":
                    self.interval = int(value)
                changes.append(SettingChange(name, old, value))
            if changes and request.request_id is not None:
                self.sink(Applied(request.request_id, step, tuple(changes), None))
        if pending.stop is None:
            return None
        if pending.stop.request_id is not None:
            self.sink(Applied(pending.stop.request_id, step, (), pending.stop.mode))
        return pending.stop

    def _check(self, step: int) -> str:
        score = self.engine.scores[min(len(self.history), len(self.engine.scores) - 1)]
        decision: protocol.Decision = "continue"
        if score >= self.threshold and self.p.early_stop and step >= self.p.min_steps:
            decision = "early_stop"
        elif score < self.threshold and self.p.scale_factor > 1.0 and self.cfg < self.p.cfg_max:
            decision = "raise_cfg"
        side = max(min(self.p.preview_size, 8), 1)
        preview = None
        if self.p.preview_size > 0:
            preview = Preview("png", side, side, _png(side, side, (int(255 * score), 0, 0)))
        check = Check(step, score, {"scripted": score}, self.threshold, decision, "scripted",
                      self.cfg, preview)  # fmt: skip
        self.history.append(check.entry(self._elapsed()))
        self.sink(check)
        if decision == "raise_cfg":
            raised = min(self.cfg * self.p.scale_factor, self.p.cfg_max)
            self.sink(Adjusted(step, "cfg", self.cfg, raised, "scripted"))
            self.cfg = raised
        return decision

    def _finished(self, reason: FinishReason, steps_run: int, *, image: bool) -> Finished:
        result = Finished(
            reason,
            steps_run,
            self._elapsed(),
            self.history[-1].score if self.history else None,
            tuple(self.history),
            protocol.Image(
                self.p.width, self.p.height, _png(self.p.width, self.p.height, (0, 0, 255))
            )
            if image
            else None,
            None,
        )
        self.sink(result)
        return result
