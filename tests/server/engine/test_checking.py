"""Overlapped checks on a tiny random-weight Stable Diffusion pipeline: each decision applies at
a fixed step after its check, whatever the check took, and strict checks are today's engine."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from tiny_models import Recorder, make_sd_pipeline

from stepwatch.protocol import (
    Adjusted,
    ErrorCode,
    Finished,
    Progress,
    Started,
    encode,
    stamp,
)
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.curves import ExpectedCurve
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.events import EngineEvent
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry, VerifierScore

USUAL = ExpectedCurve(progress=(1.0,), median=(0.9,), low=(0.8,), runs=10, source="test")
BASE: dict[str, Any] = {"prompt": "red circle", "seed": 3, "steps": 8, "cfg": 2.0}
#: Low scores raise CFG at every check (2 -> 3 -> 4.5 -> 6.75, capped at 10).
RAISING: dict[str, Any] = {
    "check_interval": 2, "scale_factor": 1.5, "cfg_max": 10.0, "early_stop": False,
}  # fmt: skip


class ScriptedVerifier:
    """Returns the scripted scores in order, one per check; ``before`` runs before each score
    (a test makes a check slow there, or waits for the sampler)."""

    def __init__(self, scores: Sequence[float], before: Any = None) -> None:
        self.scores = list(scores)
        self.calls = 0
        self.before = before

    def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
        if self.before is not None:
            self.before(self.calls)
        value = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        return [VerifierScore(value, {"scripted": value})]


def run(
    model: LoadedModel,
    verifier: object,
    sink: Any,
    control: RunControl | None = None,
    **overrides: Any,
) -> Finished:
    registry = VerifierRegistry()
    registry.register("scripted", lambda: verifier)  # type: ignore[arg-type, return-value]
    params = model.resolve(RequestedParams(**{**BASE, "verifier": "scripted", **overrides}))
    return run_monitored(model, params, registry, control or RunControl(), sink, curve=USUAL)


def guidance_per_step(model: LoadedModel) -> tuple[list[float], Any]:
    """The guidance scale each denoising step computes with, read as the UNet runs."""
    used: list[float] = []
    hook = model.pipeline.unet.register_forward_pre_hook(
        lambda module, args: used.append(model.pipeline.guidance_scale)
    )
    return used, hook


def timeless(events: Sequence[EngineEvent]) -> list[EngineEvent]:
    """The events without what the clock put in them."""
    kept: list[EngineEvent] = []
    for event in events:
        if isinstance(event, Progress):
            event = dataclasses.replace(event, elapsed=0.0, eta=None)
        elif isinstance(event, Finished):
            history = tuple(dataclasses.replace(h, elapsed=0.0) for h in event.history)
            event = dataclasses.replace(event, elapsed=0.0, history=history)
        kept.append(event)
    return kept


def test_an_overlapped_decision_applies_one_step_after_its_check_and_says_so(
    sd_model: LoadedModel,
) -> None:
    used: dict[str, list[float]] = {}
    recorders = {mode: Recorder() for mode in ("strict", "overlapped")}
    for mode, recorder in recorders.items():
        used[mode], hook = guidance_per_step(sd_model)
        try:
            run(sd_model, ScriptedVerifier([0.2]), recorder, checks=mode, **RAISING)
        finally:
            hook.remove()
    strict, overlapped = recorders["strict"], recorders["overlapped"]
    # The same scores make the same decisions, with the same reasons, one step apart.
    assert [c.step for c in overlapped.checks] == [c.step for c in strict.checks] == [2, 4, 6, 8]
    assert [(c.decision, c.reason, c.cfg) for c in overlapped.checks] == [
        (c.decision, c.reason, c.cfg) for c in strict.checks
    ]
    assert [c.applied_step for c in strict.checks] == [None] * 4
    # The last step's check is due at once: there is no later step to apply it at.
    assert [c.applied_step for c in overlapped.checks] == [3, 5, 7, None]
    assert [(a.step, a.check_step, a.new) for a in strict.of(Adjusted)] == [
        (2, None, 3.0), (4, None, 4.5), (6, None, 6.75),
    ]  # fmt: skip
    assert [(a.step, a.check_step, a.new) for a in overlapped.of(Adjusted)] == [
        (3, 2, 3.0), (5, 4, 4.5), (7, 6, 6.75),
    ]  # fmt: skip
    # Guidance with CFG on runs the UNet once per step on a batch of two.
    assert used["strict"] == pytest.approx([2.0, 2.0, 3.0, 3.0, 4.5, 4.5, 6.75, 6.75])
    assert used["overlapped"] == pytest.approx([2.0, 2.0, 2.0, 3.0, 3.0, 4.5, 4.5, 6.75])
    assert isinstance(overlapped.events[0], Started)
    assert overlapped.events[0].parameters.checks == "overlapped"


def test_the_sampler_runs_on_while_a_check_is_computed_and_the_image_does_not_depend_on_it(
    sd_model: LoadedModel,
) -> None:
    # Each check's verifier waits until the sampler has finished the step after the check's:
    # only a sampler that does not wait for the check gets there. The other run's checks take no
    # time at all; both see the same scores and must make the same image.
    recorder = Recorder()
    progressed: dict[int, threading.Event] = {s: threading.Event() for s in range(1, 13)}
    waited: list[bool] = []

    def mark(event: EngineEvent) -> None:
        if isinstance(event, Progress) and event.step in progressed:
            progressed[event.step].set()

    recorder.actions.append(mark)
    check_steps = [2, 4, 6]
    slow = ScriptedVerifier(
        [0.2, 0.95, 0.95],
        before=lambda call: waited.append(
            call >= len(check_steps) or progressed[check_steps[call] + 1].wait(timeout=60)
        ),
    )
    # A raise at the first check, an early stop after two holding checks.
    settings = {**RAISING, "steps": 12, "early_stop": True, "min_steps": 2, "patience": 1}
    first = run(sd_model, slow, recorder, checks="overlapped", **settings)
    assert first.reason == "early_stop"
    assert [c.decision for c in recorder.checks] == ["raise_cfg", "continue", "early_stop"]
    assert waited == [True, True, True]
    fast_recorder = Recorder()
    second = run(
        sd_model, ScriptedVerifier([0.2, 0.95, 0.95]), fast_recorder, checks="overlapped",
        **settings,
    )  # fmt: skip
    assert first.image is not None and second.image is not None
    assert first.image.data == second.image.data
    assert timeless(recorder.events) == timeless(fast_recorder.events)


def test_an_overlapped_early_stop_begins_its_finishing_tail_one_step_later(
    sd_model: LoadedModel,
) -> None:
    # Without a clean component, two holding checks in a row stop the run: the checks at
    # steps 4 and 6 of 12.
    tails: dict[str, int] = {}
    for mode in ("strict", "overlapped"):
        recorder = Recorder()
        result = run(
            sd_model, ScriptedVerifier([0.9]), recorder, checks=mode, steps=12,
            check_interval=2, early_stop=True, patience=1, min_steps=3,
        )  # fmt: skip
        assert result.reason == "early_stop"
        stopping = [c for c in recorder.checks if c.decision == "early_stop"]
        assert [c.step for c in stopping] == [6]
        assert stopping[0].applied_step == (7 if mode == "overlapped" else None)
        # The first step of the tail reports the re-planned total.
        tails[mode] = next(p.step for p in recorder.of(Progress) if p.total != 12)
    assert tails == {"strict": 7, "overlapped": 8}


def test_strict_checks_are_the_default_and_the_same_run_as_asking_for_them(
    sd_model: LoadedModel,
) -> None:
    recorders = [Recorder(), Recorder()]
    run(sd_model, ScriptedVerifier([0.2, 0.9]), recorders[0], **RAISING)
    run(sd_model, ScriptedVerifier([0.2, 0.9]), recorders[1], checks="strict", **RAISING)
    assert timeless(recorders[0].events) == timeless(recorders[1].events)
    started = recorders[0].events[0]
    assert isinstance(started, Started) and started.parameters.checks == "strict"
    # On the wire a strict run's events are what they were before overlapped checks existed.
    check, adjusted = recorders[0].checks[0], recorders[0].of(Adjusted)[0]
    assert b"applied_step" not in encode(stamp(check, "run", 1))
    assert b"check_step" not in encode(stamp(adjusted, "run", 2))
    assert b"checks" not in encode(stamp(started, "run", 3))


def test_a_failing_verifier_in_the_check_thread_fails_the_run_where_the_check_is_due(
    sd_model: LoadedModel,
) -> None:
    class Broken:
        def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
            raise RuntimeError("classifier exploded")

    recorder = Recorder()
    result = run(sd_model, Broken(), recorder, checks="overlapped", check_interval=3)
    assert result.reason == "failed" and result.image is None
    assert result.error is not None and result.error.code is ErrorCode.VERIFIER_FAILED
    assert result.error.message == "verifier scripted: RuntimeError: classifier exploded"
    assert result.steps_run == 4
    assert recorder.checks == []


def test_out_of_memory_in_the_check_thread_is_reported_as_such(sd_model: LoadedModel) -> None:
    class Hungry:
        def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    result = run(sd_model, Hungry(), Recorder(), checks="overlapped", check_interval=3)
    assert result.error is not None and result.error.code is ErrorCode.OUT_OF_MEMORY
    assert result.steps_run == 4


def test_nan_found_in_the_check_thread_fails_the_run_with_nan_detected() -> None:
    pipeline = make_sd_pipeline(seed=1)
    with torch.no_grad():
        pipeline.unet.conv_out.bias.fill_(float("nan"))
    model = describe_pipeline("broken", pipeline)
    result = run(model, ScriptedVerifier([0.5]), Recorder(), checks="overlapped", check_interval=5)
    assert result.reason == "failed" and result.image is None
    assert result.error is not None and result.error.code is ErrorCode.NAN_DETECTED
    assert result.error.message == "the x0 estimate at step 5 is not finite"
    assert result.steps_run == 6


def test_a_run_that_fails_with_a_check_in_flight_leaves_no_check_thread_behind(
    sd_model: LoadedModel,
) -> None:
    def sink(event: EngineEvent) -> None:
        if isinstance(event, Progress) and event.step == 4:
            raise ConnectionError("watcher gone")

    result = run(sd_model, ScriptedVerifier([0.5]), sink, checks="overlapped", check_interval=3)
    assert result.error is not None and result.error.code is ErrorCode.INTERNAL
    assert not [t for t in threading.enumerate() if t.name.startswith("stepwatch-check")]


def test_the_owners_stop_applies_at_the_step_it_is_read_after_the_check_due_there(
    sd_model: LoadedModel,
) -> None:
    control = RunControl()
    recorder = Recorder()
    recorder.at_step(4, lambda: control.stop("finish", request_id="mine"))
    result = run(
        sd_model, ScriptedVerifier([0.2]), recorder, control, checks="overlapped",
        check_interval=3, steps=12,
    )  # fmt: skip
    assert result.reason == "stopped"
    [check] = recorder.checks
    assert (check.step, check.applied_step) == (3, 4)
    kinds = [type(e).__name__ for e in recorder.events if not isinstance(e, Progress)]
    assert kinds[:4] == ["Started", "Check", "Adjusted", "Applied"]


def test_a_search_refuses_overlapped_checks(sd_model: LoadedModel) -> None:
    with pytest.raises(ParamError) as refused:
        sd_model.resolve(RequestedParams("red circle", candidates=2, checks="overlapped"))
    assert refused.value.field == "checks"
    searching = sd_model.resolve(RequestedParams("red circle", candidates=2))
    assert searching.parameters.checks == "strict"
