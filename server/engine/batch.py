"""Runs that share a batch: several queued runs denoised as lanes of one pipeline call.

:func:`run_batch` runs two or more monitored runs of one model at once. The service gathers them
from a device queue when :func:`batch_key` gives them the same key: the same model, sampler,
schedule, size, step count, CFG, preview decoder and whether they have a negative prompt, one
candidate each, no initial latent, a pipeline whose batch tensors can follow a lane out
(:data:`~.lanes.REINDEXABLE`: those the step callback sees, and those it holds outside, through
:class:`~.lanes.HeldRows`), and **a CFG that cannot move**: a
pipeline's guidance scale is one number per call, so a run whose policy may raise CFG (guidance
on, a ``cfg_max`` above its ``cfg``, a ``scale_factor`` above 1, a model that reads its guidance
at every step, and no shipped curve that says raising CFG hurts with its verifier and sampler,
as the built-in model's say for its default DPM-Solver++) is never batched and runs alone,
exactly as before.

Each lane is its own run: its own prompt, its own generator seeded with its own seed (the
pipeline draws lane *i*'s starting noise and every later noise with generator *i*, so lane *i*
starts from exactly the noise of the lone run of that seed), its own verifier, policy settings,
check interval, history, controls and events. The denoiser evaluates all lanes in one call; a
lane's image matches its lone run's to within what the denoiser's batched arithmetic changes
(bench/throughput.py measures it).

A lane leaves the batch at a step boundary, and the batch is re-indexed without it (latents,
conditioning, scheduler state and generators, as a search's prune, :mod:`.lanes`), so the lanes
left go on exactly as before:

- an early stop of the policy, and an owner's ``finish`` or ``estimate`` stop, end the lane with
  its current x0 estimate, decoded by the model's own decoder (a lone run re-plans a short
  finishing tail for ``finish`` and early stops, :mod:`.finish`; a tail would re-plan the
  schedule every lane shares, so a lane cannot have one);
- an ``abort`` ends it with no image; a failure of its own (a non-finite estimate, its verifier,
  its sink) ends it ``failed``; a failure of the pipeline call fails every lane still in it.

The owner's ``set`` of ``quality_threshold``, ``scale_factor`` and ``check_interval`` applies as
in a lone run; ``set cfg`` is refused with ``invalid_value`` (the guidance scale is the batch's).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from stepwatch.protocol import (
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    FinishReason,
    HistoryEntry,
    RunError,
    SettingChange,
    Started,
)

from .control import PendingControls, RunControl
from .curves import ExpectedCurve, curve_key
from .errors import UnsupportedScheduler, VerifierError
from .events import EventSink, fit_cfg, fit_components, fit_score, fit_seconds, fit_text
from .lanes import REINDEXABLE, HeldRows, reindex_rows, reindex_scheduler
from .model import LoadedModel
from .params import ResolvedParams
from .pipeline_call import call_arguments, classify_failure, emit_finished
from .policy import CFG_OFF_AT, PolicySettings, Scored, decide
from .previews import PreviewDecoder, encode_png, encode_thumbnail, to_uint8
from .steptimer import StepTimer
from .verifiers import Verifier, VerifierRegistry, score_batch
from .x0 import StepCapture

__all__ = ["BatchMember", "batch_key", "run_batch"]

Clock = Callable[[], float]

#: Why ``set cfg`` is refused in a lane.
CFG_SHARED = (
    "cfg cannot change in a run that shares a batch: the batch's runs are denoised in one call, "
    "which has one guidance scale (runs whose CFG may change are never batched)"
)


@dataclasses.dataclass(frozen=True)
class BatchMember:
    """One run of a batch as the service hands it over: what a lone run is called with."""

    params: ResolvedParams
    control: RunControl
    sink: EventSink
    curve: ExpectedCurve | None = None


def batch_key(model: LoadedModel, resolved: ResolvedParams) -> Hashable | None:
    """What runs of ``model`` must share to be lanes of one batch (``None``: run alone)."""
    params = resolved.parameters
    if params.candidates > 1 or resolved.initial_latent is not None:
        return None
    if type(model.pipeline).__name__ not in REINDEXABLE:
        return None
    # The policy raises no CFG where the model's shipped curve (which the service prefers to a
    # learned one) says that raising has left such runs worse off.
    shipped = model.curves.get(curve_key(params.verifier, params.sampler))
    cfg_may_move = (
        params.cfg > CFG_OFF_AT
        and model.guidance_live
        and params.cfg_max > params.cfg
        and params.scale_factor > 1.0
        and not (shipped is not None and shipped.raising_hurts)
    )
    if cfg_may_move:
        return None
    return (
        model.name,
        params.sampler,
        params.scheduler,
        params.width,
        params.height,
        params.steps,
        params.cfg,
        resolved.preview_decoder,
        bool(params.negative_prompt),
    )


def run_batch(
    model: LoadedModel,
    members: Sequence[BatchMember],
    verifiers: VerifierRegistry,
    *,
    clock: Clock = time.perf_counter,
) -> list[Finished]:
    """Run ``members`` (of one :func:`batch_key`) as lanes of one pipeline call; return each
    one's ``finished``, in order. Never raises. Call it from a worker thread: it holds
    ``model.lock`` for the whole batch. Each member's sink receives its own events, on this
    thread."""
    lanes = [_Lane(model, member, verifiers, clock) for member in members]
    with model.lock:
        _Batch(model, lanes, clock).execute()
    return [lane.result for lane in lanes]


class _LaneEnded(Exception):
    def __init__(self, reason: FinishReason, error: RunError | None = None) -> None:
        super().__init__(reason)
        self.reason, self.error = reason, error


class _AllLeft(Exception):
    """Raised from the step callback of a pipeline without ``interrupt`` once no lane is left."""


@dataclasses.dataclass(frozen=True)
class _Scored:
    step: int
    score: float
    components: Mapping[str, float]


class _Lane:
    """One run's state in the batch: its policy, history, controls and events."""

    def __init__(
        self, model: LoadedModel, member: BatchMember, verifiers: VerifierRegistry, clock: Clock
    ) -> None:
        self.member = member
        self.params = params = member.params.parameters
        self.clock = clock
        self.generator = torch.Generator("cpu").manual_seed(params.seed)
        self.verifier: Verifier | None = None
        self.failure: RunError | None = None
        try:
            if params.model != model.name:
                raise VerifierError(f"the parameters were resolved for model {params.model}")
            self.verifier = verifiers.get(params.verifier)
        except VerifierError as exc:
            code = (
                ErrorCode.VERIFIER_FAILED
                if params.verifier in verifiers
                else ErrorCode.INVALID_VALUE
            )
            self.failure = RunError(code, fit_text(str(exc)))
        curve = member.curve or model.curves.get(curve_key(params.verifier, params.sampler))
        self.settings = PolicySettings.for_run(
            params, guidance_live=model.guidance_live, curve=curve
        )
        self.interval = params.check_interval
        self.last_check = 0
        self.history: list[HistoryEntry] = []
        self.timer = StepTimer(clock)
        self.started = 0.0
        unended = RunError(ErrorCode.INTERNAL, "the batch ended without a result for this run")
        self.result = Finished("failed", 0, 0.0, None, (), None, self.failure or unended)

    def emit(self, event: Any) -> None:
        try:
            self.member.sink(event)
        except Exception as exc:
            message = fit_text(f"the event sink failed: {exc!r}")
            raise _LaneEnded("failed", RunError(ErrorCode.INTERNAL, message)) from exc

    def end(
        self,
        reason: FinishReason,
        step: int,
        *,
        error: RunError | None = None,
        image: Any = None,
    ) -> None:
        """Give the lane its ``finished`` and hand it to its sink."""
        self.result = Finished(
            reason=reason,
            steps_run=step,
            elapsed=fit_seconds(self.clock() - self.started),
            final_score=self.history[-1].score if self.history else None,
            history=tuple(self.history),
            image=image,
            error=error,
        )
        emit_finished(self.member.sink, self.result)

    def controls(self, pending: PendingControls, step: int) -> FinishReason | None:
        """Apply the owner's requests; the reason the lane must leave with, if it must (an
        ``abort``, or any stop before the first step, raises)."""
        for request in pending.changes:
            applied: list[SettingChange] = []
            refused: list[str] = []
            for name, value in request.change.items():
                if name == "quality_threshold":
                    old = self.settings.quality_threshold
                    self.settings = dataclasses.replace(self.settings, quality_threshold=value)
                elif name == "scale_factor":
                    old = self.settings.scale_factor
                    self.settings = dataclasses.replace(self.settings, scale_factor=value)
                elif name == "check_interval":
                    old, self.interval = float(self.interval), int(value)
                else:
                    refused.append(CFG_SHARED)
                    continue
                applied.append(SettingChange(name, old, float(value)))
            if request.request_id is None:
                continue
            if applied:
                self.emit(Applied(request.request_id, step, tuple(applied), None))
            if refused:
                message = fit_text("; ".join(refused))
                self.emit(Error(ErrorCode.INVALID_VALUE, message, request_id=request.request_id))
        stop = pending.stop
        if stop is None:
            return None
        if stop.request_id is not None:
            self.emit(Applied(stop.request_id, step, (), stop.mode))
        if stop.mode == "abort" or step == 0:
            raise _LaneEnded(stop.reason)
        return stop.reason

    def check(self, step: int, total: int, images: torch.Tensor, cfg: float) -> bool:
        """Score this lane's decoded estimate, ask the policy, emit ``check``; whether the
        policy stops the run early."""
        assert self.verifier is not None
        self.last_check = step
        params = self.params
        try:
            score = score_batch(self.verifier, images, params.prompt)[0]
        except VerifierError as exc:
            message = fit_text(f"verifier {params.verifier}: {exc}")
            raise _LaneEnded("failed", RunError(ErrorCode.VERIFIER_FAILED, message)) from exc
        components = fit_components(score.components)
        scored: list[Scored] = [*self.history, _Scored(step, score.value, components)]
        decision = decide(scored, self.settings, cfg=cfg, total_steps=total)
        verdict, reason = decision.decision, decision.reason
        if verdict == "raise_cfg":  # batch_key keeps such runs alone; never act on one here
            verdict, reason = "continue", f"{reason}; not applied: {CFG_SHARED}"
        preview = None
        if params.preview_size > 0:
            pixels = to_uint8(images[:1])[0]
            preview = encode_thumbnail(pixels, params.preview_size, params.preview_format)
        event = Check(
            step=step,
            score=fit_score(score.value),
            components=components,
            threshold=fit_score(self.settings.quality_threshold),
            decision=verdict,
            reason=fit_text(reason),
            cfg=fit_cfg(cfg),
            preview=preview,
        )
        self.history.append(event.entry(fit_seconds(self.clock() - self.started)))
        self.emit(event)
        return verdict == "early_stop"


