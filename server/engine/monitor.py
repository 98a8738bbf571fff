"""The monitored run: drive a pipeline, watch its x0 estimate, act on the verifier's scores.

:func:`run_monitored` runs one pipeline call with a ``callback_on_step_end`` that, after every
denoising step:

1. emits ``progress``;
2. takes the control's pending requests and applies them (``set`` changes, ``stop``);
3. every ``check_interval`` steps (the current interval, which a ``set`` may change), takes the
   x0 estimate, decodes it once with the preview decoder and scores that image with the
   verifier; when that check is due, it asks the policy, applies its decision and emits
   ``check`` (and ``adjusted`` when CFG was raised). A ``strict`` run's check is due at once; an
   ``overlapped`` run's is computed beside the sampler and due one step later, before that
   step's controls (:mod:`.checking`).

The events are the protocol's (see :mod:`.events`); the run's result is its ``finished``.

Non-check steps do nothing else, so monitoring costs almost nothing between checks.

A CFG raise sets the pipeline's ``_guidance_scale``, which the standard CFG pipelines read at every
step, so it applies from the next step. An early stop or a ``finish`` stop re-plans the rest of
the schedule into a short tail to zero noise (:mod:`.finish`); an ``estimate`` stop sets the
pipeline's ``_interrupt`` flag and hands it the x0 estimate as its latents, which the pipeline
decodes with its own decoder. A pipeline without an ``interrupt`` property (LCM, Lumina 2,
AuraFlow, ...) is left by raising from the step callback at that step boundary instead, and the
engine decodes the estimate with the model's VAE. An ``abort`` leaves the pipeline at once and
returns no image.

A run of more than one candidate is a search (:mod:`.search`).

Everything that goes wrong inside a run (an exception anywhere, NaN in x0 or the image, a failing
verifier, running out of memory, a failing sink) ends the run with reason ``failed`` and the
protocol's :class:`~stepwatch.protocol.ErrorCode`; nothing escapes into the caller's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from stepwatch import protocol
from stepwatch.protocol import (
    Adjusted,
    Applied,
    Decision,
    Error,
    ErrorCode,
    Finished,
    FinishReason,
    HistoryEntry,
    Progress,
    RunError,
    RunParameters,
    SettingChange,
    Started,
    StopMode,
)

from .checking import CheckFailed, CheckOutcome, CheckRunner, CheckWork
from .control import PendingControls, RunControl, SetRequest, StopRequest
from .curves import ExpectedCurve, curve_key
from .errors import UnsupportedScheduler, VerifierError
from .events import (
    EngineEvent,
    EventSink,
    fit_seconds,
    fit_text,
)
from .finish import Tail, plan_tail, schedule_position
from .model import LoadedModel
from .params import ResolvedParams
from .pipeline_call import call_arguments, classify_failure, emit_finished
from .policy import PolicySettings, Scored, cfg_refusal, decide
from .previews import PreviewDecoder, encode_png, to_uint8
from .search import run_search
from .steptimer import StepTimer
from .verifiers import Verifier, VerifierRegistry
from .x0 import StepCapture

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class _Failed(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = RunError(code, fit_text(message))


class _EndedEarly(Exception):
    """Raised from the step callback of a pipeline that has no ``interrupt`` to leave its loop
    at a step boundary; the run's image is ``x0`` decoded with the model's own decoder."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__("ended at a step boundary")
        self.x0 = x0


class _Aborted(Exception):
    def __init__(self, reason: FinishReason) -> None:
        super().__init__(reason)
        self.reason = reason


