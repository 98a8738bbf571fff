"""Sampler and scheduler names, ComfyUI-style, mapped onto diffusers' scheduler classes.

A run names a **sampler** (the solver algorithm) and a **scheduler** (the noise schedule: how the
noise levels of the steps are spaced). Diffusers folds both into one scheduler class plus config
options; :func:`build_scheduler` makes that instance from the model's own scheduler config, so the
model's training schedule (betas, prediction type, thresholding, shift) is kept.

=============  ==========================================  ===================================
sampler        diffusers class                             options
=============  ==========================================  ===================================
euler          EulerDiscreteScheduler
euler_a        EulerAncestralDiscreteScheduler
heun           HeunDiscreteScheduler                       (two model calls per step)
dpm_2          KDPM2DiscreteScheduler                      (two model calls per step)
dpm_2_a        KDPM2AncestralDiscreteScheduler             (two model calls per step)
dpmpp_2m       DPMSolverMultistepScheduler                 algorithm_type=dpmsolver++, order 2
dpmpp_2m_sde   DPMSolverMultistepScheduler                 algorithm_type=sde-dpmsolver++
unipc          UniPCMultistepScheduler
deis           DEISMultistepScheduler
ddim           DDIMScheduler
ddpm           DDPMScheduler
pndm           PNDMScheduler                               skip_prk_steps=True
flow_euler     FlowMatchEulerDiscreteScheduler             flow-matching models only
lcm            LCMScheduler                                its own models only (see below)
=============  ==========================================  ===================================

A consistency-distilled model (LCM), whose own scheduler is ``LCMScheduler``, is offered ``lcm``
only: its UNet denoises in a handful of consistency steps that no other solver takes, and its
pipeline hands the scheduler arguments (``original_inference_steps``) only that class accepts.

A flow-matching model is offered ``flow_euler``; one whose own scheduler is a multistep solver
configured for flow matching (``use_flow_sigmas=True``, ``prediction_type=flow_prediction``:
Sana's DPM-Solver configuration) is offered the multistep samplers whose class takes those
options too (``dpmpp_2m``, ``dpmpp_2m_sde``, ``unipc``; not ``deis``, whose flow schedule in
diffusers 0.42 stops at a quarter of the noise instead of zero), built with them and with the
model's shift (``flow_shift``, or ``shift`` of a flow-matching Euler config). Only there: a
pipeline that hands its scheduler custom sigmas (Flux) cannot drive these classes.

=============  =================================================================================
scheduler      options (applied to the sampler's class)
=============  =================================================================================
normal         the model's own spacing; Karras/exponential sigmas switched off where they exist
karras         use_karras_sigmas=True (Karras et al. 2022, "Elucidating the Design Space")
exponential    use_exponential_sigmas=True
sgm_uniform    timestep_spacing="trailing"
=============  =================================================================================

A scheduler applies to a sampler when the sampler's class takes all of its options; any other
pair, and a flow-matching sampler on a noise-prediction model or the reverse, is a clear
:class:`~.errors.ParamError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import diffusers

from .errors import ParamError


@dataclass(frozen=True)
class Sampler:
    """One row of the sampler table."""

    name: str
    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    flow: bool = False
    #: The class samples flow-matching models too, configured with :data:`FLOW_SIGMA_OPTIONS`.
    flow_sigmas: bool = False
    #: Offered only to a model whose own scheduler it is (and then alone).
    own_only: bool = False


@dataclass(frozen=True)
class Schedule:
    """One row of the scheduler (noise schedule) table. ``optional`` options are applied only
    where the class takes them; ``required`` ones decide whether the schedule applies."""

    name: str
    required: Mapping[str, Any] = field(default_factory=dict)
    optional: Mapping[str, Any] = field(default_factory=dict)


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("euler", "EulerDiscreteScheduler"),
    Sampler("euler_a", "EulerAncestralDiscreteScheduler"),
    Sampler("heun", "HeunDiscreteScheduler"),
    Sampler("dpm_2", "KDPM2DiscreteScheduler"),
    Sampler("dpm_2_a", "KDPM2AncestralDiscreteScheduler"),
    Sampler(
        "dpmpp_2m",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        flow_sigmas=True,
    ),
    Sampler(
        "dpmpp_2m_sde",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        flow_sigmas=True,
    ),
    Sampler("unipc", "UniPCMultistepScheduler", flow_sigmas=True),
    Sampler("deis", "DEISMultistepScheduler"),
    Sampler("ddim", "DDIMScheduler"),
    Sampler("ddpm", "DDPMScheduler"),
    Sampler("pndm", "PNDMScheduler", {"skip_prk_steps": True}),
    Sampler("flow_euler", "FlowMatchEulerDiscreteScheduler", flow=True),
    Sampler("lcm", "LCMScheduler", own_only=True),
)

_SIGMA_FLAGS = {"use_karras_sigmas": False, "use_exponential_sigmas": False}
#: What makes a multistep solver sample a flow-matching model (these classes take them).
FLOW_SIGMA_OPTIONS: Mapping[str, Any] = {
    "use_flow_sigmas": True,
    "prediction_type": "flow_prediction",
}

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("normal", optional=_SIGMA_FLAGS),
    Schedule("karras", required={"use_karras_sigmas": True}),
    Schedule("exponential", required={"use_exponential_sigmas": True}),
    Schedule("sgm_uniform", required={"timestep_spacing": "trailing"}, optional=_SIGMA_FLAGS),
)


_Row = TypeVar("_Row", Sampler, Schedule)


def _by_name(rows: tuple[_Row, ...], name: str, what: str) -> _Row:
    for row in rows:
        if row.name == name:
            return row
    raise ParamError(what, f"unknown {what} {name!r}; one of {', '.join(r.name for r in rows)}")


def _init_keys(cls: type[Any]) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


def _scheduler_class(sampler: Sampler) -> type[Any]:
    cls: type[Any] = getattr(diffusers, sampler.class_name)
    return cls


def schedule_applies(sampler: str, schedule: str) -> bool:
    """Whether ``schedule`` can be used with ``sampler`` (both must exist)."""
    keys = _init_keys(_scheduler_class(_by_name(SAMPLERS, sampler, "sampler")))
    return set(_by_name(SCHEDULES, schedule, "scheduler").required) <= keys


def _takes_flow_sigmas(row: Sampler) -> bool:
    return row.flow_sigmas


def sampler_names(flow: bool, flow_sigmas: bool = False) -> tuple[str, ...]:
    """The samplers a model can use: flow-matching ones for a flow model, the others otherwise.

    ``flow_sigmas`` says the flow model's own scheduler is a multistep solver on flow sigmas
    (see :func:`uses_flow_sigmas`), which adds the solvers that can be configured so.
    """
    if not flow:
        return tuple(s.name for s in SAMPLERS if not s.flow and not s.own_only)
    own = tuple(s.name for s in SAMPLERS if s.flow)
    return own + tuple(s.name for s in SAMPLERS if flow_sigmas and _takes_flow_sigmas(s))


def offered_samplers(scheduler: Any) -> tuple[str, ...]:
    """The samplers a model whose own scheduler is ``scheduler`` is offered."""
    own = sampler_of(scheduler)
    if own is not None and _by_name(SAMPLERS, own, "sampler").own_only:
        return (own,)
    return sampler_names(is_flow_scheduler(scheduler), uses_flow_sigmas(scheduler))


def max_steps(base_config: Mapping[str, Any], sampler: str) -> int | None:
    """The most steps ``sampler`` takes on a model with this scheduler config, where bounded:
    ``lcm`` picks its steps among the ``original_inference_steps`` it was distilled from."""
    if sampler != "lcm":
        return None
    return int(base_config.get("original_inference_steps") or 50)


def uses_flow_sigmas(scheduler: Any) -> bool:
    """Whether a scheduler instance is a (non flow-matching-Euler) solver on flow sigmas."""
    config = scheduler.config
    return bool(config.get("use_flow_sigmas", False)) and not type(scheduler).__name__.startswith(
        "FlowMatch"
    )


def schedule_names() -> tuple[str, ...]:
    """Every scheduler (noise schedule) name; see :func:`schedule_applies` for valid pairs."""
    return tuple(s.name for s in SCHEDULES)


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether a scheduler instance belongs to a flow-matching model."""
    config = scheduler.config
    return type(scheduler).__name__.startswith("FlowMatch") or bool(
        config.get("use_flow_sigmas", False)
    )


