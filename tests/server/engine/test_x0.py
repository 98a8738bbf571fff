"""The x0 estimate, captured or derived, equals the image a scheduler's own noise model hides."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from stepwatch.server.engine.errors import UnsupportedScheduler
from stepwatch.server.engine.x0 import NoiseSpace, StepCapture, derive_x0, dynamic_threshold

SD_BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}

# (scheduler class, extra config, expected noise space, whether it hands out x0 itself)
FAMILIES = [
    (DDIMScheduler, {"clip_sample": False}, NoiseSpace.VP_TIMESTEP, True),
    (DDPMScheduler, {"clip_sample": False}, NoiseSpace.VP_TIMESTEP, True),
    (PNDMScheduler, {"skip_prk_steps": True}, NoiseSpace.VP_TIMESTEP, False),
    (EulerDiscreteScheduler, {}, NoiseSpace.VE_SIGMA, True),
    (EulerAncestralDiscreteScheduler, {}, NoiseSpace.VE_SIGMA, True),
    (DPMSolverMultistepScheduler, {}, NoiseSpace.VP_SIGMA, False),
    (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, NoiseSpace.VP_SIGMA, False),
    (DPMSolverSinglestepScheduler, {}, NoiseSpace.VP_SIGMA, False),
    (UniPCMultistepScheduler, {}, NoiseSpace.VP_SIGMA, False),
    (DEISMultistepScheduler, {}, NoiseSpace.VP_SIGMA, False),
    (LCMScheduler, {}, NoiseSpace.VP_TIMESTEP, True),
]


def _ids(family: tuple[Any, ...]) -> str:
    cls, extra = family[0], family[1]
    return cls.__name__ + ("-" + "-".join(extra) if extra else "")


def _latents(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, 4, 8, 8, generator=generator)
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    return x0, noise


def _step(scheduler: Any, output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> None:
    """Call step as a pipeline does: with a generator only where the scheduler takes one."""
    extra = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        extra["generator"] = torch.Generator().manual_seed(1)
    scheduler.step(output, t, sample, **extra)


@pytest.mark.parametrize("family", FAMILIES, ids=_ids)
def test_x0_from_a_step_equals_the_image_the_scheduler_noised(family: tuple[Any, ...]) -> None:
    cls, extra, space, hands_out_x0 = family
    scheduler = cls(**SD_BETAS, **extra)
    scheduler.set_timesteps(10)
    capture = StepCapture(scheduler)
    assert capture.space is space
    x0, noise = _latents(0)
    for t in scheduler.timesteps[:3]:
        # The scheduler's own add_noise defines where x0 sits in the sample at timestep t.
        sample = scheduler.add_noise(x0, noise, t.reshape(1))
        _step(scheduler, noise, t, sample)
        assert capture.last is not None
        assert (capture.last.pred_original_sample is not None) is hands_out_x0
        torch.testing.assert_close(capture.x0(), x0, atol=2e-4, rtol=1e-4)


def test_x0_for_flow_matching_is_sample_minus_sigma_times_velocity() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    capture = StepCapture(scheduler)
    assert capture.space is NoiseSpace.FLOW
    x0, noise = _latents(2)
    for t in scheduler.timesteps[:3]:
        sample = scheduler.scale_noise(x0, t.reshape(1), noise)
        scheduler.step(noise - x0, t, sample)
        torch.testing.assert_close(capture.x0(), x0, atol=1e-5, rtol=1e-5)


def test_x0_for_flow_sigmas_in_a_multistep_solver() -> None:
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    scheduler.set_timesteps(10)
    capture = StepCapture(scheduler)
    assert capture.space is NoiseSpace.FLOW
    x0, noise = _latents(3)
    for index, t in enumerate(scheduler.timesteps[:3]):
        sigma = scheduler.sigmas[index]
        sample = (1 - sigma) * x0 + sigma * noise
        scheduler.step(noise - x0, t, sample)
        torch.testing.assert_close(capture.x0(), x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_x0_for_v_prediction_in_sigma_space(cls: type[Any]) -> None:
    scheduler = cls(**SD_BETAS, prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    capture = StepCapture(scheduler)
    x0, noise = _latents(4)
    for index, t in enumerate(scheduler.timesteps[:3]):
        alpha, sigma_t = scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[index])
        sample = alpha * x0 + sigma_t * noise
        scheduler.step(alpha * noise - sigma_t * x0, t, sample)
        torch.testing.assert_close(capture.x0(), x0, atol=1e-4, rtol=1e-4)


def test_x0_for_v_prediction_by_timestep() -> None:
    scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    capture = StepCapture(scheduler)
    x0, noise = _latents(5)
    for t in scheduler.timesteps[2:5]:
        alpha_bar = scheduler.alphas_cumprod[int(t)]
        alpha, sigma_t = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        scheduler.step(alpha * noise - sigma_t * x0, t, alpha * x0 + sigma_t * noise)
        torch.testing.assert_close(capture.x0(), x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("cls", "prediction"),
    [
        (EulerDiscreteScheduler, "epsilon"),
        (EulerDiscreteScheduler, "v_prediction"),
        (EulerDiscreteScheduler, "sample"),
        (EulerAncestralDiscreteScheduler, "epsilon"),
        (EulerAncestralDiscreteScheduler, "v_prediction"),
        (HeunDiscreteScheduler, "epsilon"),
        (HeunDiscreteScheduler, "v_prediction"),
        (HeunDiscreteScheduler, "sample"),
    ],
)
def test_derived_x0_in_sigma_space_matches_the_schedulers_own(
    cls: type[Any], prediction: str
) -> None:
    scheduler = cls(**SD_BETAS, prediction_type=prediction)
    scheduler.set_timesteps(8)
    capture = StepCapture(scheduler)
    x0, noise = _latents(6)
    for t in scheduler.timesteps[:3]:
        sample = scheduler.add_noise(x0, noise, t.reshape(1))
        _step(scheduler, noise, t, sample)
        assert capture.last is not None and capture.last.pred_original_sample is not None
        derived = derive_x0(scheduler, NoiseSpace.VE_SIGMA, capture.last)
        torch.testing.assert_close(derived, capture.last.pred_original_sample)


def test_heun_hands_out_x0_at_each_half_step() -> None:
    scheduler = HeunDiscreteScheduler(**SD_BETAS)
    scheduler.set_timesteps(5)
    capture = StepCapture(scheduler)
    x0, noise = _latents(7)
    t = scheduler.timesteps[0]
    scheduler.step(noise, t, scheduler.add_noise(x0, noise, t.reshape(1)))
    torch.testing.assert_close(capture.x0(), x0, atol=1e-4, rtol=1e-4)


def test_the_wrapper_keeps_the_signature_pipelines_inspect() -> None:
    scheduler = EulerAncestralDiscreteScheduler(**SD_BETAS)
    parameters = inspect.signature(scheduler.step).parameters
    StepCapture(scheduler)
    assert inspect.signature(scheduler.step).parameters.keys() == parameters.keys()
    assert "generator" in inspect.signature(scheduler.step).parameters


def test_return_dict_false_gives_the_schedulers_tuple_and_remove_restores_it() -> None:
    scheduler = DDIMScheduler(**SD_BETAS)
    scheduler.set_timesteps(4)
    capture = StepCapture(scheduler)
    x0, noise = _latents(8)
    t = scheduler.timesteps[0]
    wrapped = scheduler.step(noise, t, x0, return_dict=False)
    capture.remove()
    own = scheduler.step(noise, t, x0, return_dict=False)
    assert isinstance(wrapped, tuple) and len(wrapped) == len(own) == 2
    torch.testing.assert_close(wrapped[0], own[0])
    assert "step" not in scheduler.__dict__


class _OpaqueScheduler:
    """A scheduler that gives no x0 and keeps no noise levels the engine knows."""

    config: dict[str, Any] = {"prediction_type": "epsilon"}
    init_noise_sigma = 1.0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        return SchedulerOutput(prev_sample=sample - 0.1 * model_output)


def test_a_scheduler_without_a_known_noise_model_is_refused_not_guessed() -> None:
    scheduler = _OpaqueScheduler()
    capture = StepCapture(scheduler)
    assert capture.space is NoiseSpace.UNKNOWN
    with pytest.raises(RuntimeError, match="no denoising step"):
        capture.x0()
    sample = torch.ones(1, 4, 2, 2)
    scheduler.step(torch.zeros_like(sample), 10, sample)
    with pytest.raises(UnsupportedScheduler, match="_OpaqueScheduler"):
        capture.x0()


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_dynamic_thresholding_matches_the_schedulers_own(scale: float) -> None:
    scheduler = DPMSolverMultistepScheduler(thresholding=True, sample_max_value=2.5)
    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(9)) * scale
    expected = scheduler._threshold_sample(x0)
    got = dynamic_threshold(x0, 0.995, 2.5)
    torch.testing.assert_close(got, expected)


def test_a_thresholding_schedulers_derived_x0_is_thresholded() -> None:
    scheduler = DPMSolverMultistepScheduler(**SD_BETAS, thresholding=True, sample_max_value=1.5)
    scheduler.set_timesteps(10)
    capture = StepCapture(scheduler)
    x0, noise = _latents(10)
    t = scheduler.timesteps[4]
    scheduler.step(noise, t, scheduler.add_noise(x0 * 3, noise, t.reshape(1)))
    derived = capture.x0()
    torch.testing.assert_close(derived, scheduler._threshold_sample(x0 * 3), atol=1e-4, rtol=1e-4)
    assert derived.abs().max() <= 1.0