def run_monitored(
    model: LoadedModel,
    params: ResolvedParams,
    verifiers: VerifierRegistry,
    control: RunControl,
    sink: EventSink,
    *,
    curve: ExpectedCurve | None = None,
    clock: Clock = time.perf_counter,
) -> Finished:
    """Run ``params`` (resolved against ``model`` by :meth:`~.model.LoadedModel.resolve`) under
    monitoring; return its ``finished`` event (unstamped). Never raises.

    ``curve`` is what this model usually scores with the run's verifier and sampler (the
    policy's yardstick, see :mod:`.policy`); by default the model's shipped curve, if any.

    Call it from a worker thread: it blocks for the whole run, holding ``model.lock`` (a model
    runs one run at a time; a second call waits). ``sink`` receives every event, on this thread.
    A verifier that cannot be had ends the run at once with ``failed`` (then the only event is
    ``finished``).
    """
    wanted = params.parameters.verifier
    try:
        if params.parameters.model != model.name:
            raise VerifierError(f"the parameters were resolved for model {params.parameters.model}")
        verifier = verifiers.get(wanted)
    except VerifierError as exc:
        code = ErrorCode.VERIFIER_FAILED if wanted in verifiers else ErrorCode.INVALID_VALUE
        result = Finished("failed", 0, 0.0, None, (), None, RunError(code, fit_text(str(exc))))
        emit_finished(sink, result)
        return result
    if curve is None:
        curve = model.curves.get(curve_key(wanted, params.parameters.sampler))
    decoder = model.decoders[params.preview_decoder]
    if params.parameters.candidates > 1:
        with model.lock:
            return run_search(model, params, verifier, decoder, control, sink, clock=clock)
    run = _MonitoredRun(model, params, verifier, decoder, control, sink, clock, curve)
    with model.lock:
        return run.execute()