def build_scheduler(
    base_config: Mapping[str, Any], sampler: str, schedule: str, *, flow: bool
) -> Any:
    """Make a fresh scheduler for one run from the model's scheduler config.

    ``flow`` says whether the model is a flow-matching model. Raises
    :class:`~.errors.ParamError` naming ``sampler`` or ``scheduler`` for an unknown name or a
    combination that does not apply.
    """
    row = _by_name(SAMPLERS, sampler, "sampler")
    noise = _by_name(SCHEDULES, schedule, "scheduler")
    on_flow_sigmas = flow and _takes_flow_sigmas(row)
    if row.flow != flow and not on_flow_sigmas:
        kind = "flow-matching" if flow else "noise-prediction"
        raise ParamError(
            "sampler",
            f"sampler {sampler!r} does not fit this {kind} model; "
            f"one of {', '.join(sampler_names(flow))}",
        )
    cls = _scheduler_class(row)
    keys = _init_keys(cls)
    if not set(noise.required) <= keys:
        valid = [s.name for s in SCHEDULES if set(s.required) <= keys]
        raise ParamError(
            "scheduler",
            f"scheduler {schedule!r} does not apply to sampler {sampler!r}; "
            f"one of {', '.join(valid)}",
        )
    if on_flow_sigmas and any(noise.required.get(flag) for flag in _SIGMA_FLAGS):
        # These classes take Karras/exponential sigmas before flow sigmas: the schedule would
        # silently stop being a flow-matching one.
        raise ParamError(
            "scheduler",
            f"scheduler {schedule!r} does not apply to sampler {sampler!r} on a flow-matching "
            "model; one of normal, sgm_uniform",
        )
    options = {**row.options, **noise.required}
    options.update({k: v for k, v in noise.optional.items() if k in keys})
    config = {k: v for k, v in base_config.items() if k in keys}
    if flow:
        config.update(_flow_shift(base_config, keys))
    if on_flow_sigmas:
        options.update(FLOW_SIGMA_OPTIONS)
    scheduler = cls.from_config({**config, **options})
    if "timestep_spacing" in keys and not any(options.get(flag) for flag in _SIGMA_FLAGS):
        _trailing_at_every_train_step(scheduler)
    return scheduler


