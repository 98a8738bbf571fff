"""The monitored run on tiny random-weight Stable Diffusion and SDXL pipelines."""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import Recorder, make_sd_pipeline

from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    FinishReason,
    Progress,
    SettingChange,
    Started,
    StopMode,
)
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.curves import ExpectedCurve
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.events import EngineEvent
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.previews import to_uint8
from stepwatch.server.engine.verifiers import VerifierRegistry, VerifierScore

MODELS = ["shapes_model", "sd_model", "sdxl_model", "sd3_model"]

BASE: dict[str, Any] = {
    "prompt": "red circle",
    "seed": 3,
    "steps": 12,
    "cfg": 3.0,
    "early_stop": False,
}


# What these tests' models "usually" score: 0.9 everywhere, with a low band at 0.8, so that the
# constant verifiers below are clearly below it (0.1, 0.2) or above it (0.9).
USUAL = ExpectedCurve(progress=(1.0,), median=(0.9,), low=(0.8,), runs=10, source="test")


def run(
    loaded: LoadedModel,
    recorder: Recorder,
    control: RunControl | None = None,
    registry: VerifierRegistry | None = None,
    curve: ExpectedCurve | None = USUAL,
    **overrides: Any,
) -> Finished:
    params = loaded.resolve(RequestedParams(**{**BASE, **overrides}))
    if registry is None:
        registry = VerifierRegistry()
        registry.register_model_verifiers(loaded.verifiers)
    return run_monitored(loaded, params, registry, control or RunControl(), recorder, curve=curve)


def faithful_decoder(model: LoadedModel) -> str:
    """The decoder the pipeline itself uses for its image: the VAE, or none in pixel space."""
    return "vae" if "vae" in model.decoders else "identity"


def pixels(png: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)


def check_previews(recorder: Recorder) -> dict[int, np.ndarray[Any, Any]]:
    return {
        check.step: pixels(check.preview.data)
        for check in recorder.of(Check)
        if check.preview is not None
    }


