"""The model's x0 estimate: what the finished image would be if sampling stopped now.

A diffusers pipeline calls ``scheduler.step(model_output, t, sample, ...)`` once per denoising
step. :class:`StepCapture` wraps that method on the run's scheduler instance and remembers the
last call: the model output, the timestep, the sample the model saw, the scheduler's step index
and, where the scheduler computes one, its ``pred_original_sample`` (LCM-style schedulers call it
``denoised``). Nothing else happens on the hot path; :meth:`StepCapture.x0` does the arithmetic
only when a check asks for it.

Where the scheduler does not hand out x0 (DPM-Solver, UniPC, DEIS, PNDM, flow matching) it is
derived from the scheduler's own noise levels and ``prediction_type``. Diffusers' schedulers keep
the noisy sample in one of four parameterisations (:class:`NoiseSpace`)::

    vp_timestep  x = sqrt(a_t) x0 + sqrt(1 - a_t) eps          a_t = alphas_cumprod[t]
    vp_sigma     x = alpha x0 + sigma_t eps,  alpha = 1/sqrt(s^2 + 1), sigma_t = s alpha
    ve_sigma     x = x0 + s eps                                 (k-diffusion's sigma space)
    flow         x = (1 - s) x0 + s eps,  model output v = eps - x0, so x0 = x - s v

(``s`` is ``scheduler.sigmas[step_index]``). With ``x_vp`` the sample brought to variance-
preserving scale, epsilon prediction gives ``x0 = (x_vp - sigma_t eps) / alpha``, v prediction
``x0 = alpha x_vp - sigma_t v`` (Salimans & Ho 2022, "Progressive Distillation"), sample
prediction ``x0 = model_output``. A scheduler whose parameterisation is not one of these raises
:class:`~.errors.UnsupportedScheduler`; the engine never passes the noisy latent off as x0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch

from .errors import UnsupportedScheduler

if TYPE_CHECKING:
    from .finish import Tail


class NoiseSpace(StrEnum):
    """How a scheduler's noisy sample relates to x0 and the noise."""

    VP_TIMESTEP = "vp_timestep"
    VP_SIGMA = "vp_sigma"
    VE_SIGMA = "ve_sigma"
    FLOW = "flow"
    UNKNOWN = "unknown"


def noise_space(scheduler: Any) -> NoiseSpace:
    """Tell which parameterisation ``scheduler`` samples in, from its config and attributes."""
    config = scheduler.config
    sigmas = getattr(scheduler, "sigmas", None)
    has_sigmas = isinstance(sigmas, torch.Tensor)
    flow = (
        type(scheduler).__name__.startswith("FlowMatch")
        or bool(config.get("use_flow_sigmas", False))
        or config.get("prediction_type") == "flow_prediction"
    )
    if flow:
        return NoiseSpace.FLOW if has_sigmas else NoiseSpace.UNKNOWN
    if has_sigmas and hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        return NoiseSpace.VP_SIGMA
    if has_sigmas and float(scheduler.init_noise_sigma) > 1.0:
        return NoiseSpace.VE_SIGMA
    if isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor):
        return NoiseSpace.VP_TIMESTEP
    return NoiseSpace.UNKNOWN


@dataclass(frozen=True)
class SchedulerStep:
    """One call of ``scheduler.step`` as the capture saw it."""

    model_output: torch.Tensor
    timestep: Any
    sample: torch.Tensor
    step_index: int | None
    pred_original_sample: torch.Tensor | None