def _flow_shift(base_config: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    """The model's timestep shift under the name the target class uses: multistep solvers call
    it ``flow_shift``, the flow-matching Euler scheduler ``shift``."""
    shift = base_config.get("flow_shift", base_config.get("shift"))
    if shift is None:
        return {}
    return {name: shift for name in ("flow_shift", "shift") if name in keys}


def _trailing_at_every_train_step(scheduler: Any) -> None:
    """Space the timesteps ``trailing`` when a run takes (nearly) as many steps as the model was
    trained with.

    There, ``linspace`` spacing rounds two steps onto one timestep (1000 of 1000: step 501
    repeats step 500) and ``leading`` collapses them; a repeated timestep is a zero step size,
    which multistep solvers (DPM-Solver++, UniPC, DEIS) divide by: NaN. ``trailing`` gives
    every timestep once, which is what the other spacings mean at that count.
    """
    set_timesteps = scheduler.set_timesteps
    train_steps = int(scheduler.config.get("num_train_timesteps", 0))

    def set_timesteps_once_each(
        num_inference_steps: int | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        if num_inference_steps is not None and num_inference_steps >= train_steps - 1:
            scheduler.register_to_config(timestep_spacing="trailing")
        return set_timesteps(num_inference_steps, *args, **kwargs)

    scheduler.set_timesteps = set_timesteps_once_each


def sampler_of(scheduler: Any) -> str | None:
    """Name the table's sampler a scheduler instance is, or ``None`` when it is none of them."""
    name = type(scheduler).__name__
    for row in SAMPLERS:
        if row.class_name == name and all(
            scheduler.config.get(k) == v for k, v in row.options.items()
        ):
            return row.name
    return None


def schedule_of(scheduler: Any) -> str:
    """Name the noise schedule a scheduler instance uses (``normal`` when none of the others)."""
    for noise in SCHEDULES[1:]:
        if noise.required and all(scheduler.config.get(k) == v for k, v in noise.required.items()):
            return noise.name
    return "normal"