class ConstantVerifier:
    """Scores every image the same, so a test decides what the policy sees."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
        return [VerifierScore(self.value, {"constant": self.value}) for _ in range(images.shape[0])]


def registry_with(verifier_id: str, verifier: object) -> VerifierRegistry:
    registry = VerifierRegistry()
    registry.register(verifier_id, lambda: verifier)  # type: ignore[arg-type, return-value]
    return registry


@pytest.mark.parametrize("model_name", MODELS)
def test_checks_happen_exactly_at_the_interval(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    result = run(model, recorder, check_interval=4)
    assert result.reason == "completed" and result.error is None
    assert [c.step for c in recorder.checks] == [4, 8, 12]
    assert [p.step for p in recorder.of(Progress)] == list(range(1, 13))
    assert isinstance(recorder.events[0], Started) and isinstance(recorder.events[-1], Finished)
    assert recorder.events[-1] == result
    assert result.steps_run == recorder.of(Progress)[-1].total == 12
    assert [h.step for h in result.history] == [4, 8, 12]
    assert result.final_score == result.history[-1].score
    assert result.image is not None and (result.image.width, result.image.height) == (32, 32)


def test_progress_reports_elapsed_time_and_a_shrinking_eta(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    run(sd_model, recorder, steps=6, check_interval=10)
    progress = recorder.of(Progress)
    assert all(p.total == 6 for p in progress)
    assert [p.elapsed for p in progress] == sorted(p.elapsed for p in progress)
    assert progress[-1].eta == 0.0 and progress[0].eta > 0.0


def test_monitoring_without_actions_leaves_the_image_unchanged(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    result = run(sd_model, recorder, check_interval=2, quality_threshold=0.0)
    pipeline = sd_model.pipeline
    pipeline.scheduler = sd_model.build_scheduler("dpmpp_2m", "normal")
    bare = pipeline(
        "red circle",
        num_inference_steps=12,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    assert result.image is not None
    assert np.abs(pixels(result.image.data) - to_uint8(bare)[0]).max() <= 1


@pytest.mark.parametrize("model_name", MODELS)
def test_previews_show_x0_not_the_noisy_latent(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    result = run(
        model,
        recorder,
        check_interval=2,
        quality_threshold=0.0,
        preview_decoder=faithful_decoder(model),
        preview_format="png",
    )
    assert result.image is not None
    final = pixels(result.image.data)
    latents = _bare_latents(model, steps=12)
    decoder = model.decoders[faithful_decoder(model)]
    for step, preview in check_previews(recorder).items():
        noisy = to_uint8(decoder.decode(latents[step]))[0]
        preview_gap, noisy_gap = np.abs(preview - final).mean(), np.abs(noisy - final).mean()
        if 6 <= step < 12:  # from mid-run on, x0 is several times closer than the latent
            assert preview_gap < noisy_gap / 3, (step, preview_gap, noisy_gap)
        if step >= 10:  # the last checks look like the final image: within 3% on average
            assert preview_gap < 8, (step, preview_gap)
    assert np.abs(check_previews(recorder)[12] - final).max() <= 1


def _bare_latents(model: LoadedModel, steps: int) -> dict[int, torch.Tensor]:
    latents: dict[int, torch.Tensor] = {}

    def keep(pipeline: Any, index: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        latents[index + 1] = tensors["latents"].clone()
        return {}

    model.pipeline.scheduler = model.build_scheduler(model.defaults.sampler, "normal")
    model.pipeline(
        "red circle",
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
        callback_on_step_end=keep,
    )
    return latents


def _observe_guidance(model: LoadedModel, recorder: Recorder) -> list[float]:
    """Measure the guidance scale each step really used: the pipeline's guided prediction
    projected onto (conditional - unconditional), from the UNet's own outputs."""
    used: list[float] = []
    unet_outputs: list[torch.Tensor] = []
    denoiser = getattr(model.pipeline, "unet", None) or model.pipeline.transformer
    hook = denoiser.register_forward_hook(
        lambda module, args, output: unet_outputs.append(output[0])
    )

    def wrap_step(event: EngineEvent) -> None:
        if not isinstance(event, Started):
            if isinstance(event, Finished):
                hook.remove()
            return
        scheduler = model.pipeline.scheduler
        inner = scheduler.step

        @functools.wraps(inner)
        def step(guided: torch.Tensor, t: Any, sample: torch.Tensor, *a: Any, **k: Any) -> Any:
            uncond, cond = unet_outputs[-1].chunk(2)
            direction = cond - uncond
            used.append(float(((guided - uncond) * direction).sum() / (direction**2).sum()))
            return inner(guided, t, sample, *a, **k)

        scheduler.step = step

    recorder.actions.append(wrap_step)
    return used


