"""Sampler and scheduler names map onto diffusers schedulers built from the model's config."""

from __future__ import annotations

import pytest
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)

from stepwatch.server.engine import samplers
from stepwatch.server.engine.errors import ParamError

SD_CONFIG = dict(
    PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="v_prediction",
    ).config
)


@pytest.mark.parametrize("sampler", samplers.sampler_names(flow=False))
@pytest.mark.parametrize("schedule", samplers.schedule_names())
def test_every_valid_pair_builds_and_names_itself(sampler: str, schedule: str) -> None:
    if not samplers.schedule_applies(sampler, schedule):
        with pytest.raises(ParamError) as caught:
            samplers.build_scheduler(SD_CONFIG, sampler, schedule, flow=False)
        assert caught.value.field == "scheduler"
        assert f"does not apply to sampler {sampler!r}" in caught.value.message
        return
    scheduler = samplers.build_scheduler(SD_CONFIG, sampler, schedule, flow=False)
    assert samplers.sampler_of(scheduler) == sampler
    assert samplers.schedule_of(scheduler) == schedule
    # The model's training schedule survives the change of solver.
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.prediction_type == "v_prediction"


def test_dpmpp_2m_is_dpm_solver_plus_plus_of_order_two() -> None:
    scheduler = samplers.build_scheduler(SD_CONFIG, "dpmpp_2m", "karras", flow=False)
    assert isinstance(scheduler, DPMSolverMultistepScheduler)
    assert scheduler.config.algorithm_type == "dpmsolver++"
    assert scheduler.config.solver_order == 2 and scheduler.config.use_karras_sigmas


def test_normal_switches_off_sigma_spacing_the_model_config_turned_on() -> None:
    karras_config = {**SD_CONFIG, "use_karras_sigmas": True}
    scheduler = samplers.build_scheduler(karras_config, "euler", "normal", flow=False)
    assert not scheduler.config.use_karras_sigmas


def test_flow_and_noise_prediction_samplers_do_not_mix() -> None:
    with pytest.raises(ParamError, match="does not fit this noise-prediction model"):
        samplers.build_scheduler(SD_CONFIG, "flow_euler", "normal", flow=False)
    flow_config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    with pytest.raises(ParamError, match="one of flow_euler"):
        samplers.build_scheduler(flow_config, "euler", "normal", flow=True)
    scheduler = samplers.build_scheduler(flow_config, "flow_euler", "normal", flow=True)
    assert samplers.is_flow_scheduler(scheduler) and scheduler.config.shift == 3.0


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ParamError, match="unknown sampler 'lms'; one of euler, euler_a"):
        samplers.build_scheduler(SD_CONFIG, "lms", "normal", flow=False)
    with pytest.raises(ParamError, match="unknown scheduler 'beta'; one of normal, karras"):
        samplers.build_scheduler(SD_CONFIG, "euler", "beta", flow=False)


def test_schedulers_outside_the_table_have_no_sampler_name() -> None:
    assert samplers.sampler_of(EulerAncestralDiscreteScheduler()) == "euler_a"
    assert samplers.sampler_of(DPMSolverMultistepScheduler(solver_order=3)) is None


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_sde", "unipc", "deis", "euler"])
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_as_many_steps_as_the_model_was_trained_with_visit_every_timestep_once(
    sampler: str, spacing: str
) -> None:
    config = {**SD_CONFIG, "timestep_spacing": spacing, "steps_offset": 0}
    for steps in (999, 1000):
        scheduler = samplers.build_scheduler(config, sampler, "normal", flow=False)
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.tolist()
        assert len(set(timesteps)) == len(timesteps) == steps, (steps, timesteps[495:505])
    # Fewer steps keep the model's own spacing.
    scheduler = samplers.build_scheduler(config, sampler, "normal", flow=False)
    scheduler.set_timesteps(20)
    assert scheduler.config.timestep_spacing == spacing