class _MonitoredRun:
    """The state of one run, driven by the pipeline's step callback.

    Its 21 methods are the phases of that one callback (progress, controls, check, finishing
    tail, the end) over state they all read and change at every step (the step, the CFG in use,
    the policy's settings, the history, the tail); split into classes, each would reach into the
    others' state at every step, so they stay together, grouped by phase below."""

    def __init__(
        self,
        model: LoadedModel,
        resolved: ResolvedParams,
        verifier: Verifier,
        decoder: PreviewDecoder,
        control: RunControl,
        sink: EventSink,
        clock: Clock,
        curve: ExpectedCurve | None,
    ) -> None:
        params = resolved.parameters
        self.model, self.verifier, self.decoder = model, verifier, decoder
        self.params: RunParameters = params
        self.initial_latent = resolved.initial_latent
        self.inputs = resolved.inputs
        self.control, self.sink, self.clock = control, sink, clock
        self.start_cfg = self.cfg = params.cfg
        self.settings = PolicySettings.for_run(
            params, guidance_live=model.guidance_live, curve=curve
        )
        self.interval = params.check_interval
        self.total = params.steps
        self.step = 0
        self.last_check = 0
        self.history: list[HistoryEntry] = []
        self.started = 0.0
        self.timer = StepTimer(clock)
        self.ending: FinishReason | None = None
        self.capture: StepCapture | None = None
        self.tail: Tail | None = None
        self.finishing_total = 0
        work = CheckWork(
            decoder, verifier, params.verifier, params.prompt, params.preview_size,
            params.preview_format,
        )  # fmt: skip
        self.checks = CheckRunner(work, params.checks)

    # -- the run as a whole --------------------------------------------------------------------

    def execute(self) -> Finished:
        self.started = self.timer.start()
        pipeline = self.model.pipeline
        own_scheduler = pipeline.scheduler
        try:
            scheduler = self.model.build_scheduler(self.params.sampler, self.params.scheduler)
            # Read once: a pipeline's device walks every module of every component (~3 ms here).
            device = self.model.device
            self.total = _planned_steps(scheduler, self.total, device, self.params.strength)
            self.capture = StepCapture(scheduler)
            pipeline.scheduler = scheduler
            self._emit(Started(self.params))
            self._apply_controls(self.control.take())  # a stop before the first step aborts
            output = pipeline(**self._call_arguments(device))
            self._apply_check(self.checks.drain(), last=True)
            return self._finish_result(_first_image(output), self.ending or "completed")
        except _EndedEarly as ended:
            return self._finish_early(ended.x0)
        except _Aborted as abort:
            return self._end(abort.reason, None)
        except (_Failed, CheckFailed) as failed:
            return self._end("failed", failed.error)
        except Exception as exc:  # no error inside a run may escape into the caller's thread
            return self._end("failed", classify_failure(exc))
        finally:
            self.checks.close()
            if self.capture is not None:
                self.capture.remove()
            pipeline.scheduler = own_scheduler
            if hasattr(pipeline, "_interrupt"):
                pipeline._interrupt = False

    def _call_arguments(self, device: torch.device) -> dict[str, Any]:
        latents = None
        if self.initial_latent is not None:
            dtype = getattr(self.model.pipeline, "dtype", torch.float32)
            latents = torch.from_numpy(self.initial_latent).to(device, dtype)
        return call_arguments(
            self.model,
            self.params,
            cfg=self.cfg,
            images=1,
            generator=torch.Generator("cpu").manual_seed(self.params.seed),
            callback=self._on_step,
            tensor_inputs=["latents"],
            latents=latents,
            inputs=self.inputs,
        )

    def _finish_result(self, images: Any, reason: FinishReason) -> Finished:
        image = None
        if images is not None:
            pixels = _as_uint8(images)
            image = encode_png(pixels)
        steps_run = self.total if reason == "completed" else self.step
        return self._end(reason, None, image=image, steps_run=steps_run)

    def _end(
        self,
        reason: FinishReason,
        error: RunError | None,
        *,
        image: protocol.Image | None = None,
        steps_run: int | None = None,
    ) -> Finished:
        result = Finished(
            reason=reason,
            steps_run=self.step if steps_run is None else steps_run,
            elapsed=fit_seconds(self.clock() - self.started),
            final_score=self.history[-1].score if self.history else None,
            history=tuple(self.history),
            image=image,
            error=error,
        )
        emit_finished(self.sink, result)
        return result

    def _emit(self, event: EngineEvent) -> None:
        try:
            self.sink(event)
        except Exception as exc:
            raise _Failed(ErrorCode.INTERNAL, f"the event sink failed: {exc!r}") from exc

    # -- every step ----------------------------------------------------------------------------

    def _on_step(
        self, pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        self.step = index + 1
        if index == 0:
            self.total = _steps_left(pipeline.scheduler)
        if self.tail is not None:
            return self._on_tail_step(pipeline, tensors)
        self._emit(self._progress())
        # An overlapped check of an earlier step is decided before this step's controls, with
        # the settings it would have been decided with at its own step.
        if self._apply_check(self.checks.due(self.step)) == "early_stop":
            return self._stop_early(pipeline, tensors, timestep)
        stop = self._apply_controls(self.control.take())
        if stop == "estimate":
            return self._stop_with_x0(pipeline, tensors, self._x0())
        if stop == "finish":
            return self._begin_tail(pipeline, tensors, timestep)
        if self.step - self.last_check >= self.interval:
            self.last_check = self.step
            x0 = self.model.to_spatial(self._estimate(), self.params.width, self.params.height)
            self.checks.submit(self.step, x0, self.cfg, self.total)
            if self._apply_check(self.checks.due(self.step)) == "early_stop":
                return self._stop_early(pipeline, tensors, timestep)
        return {}

    def _stop_early(self, pipeline: Any, tensors: dict[str, Any], timestep: Any) -> dict[str, Any]:
        self.ending = "early_stop"
        return self._begin_tail(pipeline, tensors, timestep)

    def _begin_tail(self, pipeline: Any, tensors: dict[str, Any], timestep: Any) -> dict[str, Any]:
        """Re-plan the rest of the schedule into a short tail to zero noise (see
        :mod:`.finish`); where that cannot be done, end now with the current estimate."""
        assert self.capture is not None
        scheduler = self.capture.scheduler
        try:
            position = schedule_position(scheduler, timestep)
        except ValueError:
            return self._stop_with_x0(pipeline, tensors, self._x0())
        tail = plan_tail(scheduler, self.capture.space, position)
        if tail is None:
            return self._stop_with_x0(pipeline, tensors, self._x0())
        self.tail = self.capture.tail = tail
        self.finishing_total = self.step + len(tail.positions)
        return {}

    def _on_tail_step(self, pipeline: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        assert self.tail is not None
        self._emit(self._progress())
        self._apply_controls(self.control.take())  # only an abort changes a finishing run
        if not self.tail.finished:
            return {}
        if self.tail.estimate is None:  # derailed at its first level: nothing new was learnt
            return self._stop_with_x0(pipeline, tensors, self._x0())
        return self._stop_with_x0(pipeline, tensors, self._finite(self.tail.estimate))

    def _progress(self) -> Progress:
        # While a tail finishes the run, the steps it will take are the re-planned count.
        return self.timer.progress(self.step, self.finishing_total or self.total)

    def _stop_with_x0(
        self, pipeline: Any, tensors: dict[str, Any], x0: torch.Tensor
    ) -> dict[str, Any]:
        """End the loop after this step; the pipeline decodes ``x0`` in place of its latents.

        A pipeline without ``interrupt`` (LCM, AuraFlow, Lumina 2) cannot be told to end its
        loop: the callback leaves it by raising, and the engine decodes ``x0`` itself."""
        if not hasattr(type(pipeline), "interrupt"):
            raise _EndedEarly(x0)
        pipeline._interrupt = True
        latents = tensors.get("latents")
        return {"latents": x0.to(latents.dtype) if isinstance(latents, torch.Tensor) else x0}

    def _finish_early(self, x0: torch.Tensor) -> Finished:
        """The result of a run that left its pipeline's loop early: ``x0`` decoded as the
        pipeline decodes its result, with the model's VAE (or as pixels)."""
        decoders = self.model.decoders
        decoder = decoders.get("vae") or decoders.get("identity") or self.decoder
        params = self.params
        try:
            with torch.inference_mode():
                images = decoder.decode(self.model.to_spatial(x0, params.width, params.height))
            return self._finish_result(images, self.ending or "completed")
        except _Failed as failed:
            return self._end("failed", failed.error)
        except Exception as exc:  # as in execute: nothing escapes into the caller's thread
            return self._end("failed", classify_failure(exc))

    def _x0(self) -> torch.Tensor:
        return self._finite(self._estimate())

    def _estimate(self) -> torch.Tensor:
        """The x0 estimate of the last step, read from the scheduler (on this thread only)."""
        assert self.capture is not None
        try:
            return self.capture.x0()
        except UnsupportedScheduler as exc:
            raise _Failed(ErrorCode.UNSUPPORTED_SCHEDULER, str(exc)) from exc

    def _finite(self, x0: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(x0).all()):
            raise _Failed(
                ErrorCode.NAN_DETECTED, f"the x0 estimate at step {self.step} is not finite"
            )
        return x0

    # -- controls ------------------------------------------------------------------------------

    def _apply_controls(self, pending: PendingControls) -> StopMode | None:
        """Apply pending requests; return how the run must now end, if it must."""
        for request in pending.changes:
            self._apply_change(request)
        for asked in pending.candidates:  # the service refuses these for a single run
            if asked.request_id is not None:
                message = f"a single run has no candidate {asked.candidate} to {asked.action}"
                self._emit(Error(ErrorCode.INVALID_VALUE, message, "candidate", asked.request_id))
        if pending.stop is None:
            return None
        return self._apply_stop(pending.stop)

    def _apply_stop(self, stop: StopRequest) -> StopMode | None:
        if stop.request_id is not None:
            self._emit(Applied(stop.request_id, self.step, (), stop.mode))
        if stop.mode == "abort" or self.step == 0:
            raise _Aborted(stop.reason)
        if self.tail is not None:
            return None  # already finishing
        self.ending = stop.reason
        return stop.mode

    def _apply_change(self, request: SetRequest) -> None:
        applied: list[SettingChange] = []
        refused: list[str] = []
        for name, value in request.change.items():
            match name:
                case "quality_threshold":
                    old = self.settings.quality_threshold
                    self.settings = dataclasses.replace(self.settings, quality_threshold=value)
                case "scale_factor":
                    old = self.settings.scale_factor
                    self.settings = dataclasses.replace(self.settings, scale_factor=value)
                case "check_interval":
                    old, self.interval = float(self.interval), int(value)
                case "cfg":
                    why = cfg_refusal(self.start_cfg, value)
                    if not self.model.guided:  # unconditional (DDPM, DDIM): nothing to guide
                        why = "this model has no classifier-free guidance"
                    if not why and not self.model.guidance_live and self.step > 0:
                        why = "this model reads its guidance only once per run"
                    if why:
                        refused.append(why)
                        continue
                    old = self.cfg
                    self._set_cfg(value)
                    # The owner's CFG holds: automatic CFG pauses for the rest of the run.
                    self.settings = dataclasses.replace(self.settings, owner_cfg_step=self.step)
                case _:  # a search's setting
                    refused.append(f"a single run has no {name}")
                    continue
            applied.append(SettingChange(name, old, float(value)))
        if request.request_id is None:
            return
        if applied:
            self._emit(Applied(request.request_id, self.step, tuple(applied), None))
        if refused:
            message = fit_text("; ".join(refused))
            self._emit(Error(ErrorCode.INVALID_VALUE, message, request_id=request.request_id))

    def _set_cfg(self, cfg: float) -> None:
        self.cfg = cfg
        # The standard pipelines read this attribute through their guidance_scale property at
        # every step, so the new value applies from the next step on.
        self.model.pipeline._guidance_scale = cfg

    # -- checks --------------------------------------------------------------------------------

    def _apply_check(self, outcome: CheckOutcome | None, *, last: bool = False) -> Decision | None:
        """Decide on a due check at this step's boundary, apply the decision and emit its
        ``check`` (and ``adjusted``); ``last``: the loop has ended, nothing can change."""
        if outcome is None:
            return None
        later = self.step > outcome.step
        scored: list[Scored] = [*self.history, outcome]
        total = self.step if last else self.total
        decision = decide(
            scored, self.settings, cfg=self.cfg, total_steps=total, applies_at=self.step
        )
        check = outcome.event(decision, self.settings.quality_threshold, self.step)
        self.history.append(check.entry(fit_seconds(self.clock() - self.started)))
        self._emit(check)
        if decision.decision == "raise_cfg":
            old = self.cfg
            self._set_cfg(decision.cfg)
            reason = fit_text(decision.reason)
            origin = outcome.step if later else None
            self._emit(Adjusted(self.step, "cfg", old, decision.cfg, reason, check_step=origin))
        return decision.decision


def _planned_steps(
    scheduler: Any, steps: int, device: torch.device, strength: float | None = None
) -> int:
    """How many times the pipeline will call back: one per timestep, which some samplers
    (Heun, DPM2) make nearly two per requested step; an image-to-image run (``strength``)
    skips the first ``steps - int(strength x steps)`` steps, as diffusers' ``get_timesteps``."""
    try:
        scheduler.set_timesteps(steps, device=device)
    except (TypeError, ValueError):  # schedules that need pipeline-computed arguments (mu)
        return steps if strength is None else min(int(steps * strength), steps)
    if strength is None:
        return len(scheduler.timesteps)
    skipped = steps - min(int(steps * strength), steps)
    return len(scheduler.timesteps) - skipped * int(getattr(scheduler, "order", 1))


def _steps_left(scheduler: Any) -> int:
    """The timesteps the pipeline's loop runs: all of them, less those an image-to-image
    pipeline skipped (its scheduler's ``begin_index``)."""
    begin = getattr(scheduler, "begin_index", None)
    return len(scheduler.timesteps) - (int(begin) if isinstance(begin, int) else 0)


def _first_image(output: Any) -> Any:
    images = getattr(output, "images", None)
    if images is None:
        raise _Failed(ErrorCode.INTERNAL, "the pipeline returned no images")
    return images


def _as_uint8(images: Any) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The first image of a pipeline's output (tensor, array or PIL list) as H×W×3 uint8."""
    if isinstance(images, torch.Tensor):
        tensor = images[:1].float()
    elif isinstance(images, np.ndarray):
        tensor = torch.from_numpy(images[:1]).float().permute(0, 3, 1, 2)
    else:
        first = np.asarray(images[0].convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(first).permute(2, 0, 1)[None]
    if not bool(torch.isfinite(tensor).all()):
        raise _Failed(ErrorCode.NAN_DETECTED, "the final image is not finite")
    return to_uint8(tensor)[0]