class _Batch:
    """The pipeline call that carries the lanes, driven by its step callback."""

    def __init__(self, model: LoadedModel, lanes: list[_Lane], clock: Clock) -> None:
        self.model = model
        self.all = lanes
        self.lanes = [lane for lane in lanes if lane.failure is None]
        self.generators = [lane.generator for lane in self.lanes]
        first = self.lanes[0].member.params if self.lanes else lanes[0].member.params
        self.params = first.parameters
        self.decoder: PreviewDecoder = model.decoders[first.preview_decoder]
        self.cfg = self.params.cfg
        self.total = self.params.steps
        self.step = 0
        self.clock = clock
        self.capture: StepCapture | None = None
        #: Re-indexes the batch tensors the pipeline holds outside its step callback (Flux's
        #: pooled embeddings and guidance vector) as lanes leave.
        self.held: HeldRows | None = None
        #: The lanes (by id) that ended at this step and leave the batch at its end.
        self._leaving: set[int] = set()

    def execute(self) -> None:
        for lane in self.all:
            lane.started = lane.timer.start()
            if lane.failure is not None:
                lane.end("failed", 0, error=lane.failure)
        pipeline = self.model.pipeline
        own_scheduler = pipeline.scheduler
        try:
            for lane in self.lanes:
                self._guard(lane, self._begin, lane)
            self._leave_now()
            if not self.lanes:
                return
            scheduler = self.model.build_scheduler(self.params.sampler, self.params.scheduler)
            self.capture = StepCapture(scheduler)
            pipeline.scheduler = scheduler
            self.held = HeldRows(len(self.lanes))
            self.held.attach(pipeline)
            output = pipeline(**self._call_arguments())
            if self.lanes:
                self._complete(getattr(output, "images", None))
        except _AllLeft:
            pass
        except Exception as exc:  # no error inside a run may escape into the caller's thread
            error = classify_failure(exc)
            for lane in self.lanes:
                if id(lane) not in self._leaving:
                    lane.end("failed", self.step, error=error)
        finally:
            if self.held is not None:
                self.held.detach()
            if self.capture is not None:
                self.capture.remove()
            pipeline.scheduler = own_scheduler
            if hasattr(pipeline, "_interrupt"):
                pipeline._interrupt = False

    def _begin(self, lane: _Lane) -> None:
        lane.emit(Started(lane.params))
        lane.controls(lane.member.control.take(), 0)  # a stop before the first step aborts

    def _call_arguments(self) -> dict[str, Any]:
        inputs = list(getattr(self.model.pipeline, "_callback_tensor_inputs", ["latents"]))
        arguments = call_arguments(
            self.model,
            self.params,
            cfg=self.cfg,
            images=1,
            generator=self.generators,
            callback=self._on_step,
            tensor_inputs=inputs,
        )
        arguments["prompt"] = [lane.params.prompt for lane in self.lanes]
        if "negative_prompt" in arguments and self.params.negative_prompt:
            arguments["negative_prompt"] = [lane.params.negative_prompt for lane in self.lanes]
        return arguments

    def _guard(self, lane: _Lane, action: Callable[..., object], *args: Any) -> None:
        """Do ``action(*args)`` for ``lane``; a lane that ends meanwhile is marked to leave."""
        try:
            action(*args)
        except _LaneEnded as ended:
            lane.end(ended.reason, self.step, error=ended.error)
            self._leaving.add(id(lane))

    def _leave_now(self) -> list[int]:
        """Drop the lanes marked to leave; return the positions of those that stay."""
        kept = [i for i, lane in enumerate(self.lanes) if id(lane) not in self._leaving]
        self.lanes = [self.lanes[i] for i in kept]
        self._leaving = set()
        return kept

    # -- every step ----------------------------------------------------------------------------

    def _on_step(
        self, pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        self.step = index + 1
        if index == 0:
            self.total = len(pipeline.scheduler.timesteps)
        stopping: dict[int, FinishReason] = {}
        checking: list[int] = []
        for position, lane in enumerate(self.lanes):
            self._guard(lane, self._step_controls, lane, position, stopping, checking)
        if stopping or checking:
            x0 = self._x0()
            if checking:
                self._check(x0, checking, stopping)
            for position, reason in stopping.items():
                lane = self.lanes[position]
                if id(lane) not in self._leaving:
                    self._guard(lane, self._end_with, lane, x0[position : position + 1], reason)
        return self._reindex(pipeline, tensors)

    def _step_controls(
        self, lane: _Lane, position: int, stopping: dict[int, FinishReason], checking: list[int]
    ) -> None:
        """Progress and the owner's requests for one lane; note whether it stops or checks."""
        lane.emit(lane.timer.progress(self.step, self.total))
        reason = lane.controls(lane.member.control.take(), self.step)
        if reason is not None:
            stopping[position] = reason
        elif self.step - lane.last_check >= lane.interval:
            checking.append(position)

    def _x0(self) -> torch.Tensor:
        assert self.capture is not None
        try:
            return self.capture.x0()
        except UnsupportedScheduler as exc:  # the schedule is every lane's: all of them fail
            error = RunError(ErrorCode.UNSUPPORTED_SCHEDULER, fit_text(str(exc)))
            for lane in self.lanes:
                if id(lane) not in self._leaving:
                    lane.end("failed", self.step, error=error)
            self.lanes = []
            raise _AllLeft from exc

    def _finite(self, x0: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(x0).all()):
            message = f"the x0 estimate at step {self.step} is not finite"
            raise _LaneEnded("failed", RunError(ErrorCode.NAN_DETECTED, message))
        return x0

    def _check(
        self, x0: torch.Tensor, checking: list[int], stopping: dict[int, FinishReason]
    ) -> None:
        """Decode the checking lanes' estimates in one call, then check each lane."""
        params = self.params
        rows = x0[torch.tensor(checking, dtype=torch.long, device=x0.device)]
        images = self.decoder.decode(self.model.to_spatial(rows, params.width, params.height))
        for row, position in enumerate(checking):
            lane = self.lanes[position]
            self._guard(lane, self._check_lane, lane, x0, position, images[row : row + 1], stopping)

    def _check_lane(
        self,
        lane: _Lane,
        x0: torch.Tensor,
        position: int,
        images: torch.Tensor,
        stopping: dict[int, FinishReason],
    ) -> None:
        self._finite(x0[position : position + 1])
        if lane.check(self.step, self.total, images, self.cfg):
            stopping[position] = "early_stop"

    def _end_with(self, lane: _Lane, x0: torch.Tensor, reason: FinishReason) -> None:
        """End ``lane`` now with its estimate decoded as the model decodes its results."""
        decoders = self.model.decoders
        decoder = decoders.get("vae") or decoders.get("identity") or self.decoder
        params = self.params
        estimate = self._finite(x0)
        with torch.inference_mode():
            images = decoder.decode(self.model.to_spatial(estimate, params.width, params.height))
        lane.end(reason, self.step, image=self._png(images[:1]))
        self._leaving.add(id(lane))

    def _png(self, images: torch.Tensor) -> Any:
        tensor = images.float()
        if not bool(torch.isfinite(tensor).all()):
            raise _LaneEnded(
                "failed", RunError(ErrorCode.NAN_DETECTED, "the final image is not finite")
            )
        return encode_png(to_uint8(tensor)[0])

    def _reindex(self, pipeline: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """Re-index the batch without the lanes that left at this step."""
        if not self._leaving:
            return {}
        before = len(self.lanes)
        kept = self._leave_now()
        if not self.lanes:
            if not hasattr(type(pipeline), "interrupt"):
                raise _AllLeft
            pipeline._interrupt = True
            return {}
        latents: torch.Tensor = tensors["latents"]
        reindex_scheduler(pipeline.scheduler, kept, latents.shape)
        if self.held is not None:
            self.held.reorder(kept)
        self.generators[:] = [lane.generator for lane in self.lanes]
        return {
            name: reindex_rows(value, kept, before)
            for name, value in tensors.items()
            if isinstance(value, torch.Tensor)
        }

    def _complete(self, images: Any) -> None:
        """Give each lane still in the batch its row of the pipeline's images."""
        if not isinstance(images, torch.Tensor) or images.shape[0] != len(self.lanes):
            error = RunError(ErrorCode.INTERNAL, "the pipeline gave no image for every lane")
            for lane in self.lanes:
                lane.end("failed", self.step, error=error)
            return
        for row, lane in enumerate(self.lanes):
            try:
                image = self._png(images[row : row + 1])
            except _LaneEnded as ended:
                lane.end(ended.reason, self.total, error=ended.error)
                continue
            lane.end("completed", self.total, image=image)
