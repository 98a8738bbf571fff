"""A search run: N candidates of one prompt denoised as lanes of one batch, watched together.

:func:`run_search` runs a ``candidates`` > 1 run (``run_monitored`` hands those over). It makes
one pipeline call for every candidate at once, candidate *i* with its own generator seeded
:func:`~.strategies.candidate_seed` (``seed + i``), so candidate *i* starts from exactly the
noise of the single run of that seed. At every check it decodes each lane's x0 estimate, scores
all of them with the verifier in one call and asks the strategy (:mod:`.strategies`) for the
batch's new order; :mod:`.lanes` re-indexes the latents, the conditioning and the scheduler's
state with it (and the tensors the pipeline holds outside the callback as they enter the
denoiser), so a pruned candidate costs nothing more and a resampled one continues from its
parent's state. A search always checks at its last step; each candidate's final score is its
last check's, and the ``select`` rule picks the result by them.

Each lane keeps its own trajectory, generator, scores and fate (:class:`~.candidates.Lane`);
the batches of different runs (:mod:`.batch`) use the same re-indexing. The policy of single
runs (CFG raises, early stops) does not act in a search. The owner's controls act at step
boundaries: a ``stop`` ends every lane (``abort`` with no image); a stop of one candidate takes
its lane out of the batch as a prune does, a keep takes out every other lane; a ``set`` of the
strategy's settings applies from the next check on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from stepwatch.protocol import (
    Applied,
    CandidateResult,
    Error,
    ErrorCode,
    Finished,
    FinishReason,
    HistoryEntry,
    Progress,
    RunError,
    SearchCompute,
    SearchSettingChange,
    SearchSettings,
    SettingChange,
    Started,
)
from stepwatch.protocol import limits as wire
from stepwatch.protocol.search import SEARCH_SETTINGS, STRATEGY_SETTINGS

from .candidates import Lane, check_event, compose_orders, search_refusal
from .control import CandidateRequest, PendingControls, RunControl
from .errors import UnsupportedScheduler, VerifierError
from .events import EventSink, fit_cfg, fit_components, fit_score, fit_seconds, fit_text
from .lanes import DenoiserCounter, HeldRows, reindex_rows, reindex_scheduler
from .model import LoadedModel
from .params import ResolvedParams
from .pipeline_call import call_arguments, classify_failure, emit_finished
from .previews import PreviewDecoder, encode_png, to_uint8
from .steptimer import StepTimer
from .strategies import candidate_seed, plan, schedule_checks
from .verifiers import Verifier, score_batch
from .x0 import StepCapture

__all__ = ["run_search"]

Clock = Callable[[], float]


class _Ended(Exception):
    def __init__(self, reason: FinishReason, error: RunError | None = None) -> None:
        super().__init__(reason)
        self.reason, self.error = reason, error


def run_search(
    model: LoadedModel,
    params: ResolvedParams,
    verifier: Verifier,
    decoder: PreviewDecoder,
    control: RunControl,
    sink: EventSink,
    *,
    clock: Clock = time.perf_counter,
) -> Finished:
    """Run the search ``params`` ask for (``candidates`` > 1); return its ``finished``. Never
    raises; call it on a worker thread holding ``model.lock``."""
    return _Search(model, params, verifier, decoder, control, sink, clock).execute()


class _Search:
    def __init__(
        self,
        model: LoadedModel,
        resolved: ResolvedParams,
        verifier: Verifier,
        decoder: PreviewDecoder,
        control: RunControl,
        sink: EventSink,
        clock: Clock,
    ) -> None:
        self.model, self.verifier, self.decoder = model, verifier, decoder
        self.params = params = resolved.parameters
        self.settings = params.search or SearchSettings()
        self.control, self.sink, self.clock = control, sink, clock
        self.cfg = params.cfg
        self.interval = params.check_interval
        self.total = params.steps
        self.step = 0
        self.last_check = 0
        self.checks = 0
        self.generators = [
            torch.Generator("cpu").manual_seed(candidate_seed(params.seed, i))
            for i in range(params.candidates)
        ]
        self.lanes = [Lane(i, g) for i, g in enumerate(self.generators)]
        self.results: dict[int, CandidateResult] = {}
        self.rng = np.random.default_rng([params.seed, params.candidates])
        self.counter = DenoiserCounter()
        self.held = HeldRows(params.candidates)
        self.verifier_calls = self.preview_decodes = 0
        # Denoiser rows per lane and step, as measured at the first step (Flux's distilled
        # guidance takes one pass whatever the CFG scale; until then CFG's rule).
        self.rows_per_lane = 2 if params.cfg > 1.0 else 1
        self.capture: StepCapture | None = None
        self.timer = StepTimer(clock)
        self.started = 0.0
        self.ending: FinishReason | None = None
        # The owner's candidate requests not yet applied (those taken before the first step),
        # the candidate a keep kept, and the batch order of this step's x0 after they acted.
        self.asked: list[CandidateRequest] = []
        self.kept: int | None = None
        self.x0_order: tuple[int, ...] | None = None

    # -- the run as a whole --------------------------------------------------------------------

    def execute(self) -> Finished:
        self.started = self.timer.start()
        pipeline = self.model.pipeline
        own_scheduler = pipeline.scheduler
        try:
            why = search_refusal(self.model, self.settings)
            if why:
                raise _Ended("failed", RunError(ErrorCode.INVALID_VALUE, fit_text(why)))
            scheduler = self.model.build_scheduler(self.params.sampler, self.params.scheduler)
            self.capture = StepCapture(scheduler)
            pipeline.scheduler = scheduler
            self.counter.attach(pipeline)
            self.held.attach(pipeline)
            self._emit(Started(self.params))
            self._controls(self.control.take())
            output = pipeline(**self._call_arguments())
            images = getattr(output, "images", None)
            if not isinstance(images, torch.Tensor):
                raise _Ended("failed", RunError(ErrorCode.INTERNAL, "the pipeline gave no images"))
            return self._finish(images.float(), self.ending or "completed")
        except _Ended as ended:
            return self._end(ended.reason, ended.error)
        except Exception as exc:  # no error inside a run may escape into the caller's thread
            return self._end("failed", classify_failure(exc))
        finally:
            self.counter.detach()
            self.held.detach()
            if self.capture is not None:
                self.capture.remove()
            pipeline.scheduler = own_scheduler
            pipeline._guidance_scale = self.params.cfg
            if hasattr(pipeline, "_interrupt"):
                pipeline._interrupt = False

    def _call_arguments(self) -> dict[str, Any]:
        # Every tensor the pipeline hands back, so that a prune re-indexes its conditioning too.
        inputs = list(getattr(self.model.pipeline, "_callback_tensor_inputs", ["latents"]))
        return call_arguments(
            self.model,
            self.params,
            cfg=self.cfg,
            images=self.params.candidates,
            generator=self.generators,
            callback=self._on_step,
            tensor_inputs=inputs,
        )

    def _finish(self, images: torch.Tensor, reason: FinishReason) -> Finished:
        if not bool(torch.isfinite(images).all()):
            raise _Ended("failed", RunError(ErrorCode.NAN_DETECTED, "a final image is not finite"))
        # A lane's final score is its last check's, as a single run's is (the search always
        # checks at the last step).
        scores = [lane.history[-1].score if lane.history else 0.0 for lane in self.lanes]
        steps_run = self.total if reason == "completed" else self.step
        for lane in self.lanes:
            final = lane.history[-1].score if lane.history else None
            self.results[lane.candidate] = CandidateResult(
                lane.candidate, final, "finished", steps_run, tuple(lane.lineage)
            )
        chosen = self._select(scores)
        lane = self.lanes[chosen]
        self.results[lane.candidate] = dataclasses.replace(
            self.results[lane.candidate], fate="chosen", by_owner=self.kept == lane.candidate
        )
        pixels = to_uint8(images)
        if self.settings.images == "all":
            for position, other in enumerate(self.lanes):
                if position != chosen:
                    self.results[other.candidate] = dataclasses.replace(
                        self.results[other.candidate], image=encode_png(pixels[position])
                    )
        image = encode_png(pixels[chosen])
        return self._end(reason, None, image=image, chosen=lane, steps_run=steps_run)

    def _select(self, scores: list[float]) -> int:
        if self.settings.select == "first":
            return min(range(len(self.lanes)), key=lambda i: self.lanes[i].candidate)
        return max(range(len(scores)), key=lambda i: (scores[i], -self.lanes[i].candidate))

    def _end(
        self,
        reason: FinishReason,
        error: RunError | None,
        *,
        image: Any = None,
        chosen: Lane | None = None,
        steps_run: int | None = None,
    ) -> Finished:
        history = tuple(chosen.history) if chosen is not None else ()
        final = self.results[chosen.candidate].final_score if chosen is not None else None
        compute = SearchCompute(
            denoiser_evaluations=self.counter.evaluations,
            verifier_calls=self.verifier_calls,
            preview_decodes=self.preview_decodes,
            single_run_evaluations=self.total * self.rows_per_lane,
        )
        result = Finished(
            reason=reason,
            steps_run=self.step if steps_run is None else steps_run,
            elapsed=fit_seconds(self.clock() - self.started),
            final_score=final,
            history=history,
            image=image,
            error=error,
            candidates=tuple(self.results[c] for c in sorted(self.results)),
            compute=compute,
        )
        emit_finished(self.sink, result)
        return result

    def _emit(self, event: Any) -> None:
        try:
            self.sink(event)
        except Exception as exc:
            raise _Ended(
                "failed", RunError(ErrorCode.INTERNAL, fit_text(f"the event sink failed: {exc!r}"))
            ) from exc

    # -- every step ----------------------------------------------------------------------------

    def _on_step(
        self, pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        self.step = index + 1
        if index == 0:
            self.total = len(pipeline.scheduler.timesteps)
            self.rows_per_lane = max(1, self.counter.evaluations // len(self.lanes))
        self._emit(self._progress())
        self.x0_order = None
        if self._controls(self.control.take()):
            pipeline._interrupt = True
            x0 = self._x0()
            latents = tensors["latents"]
            return {"latents": x0.to(latents.dtype)}
        returned = self._owner_candidates(pipeline, tensors)
        tensors = {**tensors, **returned}
        if (
            self.step - self.last_check >= self.interval
            or self.step == self.total
            or schedule_checks(self.settings, self.step)
        ):
            return {**returned, **self._check(pipeline, tensors)}
        return returned

    def _progress(self) -> Progress:
        return self.timer.progress(self.step, self.total)

    def _controls(self, pending: PendingControls) -> bool:
        """Apply pending requests; True when the search must end after this step."""
        for request in pending.changes:
            applied: list[SettingChange] = []
            refused: list[str] = []
            searched: list[SearchSettingChange] = []
            for name, value in request.change.items():
                if name == "check_interval":
                    applied.append(SettingChange(name, float(self.interval), float(value)))
                    self.interval = int(value)
                elif name in STRATEGY_SETTINGS[self.settings.strategy]:
                    was = float(getattr(self.settings, name))
                    new: dict[str, Any] = {name: int(value) if name.endswith("_every") else value}
                    self.settings = dataclasses.replace(self.settings, **new)
                    searched.append(SearchSettingChange(name, was, float(value)))  # type: ignore[arg-type]
                elif name in SEARCH_SETTINGS:
                    refused.append(f"a {self.settings.strategy} search has no {name}")
                else:
                    refused.append(f"a search does not change {name} mid-run")
            if request.request_id is not None and (applied or searched):
                acknowledged = Applied(
                    request.request_id, self.step, tuple(applied), None, tuple(searched)
                )
                self._emit(acknowledged)
            if request.request_id is not None and refused:
                message = fit_text("; ".join(refused))
                self._emit(Error(ErrorCode.INVALID_VALUE, message, request_id=request.request_id))
        self.asked.extend(pending.candidates)
        stop = pending.stop
        if stop is None:
            return False
        if stop.request_id is not None:
            self._emit(Applied(stop.request_id, self.step, (), stop.mode))
        if stop.mode == "abort" or self.step == 0:
            raise _Ended(stop.reason)
        self.ending = stop.reason
        return True

    def _x0(self) -> torch.Tensor:
        assert self.capture is not None
        try:
            x0 = self.capture.x0()
            if self.x0_order is not None:  # the owner took lanes out after this step
                x0 = x0[torch.tensor(self.x0_order, dtype=torch.long, device=x0.device)]
        except UnsupportedScheduler as exc:
            error = RunError(ErrorCode.UNSUPPORTED_SCHEDULER, fit_text(str(exc)))
            raise _Ended("failed", error) from exc
        if not bool(torch.isfinite(x0).all()):
            message = f"the x0 estimate at step {self.step} is not finite"
            raise _Ended("failed", RunError(ErrorCode.NAN_DETECTED, message))
        return x0

    def _score(self, images: torch.Tensor) -> list[float]:
        try:
            scores = score_batch(self.verifier, images, self.params.prompt)
        except VerifierError as exc:
            message = fit_text(f"verifier {self.params.verifier}: {exc}")
            raise _Ended("failed", RunError(ErrorCode.VERIFIER_FAILED, message)) from exc
        self.verifier_calls += images.shape[0]
        self._last_components = [fit_components(s.components) for s in scores]
        return [fit_score(s.value) for s in scores]

    # -- the owner's candidates ----------------------------------------------------------------

    def _owner_candidates(self, pipeline: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """Apply the owner's stops and keeps of candidates taken so far; the re-indexed
        tensors when lanes left the batch."""
        returned: dict[str, Any] = {}
        asked, self.asked = self.asked, []
        for request in asked:
            live = [lane.candidate for lane in self.lanes]
            why = self._candidate_refusal(request, live)
            if why:
                if request.request_id is not None:
                    field = "keep" if request.action == "keep" else "candidate"
                    message = fit_text(why)
                    self._emit(Error(ErrorCode.INVALID_VALUE, message, field, request.request_id))
                continue
            position = live.index(request.candidate)
            if request.action == "stop":
                order = tuple(i for i in range(len(live)) if i != position)
            else:
                order = (position,)
                self.kept = request.candidate
            current = {**tensors, **returned}
            returned.update(self._reorder(pipeline, current, order, None))
            self.x0_order = compose_orders(self.x0_order, order)
            if request.request_id is not None:
                stopped = request.candidate if request.action == "stop" else None
                kept = request.candidate if request.action == "keep" else None
                self._emit(Applied(request.request_id, self.step, (), None, (), stopped, kept))
        return returned

    def _candidate_refusal(self, request: CandidateRequest, live: list[int]) -> str:
        if request.candidate not in live:
            fate = self.results.get(request.candidate)
            state = f"was {fate.fate} at step {fate.steps_run}" if fate else "is not one"
            return f"candidate {request.candidate} is not live: it {state}"
        if len(live) == 1:
            return f"candidate {request.candidate} is the last one live; stop the run instead"
        return ""

    # -- checks --------------------------------------------------------------------------------

    def _check(self, pipeline: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.last_check = self.step
        self.checks += 1
        params = self.params
        x0 = self.model.to_spatial(self._x0(), params.width, params.height)
        images = self.decoder.decode(x0)
        self.preview_decodes += images.shape[0]
        scores = self._score(images)
        components = self._last_components
        live = len(self.lanes)
        last = self.step >= self.total
        decided = plan(
            self.settings,
            self.checks,
            scores,
            [lane.best for lane in self.lanes],
            self.rng,
            last_step=last,
            step=self.step,
        )
        elapsed = fit_seconds(self.clock() - self.started)
        for lane, score, parts in zip(self.lanes, scores, components, strict=True):
            lane.history.append(
                HistoryEntry(
                    self.step,
                    score,
                    parts,
                    "continue",
                    fit_cfg(self.cfg),
                    fit_score(params.quality_threshold),
                    elapsed,
                )
            )
        self._emit(
            check_event(
                self.params,
                self.settings,
                self.step,
                self.cfg,
                [lane.candidate for lane in self.lanes],
                images,
                scores,
                components,
                decided,
            )
        )
        for lane, score in zip(self.lanes, scores, strict=True):
            lane.best = max(lane.best, score)
        if decided.keeps_all(live):
            return {}
        return self._reorder(pipeline, tensors, decided.order, scores)

    def _reorder(
        self,
        pipeline: Any,
        tensors: dict[str, Any],
        order: tuple[int, ...],
        scores: list[float] | None,
    ) -> dict[str, Any]:
        """Re-index every per-lane tensor and the lanes themselves to ``order``; ``scores``
        are this check's (``None``: the owner took lanes out between checks)."""
        live = len(self.lanes)
        latents: torch.Tensor = tensors["latents"]
        reindex_scheduler(pipeline.scheduler, order, latents.shape)
        self.held.reorder(order)
        returned = {
            name: reindex_rows(value, order, live)
            for name, value in tensors.items()
            if isinstance(value, torch.Tensor)
        }
        if len(order) < live:  # prune: the lanes left out stop here
            for position in set(range(live)) - set(order):
                lane = self.lanes[position]
                last = lane.history[-1].score if lane.history else None
                self.results[lane.candidate] = CandidateResult(
                    lane.candidate,
                    last if scores is None else scores[position],
                    "pruned",
                    self.step,
                    tuple(lane.lineage),
                    by_owner=scores is None,
                )
            lanes = [self.lanes[i] for i in order]
        else:  # fk: slot j continues from order[j]; a repeated parent gets a fresh generator
            lanes = []
            for slot, parent in enumerate(order):
                source = self.lanes[parent]
                if parent == slot:
                    lanes.append(source)
                    continue
                seed = candidate_seed(self.params.seed, wire.MAX_CANDIDATES * self.step + slot)
                generator = torch.Generator("cpu").manual_seed(seed)
                lanes.append(source.copy_as(self.lanes[slot].candidate, generator))
        self.lanes = lanes
        self.generators[:] = [lane.generator for lane in lanes]
        return returned