class StepCapture:
    """Wraps ``scheduler.step`` on one scheduler instance to keep the last step's inputs.

    Install it on the scheduler a run uses, before the pipeline starts; :meth:`remove` restores
    the scheduler's own method. The wrapper keeps the original signature (pipelines inspect it to
    decide whether to pass ``eta`` and ``generator``) and returns exactly what the scheduler
    returns, as a tuple when the caller asked for ``return_dict=False``.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.space = noise_space(scheduler)
        self.last: SchedulerStep | None = None
        #: A finishing tail in progress (see :mod:`.finish`); the wrapper steers its steps.
        self.tail: Tail | None = None
        original = scheduler.step

        @functools.wraps(original)
        def step(
            model_output: torch.Tensor,
            timestep: Any,
            sample: torch.Tensor,
            *args: Any,
            return_dict: bool = True,
            **kwargs: Any,
        ) -> Any:
            tail = self.tail if self.tail is not None and not self.tail.finished else None
            steered = tail is not None and tail.admit(timestep)
            output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            self.last = SchedulerStep(
                model_output,
                timestep,
                sample,
                # In a tail the scheduler's own index is not the level; the tail's is.
                tail.position + 1 if tail is not None and steered else _step_index(scheduler),
                _captured_x0(output),
            )
            if tail is not None and steered:
                moved = tail.advance(sample, self.x0())
                if moved is not None:
                    output.prev_sample = moved
            return output if return_dict else output.to_tuple()

        scheduler.step = step

    def remove(self) -> None:
        """Give the scheduler back its own ``step``."""
        self.scheduler.__dict__.pop("step", None)

    def x0(self) -> torch.Tensor:
        """Return the x0 estimate of the last step, in the pipeline's latent layout.

        Raises :class:`~.errors.UnsupportedScheduler` when it can be neither captured nor derived,
        and :class:`RuntimeError` before the first step.
        """
        last = self.last
        if last is None:
            raise RuntimeError("no denoising step has run yet")
        if last.pred_original_sample is not None:
            return last.pred_original_sample
        return derive_x0(self.scheduler, self.space, last)


def _step_index(scheduler: Any) -> int | None:
    index = getattr(scheduler, "step_index", None)
    return index if isinstance(index, int) else None


def _captured_x0(output: Any) -> torch.Tensor | None:
    for name in ("pred_original_sample", "denoised"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def derive_x0(scheduler: Any, space: NoiseSpace, step: SchedulerStep) -> torch.Tensor:
    """Compute x0 from one step's model output, sample and the scheduler's noise levels."""
    name = type(scheduler).__name__
    if space is NoiseSpace.UNKNOWN:
        raise UnsupportedScheduler(
            f"{name} hands out no x0 estimate and its noise parameterisation is not one the "
            "engine can derive x0 from; choose another sampler"
        )
    x, output = step.sample, step.model_output
    if space is NoiseSpace.FLOW:
        x0 = x - _sigma(scheduler, step) * output
    elif space is NoiseSpace.VP_TIMESTEP:
        alpha_bar = float(scheduler.alphas_cumprod[int(step.timestep)])
        x0 = _from_prediction(scheduler, x, output, math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar))
    else:
        sigma = _sigma(scheduler, step)
        alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
        vp_sample = x * alpha if space is NoiseSpace.VE_SIGMA else x
        x0 = _from_prediction(scheduler, vp_sample, output, alpha, sigma * alpha)
    config = scheduler.config
    if config.get("thresholding", False):
        # The scheduler thresholds its own x0 before using it; show the same image it uses.
        x0 = dynamic_threshold(
            x0, float(config.dynamic_thresholding_ratio), float(config.sample_max_value)
        )
    return x0


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image
    Diffusion Models with Deep Language Understanding"), as diffusers' schedulers apply it.

    Per image, ``s`` is the ``ratio`` quantile of ``|x0|`` (linear interpolation between order
    statistics), clamped to ``[1, max_value]``; x0 is clipped to ``[-s, s]`` and divided by ``s``.
    Two ``kthvalue`` calls find the quantile about ten times faster than ``torch.quantile``.
    """
    flat = x0.float().reshape(x0.shape[0], -1).abs()
    position = ratio * (flat.shape[1] - 1)
    below = int(position)
    low = flat.kthvalue(below + 1, dim=1).values
    high = flat.kthvalue(min(below + 2, flat.shape[1]), dim=1).values
    s = (low + (high - low) * (position - below)).clamp(min=1.0, max=max_value)
    s = s.view(-1, *([1] * (x0.dim() - 1)))
    return (x0.float().clamp(-s, s) / s).to(x0.dtype)


def _sigma(scheduler: Any, step: SchedulerStep) -> float:
    if step.step_index is None:
        raise UnsupportedScheduler(
            f"{type(scheduler).__name__} keeps no step index, so its noise level is unknown"
        )
    # The scheduler advances its index at the end of step(); the step that ran used the previous.
    return float(scheduler.sigmas[step.step_index - 1])


def _from_prediction(
    scheduler: Any, vp_sample: torch.Tensor, output: torch.Tensor, alpha: float, sigma_t: float
) -> torch.Tensor:
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction == "epsilon":
        return (vp_sample - sigma_t * output) / alpha
    if prediction == "v_prediction":
        return alpha * vp_sample - sigma_t * output
    if prediction == "sample":
        return output
    raise UnsupportedScheduler(
        f"{type(scheduler).__name__}: cannot derive x0 for prediction_type {prediction!r}"
    )
