"""Flow-matching multistep solvers (Sana's DPM-Solver configuration: ``use_flow_sigmas``,
``prediction_type=flow_prediction``) are described as what they are, and run monitored."""

from __future__ import annotations

import pytest
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from tiny_models import Recorder, make_sd3_pipeline

from stepwatch.protocol import Check, Finished
from stepwatch.server.engine import samplers
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.model import describe_pipeline
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry

SANA_SCHEDULER = dict(
    DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0
    ).config
)
MULTISTEP = ("dpmpp_2m", "dpmpp_2m_sde", "unipc")


def test_a_flow_sigma_solver_is_named_and_offers_the_multistep_samplers() -> None:
    scheduler = DPMSolverMultistepScheduler.from_config(SANA_SCHEDULER)
    assert samplers.is_flow_scheduler(scheduler) and samplers.uses_flow_sigmas(scheduler)
    assert samplers.sampler_of(scheduler) == "dpmpp_2m"
    assert samplers.sampler_names(flow=True, flow_sigmas=True) == ("flow_euler", *MULTISTEP)
    # A flow-matching Euler model (SD3, Flux) is offered flow_euler only.
    assert not samplers.uses_flow_sigmas(FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert samplers.sampler_names(flow=True) == ("flow_euler",)


@pytest.mark.parametrize("sampler", MULTISTEP)
def test_multistep_samplers_build_on_flow_sigmas_with_the_models_shift(sampler: str) -> None:
    scheduler = samplers.build_scheduler(SANA_SCHEDULER, sampler, "normal", flow=True)
    assert scheduler.config.use_flow_sigmas
    assert scheduler.config.prediction_type == "flow_prediction"
    assert scheduler.config.flow_shift == 3.0
    assert samplers.sampler_of(scheduler) == sampler
    scheduler.set_timesteps(10)
    # Flow sigmas run from (nearly) 1 down to 0: a flow-matching schedule, not a VP one.
    assert 0.9 < float(scheduler.sigmas[0]) <= 1.0 and float(scheduler.sigmas[-1]) == 0.0


def test_flow_euler_from_a_flow_sigma_config_keeps_the_shift() -> None:
    scheduler = samplers.build_scheduler(SANA_SCHEDULER, "flow_euler", "normal", flow=True)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    assert scheduler.config.shift == 3.0


def test_karras_sigmas_would_replace_flow_sigmas_and_are_refused() -> None:
    with pytest.raises(ParamError, match="on a flow-matching model; one of normal, sgm_uniform"):
        samplers.build_scheduler(SANA_SCHEDULER, "dpmpp_2m", "karras", flow=True)


def test_a_flow_model_on_a_dpm_solver_runs_monitored_with_previews(recorder: Recorder) -> None:
    pipeline = make_sd3_pipeline()
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(SANA_SCHEDULER)
    model = describe_pipeline("sana-like", pipeline)
    assert model.flow and model.defaults.sampler == "dpmpp_2m"
    assert model.samplers == ("flow_euler", *MULTISTEP)
    for sampler in ("dpmpp_2m", "unipc"):
        events = Recorder()
        params = model.resolve(
            RequestedParams(
                "red circle", seed=1, steps=6, sampler=sampler, check_interval=3, early_stop=False
            )
        )
        result = run_monitored(model, params, VerifierRegistry(), RunControl(), events)
        assert isinstance(result, Finished) and result.reason == "completed", result.error
        checks = events.of(Check)
        assert [c.step for c in checks] == [3, 6]
        assert all(c.preview is not None for c in checks)
        assert result.image is not None