@pytest.mark.parametrize("model_name", MODELS)
def test_a_cfg_raise_is_used_by_the_following_steps(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    used = _observe_guidance(model, recorder)
    registry = registry_with("low", ConstantVerifier(0.2))
    result = run(
        model, recorder, registry=registry, verifier="low", steps=8, check_interval=4, cfg=2.0,
        scale_factor=1.5, cfg_max=10.0,
    )  # fmt: skip
    assert result.reason == "completed"
    [adjusted] = recorder.of(Adjusted)
    assert (adjusted.step, adjusted.setting, adjusted.old, adjusted.new) == (4, "cfg", 2.0, 3.0)
    assert [c.decision for c in recorder.checks] == ["raise_cfg", "continue"]
    assert len(used) == 8
    assert used[:4] == pytest.approx([2.0] * 4, rel=1e-4)
    assert used[4:] == pytest.approx([3.0] * 4, rel=1e-4)


def test_without_an_expected_curve_a_low_score_raises_nothing(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    registry = registry_with("low", ConstantVerifier(0.1))
    run(sd_model, recorder, registry=registry, verifier="low", check_interval=2, curve=None)
    assert recorder.of(Adjusted) == []
    assert all("no expected-score curve" in c.reason for c in recorder.checks[:-1])


def test_the_owners_cfg_holds_and_pauses_automatic_cfg(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    control = RunControl()
    recorder.at_step(2, lambda: control.set({"cfg": 2.5}, request_id="mine"))
    registry = registry_with("low", ConstantVerifier(0.1))
    run(sd_model, recorder, control, registry=registry, verifier="low", check_interval=2)
    # The owner's change lands at step 2, before that step's check: no raise at that step or after.
    assert recorder.of(Adjusted) == []
    assert [c.cfg for c in recorder.checks] == [2.5] * 6
    assert all("paused: the owner set CFG at step 2" in c.reason for c in recorder.checks[:-1])


def test_cfg_raises_stop_at_the_cap(sd_model: LoadedModel, recorder: Recorder) -> None:
    registry = registry_with("low", ConstantVerifier(0.1))
    run(
        sd_model, recorder, registry=registry, verifier="low", check_interval=2, cfg=2.0,
        scale_factor=2.0, cfg_max=5.0,
    )  # fmt: skip
    assert [(a.old, a.new) for a in recorder.of(Adjusted)] == [(2.0, 4.0), (4.0, 5.0)]
    assert "cap" in recorder.checks[2].reason


def test_a_run_without_cfg_is_never_switched_to_cfg(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    registry = registry_with("low", ConstantVerifier(0.1))
    result = run(sd_model, recorder, registry=registry, verifier="low", check_interval=3, cfg=1.0)
    assert result.reason == "completed"
    assert recorder.of(Adjusted) == []
    assert "CFG is off" in recorder.checks[0].reason


def rms(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


@pytest.mark.parametrize("model_name", MODELS)
def test_early_stop_finishes_with_a_short_tail_closer_to_the_full_run_than_x0(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    registry = registry_with("high", ConstantVerifier(0.9))
    settings: dict[str, Any] = {
        "preview_decoder": faithful_decoder(model), "preview_format": "png",
    }  # fmt: skip
    result = run(
        model, recorder, registry=registry, verifier="high", check_interval=2, early_stop=True,
        patience=2, min_steps=3, **settings,
    )  # fmt: skip
    assert result.reason == "early_stop"
    assert [c.decision for c in recorder.checks] == [
        "continue",
        "continue",
        "early_stop",
    ]
    # Stopped at step 6 of 12: the 6 positions left are re-planned into a 3-evaluation tail.
    progress = recorder.of(Progress)
    assert result.steps_run == 9 and progress[0].total == 12
    assert [p.step for p in progress] == list(range(1, 10))
    assert [p.total for p in progress[5:]] == [12, 9, 9, 9]
    assert result.image is not None
    full = Recorder()
    run(model, full, check_interval=1, quality_threshold=0.0, **settings)
    final_of_full_run = pixels(full.of(Finished)[0].image.data)  # type: ignore[union-attr]
    estimate_at_stop = check_previews(full)[6]
    finished = pixels(result.image.data)
    assert rms(finished, final_of_full_run) < rms(estimate_at_stop, final_of_full_run)


@pytest.mark.parametrize("model_name", ["shapes_model", "sd_model"])
def test_stop_estimate_returns_the_decoded_x0_of_that_step(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    watched = Recorder()
    preview_settings: dict[str, Any] = {
        "check_interval": 5,
        "quality_threshold": 0.0,
        "preview_decoder": faithful_decoder(model),
        "preview_format": "png",
    }
    run(model, watched, **preview_settings)
    control = RunControl()
    recorder.at_step(5, lambda: control.stop("estimate", request_id="r1"))
    result = run(model, recorder, control, **preview_settings)
    assert result.reason == "stopped" and result.steps_run == 5
    assert recorder.of(Applied) == [Applied("r1", 5, (), "estimate")]
    assert result.image is not None
    # Same seed, same steps: the stopped run's image is the full run's x0 preview at step 5.
    assert np.abs(pixels(result.image.data) - check_previews(watched)[5]).max() <= 1


@pytest.mark.parametrize("model_name", ["shapes_model", "sd_model"])
@pytest.mark.parametrize("mode", ["estimate", "finish"])
def test_a_stop_between_checks_still_returns_a_denoised_image(
    model_name: str, mode: StopMode, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    control = RunControl()
    recorder.at_step(3, lambda: control.stop(mode))
    result = run(model, recorder, control, check_interval=5)
    # finish: the 9 positions left after step 3 of 12 become a tail of ceil(0.4 * 9) = 4.
    assert result.reason == "stopped"
    assert result.steps_run == (3 if mode == "estimate" else 7)
    assert result.image is not None and result.history == ()
    decoder = model.decoders[faithful_decoder(model)]
    noisy = to_uint8(decoder.decode(_bare_latents(model, 12)[3]))[0]
    final_of_full_run = pixels(run(model, Recorder()).image.data)  # type: ignore[union-attr]
    stopped = pixels(result.image.data)
    assert np.abs(stopped - final_of_full_run).mean() < np.abs(noisy - final_of_full_run).mean()


@pytest.mark.parametrize(
    ("model_name", "reason"),
    [
        ("shapes_model", "stopped"),
        ("sd_model", "stopped"),
        ("sd_model", "abandoned"),
        ("sd_model", "shutdown"),
    ],
)
def test_abort_returns_no_image(
    model_name: str, recorder: Recorder, reason: FinishReason, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    control = RunControl()
    recorder.at_step(4, lambda: control.stop("abort", reason))
    result = run(model, recorder, control)
    assert result.reason == reason and result.image is None and result.error is None
    assert result.steps_run == 4
    assert [p.step for p in recorder.of(Progress)] == [1, 2, 3, 4]


def test_a_stop_before_the_first_step_runs_nothing(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    control = RunControl()
    control.stop("finish", request_id="early")
    result = run(sd_model, recorder, control)
    assert (result.reason, result.steps_run, result.image) == ("stopped", 0, None)
    assert recorder.of(Applied) == [Applied("early", 0, (), "finish")]
    assert recorder.of(Progress) == []


@pytest.mark.parametrize("model_name", ["shapes_model", "sd_model"])
def test_a_set_mid_run_changes_later_decisions(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    control = RunControl()
    registry = registry_with("mid", ConstantVerifier(0.6))
    change = {"quality_threshold": 0.8, "check_interval": 3.0}
    recorder.at_step(5, lambda: control.set(change, request_id="s1"))
    result = run(
        model, recorder, control, registry, verifier="mid", check_interval=4,
        quality_threshold=0.5, early_stop=True, patience=3, min_steps=0,
    )  # fmt: skip
    changes = (SettingChange("quality_threshold", 0.5, 0.8), SettingChange("check_interval", 4, 3))
    assert recorder.of(Applied) == [Applied("s1", 5, changes, None)]
    assert [(c.step, c.threshold, c.decision) for c in recorder.checks] == [
        (4, 0.5, "continue"),
        (7, 0.8, "raise_cfg"),
        (10, 0.8, "raise_cfg"),
    ]
    assert result.reason == "completed"


def test_a_set_of_cfg_applies_and_one_crossing_the_cfg_boundary_is_refused(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    control = RunControl()
    used = _observe_guidance(sd_model, recorder)
    recorder.at_step(2, lambda: control.set({"cfg": 4.0}, "up"))
    recorder.at_step(4, lambda: control.set({"cfg": 1.0, "quality_threshold": 0.1}, "x"))
    run(sd_model, recorder, control, steps=6, check_interval=10)
    first, second = recorder.of(Applied)
    assert (first.step, first.changes) == (2, (SettingChange("cfg", 3.0, 4.0),))
    assert second.changes == (SettingChange("quality_threshold", 0.7, 0.1),)
    [refused] = recorder.of(Error)
    assert refused.request_id == "x" and refused.code is ErrorCode.INVALID_VALUE
    assert "switch guidance off" in refused.message
    assert used == pytest.approx([3.0, 3.0, 4.0, 4.0, 4.0, 4.0], rel=1e-4)


def test_a_failing_verifier_fails_the_run(sd_model: LoadedModel, recorder: Recorder) -> None:
    class Broken:
        def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
            raise RuntimeError("classifier exploded")

    result = run(sd_model, recorder, registry=registry_with("broken", Broken()), verifier="broken")
    assert result.reason == "failed" and result.image is None
    assert result.error is not None and result.error.code is ErrorCode.VERIFIER_FAILED
    assert "classifier exploded" in result.error.message
    assert result.steps_run == 5


def test_a_verifier_score_outside_its_range_fails_the_run(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    result = run(
        sd_model, recorder, registry=registry_with("wild", ConstantVerifier(1.5)), verifier="wild"
    )
    assert result.error is not None and result.error.code is ErrorCode.VERIFIER_FAILED


def test_out_of_memory_is_reported_as_such(sd_model: LoadedModel, recorder: Recorder) -> None:
    class Hungry:
        def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    result = run(sd_model, recorder, registry=registry_with("hungry", Hungry()), verifier="hungry")
    assert result.error is not None and result.error.code is ErrorCode.OUT_OF_MEMORY


def test_nan_in_the_model_fails_the_run_with_nan_detected(recorder: Recorder) -> None:
    pipeline = make_sd_pipeline(seed=1)
    with torch.no_grad():
        pipeline.unet.conv_out.bias.fill_(float("nan"))
    model = describe_pipeline("broken", pipeline)
    result = run(model, recorder)
    assert result.reason == "failed" and result.image is None
    assert result.error is not None and result.error.code is ErrorCode.NAN_DETECTED
    assert result.steps_run == 5


def test_a_failing_sink_fails_the_run_and_the_caller_still_gets_the_result(
    sd_model: LoadedModel,
) -> None:
    def sink(event: EngineEvent) -> None:
        if isinstance(event, Check):
            raise ConnectionError("watcher gone")

    params = sd_model.resolve(RequestedParams(**BASE))
    result = run_monitored(sd_model, params, VerifierRegistry(), RunControl(), sink)
    assert result.error is not None and result.error.code is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sampler": "flow_euler"}, "sampler"),
        ({"sampler": "ddim", "scheduler": "karras"}, "scheduler"),
        ({"preview_decoder": "identity"}, "preview_decoder"),
        ({"model": "other"}, "model"),
        ({"cfg": 4.0, "cfg_max": None, "initial_latent": np.zeros((1, 3, 16, 16), np.float32)},
         "initial_latent"),
    ],
)  # fmt: skip
def test_invalid_parameters_are_refused_before_anything_runs(
    sd_model: LoadedModel, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ParamError) as refused:
        sd_model.resolve(RequestedParams(**{**BASE, **overrides}))
    assert refused.value.field == field


def test_an_unknown_verifier_fails_the_run_before_anything_runs(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    result = run(sd_model, recorder, verifier="nonexistent")
    assert result.reason == "failed" and result.steps_run == 0
    assert result.error is not None and result.error.code is ErrorCode.INVALID_VALUE
    assert "nonexistent" in result.error.message
    assert [type(e) for e in recorder.events] == [Finished]


def test_an_initial_latent_replaces_the_seeded_noise(
    sd_model: LoadedModel, recorder: Recorder
) -> None:
    noise = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    first = run(sd_model, Recorder(), initial_latent=noise, seed=1, check_interval=20)
    second = run(sd_model, Recorder(), initial_latent=noise, seed=2, check_interval=20)
    seeded = run(sd_model, Recorder(), seed=1, check_interval=20)
    assert first.image is not None and second.image is not None and seeded.image is not None
    assert first.image.data == second.image.data != seeded.image.data


@pytest.mark.parametrize(
    "sampler",
    ["euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "deis",
     "ddim", "ddpm", "pndm"],
)  # fmt: skip
def test_every_sampler_gives_an_x0_estimate_in_a_real_pipeline(
    sd_model: LoadedModel, recorder: Recorder, sampler: str
) -> None:
    result = run(sd_model, recorder, sampler=sampler, steps=4, check_interval=1, cfg=1.0)
    assert result.reason == "completed", result.error
    assert len(recorder.checks) == recorder.of(Progress)[-1].total >= 4
    assert recorder.of(Started)[0].parameters.sampler == sampler


def test_the_karras_schedule_runs(sd_model: LoadedModel, recorder: Recorder) -> None:
    result = run(sd_model, recorder, scheduler="karras", steps=5, check_interval=2)
    assert result.reason == "completed"
    assert recorder.of(Started)[0].parameters.scheduler == "karras"


def test_started_reports_the_resolved_parameters(sd_model: LoadedModel, recorder: Recorder) -> None:
    control = RunControl()
    recorder.at_step(1, lambda: control.stop("abort"))
    run(sd_model, recorder, control, steps=None, cfg=None, sampler=None, seed=None)
    [started] = recorder.of(Started)
    params = started.parameters
    assert (params.steps, params.cfg, params.sampler) == (50, 7.5, "dpmpp_2m")
    assert (params.width, params.height, params.model) == (32, 32, "tiny-sd")
    assert params.seed is not None and params.cfg_max == 15.0 and params.min_steps == 25
    assert params.verifier == "structure"
    assert sd_model.resolve(RequestedParams("red circle")).preview_decoder == "linear"
