"""Finishing clean: re-plan the rest of a run into a short tail to zero noise.

An early stop (or the owner's ``stop`` in ``finish`` mode) at step ``s`` of ``T`` does not hand
back the x0 estimate of step ``s``: mid-run, that estimate still carries the denoiser's error,
amplified by the noise level (epsilon models divide by the signal level), and looks speckled.
Instead the remaining schedule is re-planned into a *tail* of a few denoiser evaluations at
noise levels taken from the run's own schedule, spaced from the current level down to the
schedule's last one, and the run ends with the x0 estimate of the last of them, as a full run's
final step does.

Between two tail evaluations the sample is moved to the next tail level with the deterministic
DDIM update (Song et al. 2021, "Denoising Diffusion Implicit Models"): every noise
parameterisation the engine knows (:class:`~.x0.NoiseSpace`) writes the sample as
``x = a·x0 + b·eps`` for per-level coefficients ``(a, b)``, so with the estimate ``x0`` of the
current level, ``eps = (x - a·x0) / b`` and the next sample is ``a'·x0 + b'·eps``.

The pipeline keeps driving the tail: its loop iterates over views of ``scheduler.timesteps``, so
writing the tail's timesteps into the positions after the current one makes the pipeline
evaluate its denoiser (with its own conditioning and guidance) at exactly those levels; the
scheduler's position is set to the tail level before each evaluation so that
``scale_model_input`` scales for it. A pipeline that iterates over a copy of its timesteps
evaluates at the wrong level; :meth:`Tail.admit` notices from the timestep the scheduler is
called with, and the run then ends with the last estimate that was made at a known level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .x0 import NoiseSpace

#: The share of the remaining schedule a tail spends (at least :data:`MIN_TAIL_STEPS`
#: evaluations): measured on the built-in model stopped at step 10 of 20, 3 evaluations left the
#: result a median 31.6 dB (DPM-Solver++) / 27.1 dB (DDIM) PSNR from the full run, 4 evaluations
#: 35.3 / 29.9 dB; evenly spaced positions beat ones bunched at either end.
TAIL_FRACTION = 0.4
MIN_TAIL_STEPS = 2
#: A stop of a long run must still end soon: the tail never takes more evaluations than this.
MAX_TAIL_STEPS = 8


def tail_length(remaining: int) -> int:
    """Evaluations a tail spends when ``remaining`` positions of the schedule are left."""
    wanted = min(MAX_TAIL_STEPS, max(MIN_TAIL_STEPS, math.ceil(TAIL_FRACTION * remaining)))
    return min(remaining, wanted)


def tail_positions(current: int, last: int, steps: int) -> tuple[int, ...]:
    """The schedule positions a tail of ``steps`` evaluations visits, from ``current`` (the
    position the sample is at now) to ``last`` (the schedule's last position), evenly spaced.

    Never more positions than remain; always ``current`` first and, with two or more, ``last``.
    """
    if last < current:
        raise ValueError(f"no positions remain: current {current} > last {last}")
    count = max(1, min(steps, last - current + 1))
    if count == 1:
        return (current,)
    span = last - current
    return tuple(current + round(span * i / (count - 1)) for i in range(count))


def level_coefficients(
    scheduler: Any, space: NoiseSpace, position: int, timestep: float
) -> tuple[float, float]:
    """``(a, b)`` with ``x = a·x0 + b·eps`` for the sample at schedule ``position`` (whose
    timestep is ``timestep``: timestep-indexed schedulers read their noise level from it)."""
    if space is NoiseSpace.VP_TIMESTEP:
        alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])
        return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    sigma = float(scheduler.sigmas[position])
    if space is NoiseSpace.VP_SIGMA:
        alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return alpha, sigma * alpha
    if space is NoiseSpace.VE_SIGMA:
        return 1.0, sigma
    if space is NoiseSpace.FLOW:
        return 1.0 - sigma, sigma
    raise ValueError(f"no noise levels are known for a {space} scheduler")


Level = tuple[float, float]


def ddim_move(sample: torch.Tensor, x0: torch.Tensor, here: Level, there: Level) -> torch.Tensor:
    """Move ``sample`` from level ``here`` to level ``there`` along its own noise estimate
    (the deterministic DDIM update). A first-order step: the tail's steps are long, and a
    multistep second-order update extrapolates badly across uneven long steps."""
    a, b = here
    a_next, b_next = there
    eps = (sample.float() - a * x0.float()) / b
    return (a_next * x0.float() + b_next * eps).to(sample.dtype)


@dataclass
class Tail:
    """A planned tail: the schedule positions it evaluates at and how far it has got.

    Built by :func:`plan_tail`; the step capture calls :meth:`admit` before each scheduler
    step of the tail and :meth:`advance` after it.
    """

    scheduler: Any
    space: NoiseSpace
    positions: tuple[int, ...]
    #: The timesteps of the positions, as the pipeline should pass them to the scheduler.
    timesteps: tuple[float, ...]
    done: int = 0
    #: The x0 estimate of the last evaluation made at a planned level: the run's result.
    estimate: torch.Tensor | None = None
    #: Set when the pipeline evaluated at a timestep the tail did not plan: it iterates over a
    #: copy of its schedule, and the tail cannot steer it.
    derailed: bool = False

    @property
    def finished(self) -> bool:
        """Whether every planned evaluation has run (or the tail derailed)."""
        return self.derailed or self.done >= len(self.positions)

    @property
    def position(self) -> int:
        """The schedule position of the evaluation about to run."""
        return self.positions[self.done]

    def admit(self, timestep: Any) -> bool:
        """Before a scheduler step: whether the pipeline evaluated at the planned level.

        Sets the scheduler's position to the tail's (so its own ``step`` computes x0 for this
        level); marks the tail derailed and returns False when the timestep differs.
        """
        expected = self.timesteps[self.done]
        if not math.isclose(float(timestep), expected, rel_tol=1e-6, abs_tol=1e-6):
            self.derailed = True
            return False
        _set_position(self.scheduler, self.position)
        return True

    def advance(self, sample: torch.Tensor, x0: torch.Tensor) -> torch.Tensor | None:
        """After a tail step with estimate ``x0``: the sample for the next tail level, or
        ``None`` after the last evaluation."""
        here = self._level()
        self.estimate = x0
        self.done += 1
        if self.finished:
            return None
        there = self._level()
        _set_position(self.scheduler, self.position)
        return ddim_move(sample, x0, here, there)

    def _level(self) -> tuple[float, float]:
        timestep = self.timesteps[self.done]
        return level_coefficients(self.scheduler, self.space, self.position, timestep)


def plan_tail(
    scheduler: Any, space: NoiseSpace, current: int, steps: int | None = None
) -> Tail | None:
    """Plan a tail of ``steps`` evaluations (default :func:`tail_length` of what remains) from
    schedule position ``current``, writing its
    timesteps into the scheduler's schedule; ``None`` when the scheduler's noise levels are
    unknown or no position remains (the caller then takes the current estimate)."""
    timesteps = getattr(scheduler, "timesteps", None)
    if space is NoiseSpace.UNKNOWN or not isinstance(timesteps, torch.Tensor):
        return None
    last = len(timesteps) - 1
    if current > last:
        return None
    if space is not NoiseSpace.VP_TIMESTEP:
        sigmas = getattr(scheduler, "sigmas", None)
        if not isinstance(sigmas, torch.Tensor) or len(sigmas) <= last:
            return None
    positions = tail_positions(current, last, steps or tail_length(last - current + 1))
    original = timesteps.clone()
    planned = tuple(float(original[p]) for p in positions)
    for offset, position in enumerate(positions):
        # The loop evaluates positions current, current+1, ...; give each the tail's timestep.
        timesteps[current + offset] = original[position]
    return Tail(scheduler, space, positions, planned)


def _set_position(scheduler: Any, position: int) -> None:
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = position


def schedule_position(scheduler: Any, timestep: Any) -> int:
    """The schedule position after the step that ran at ``timestep``: the scheduler's own step
    index where it keeps one, else one past the timestep's place in the schedule."""
    index = getattr(scheduler, "step_index", None)
    if isinstance(index, int):
        return index
    matches = (scheduler.timesteps == timestep).nonzero()
    if len(matches) == 0:
        raise ValueError(f"timestep {timestep!r} is not in the schedule")
    return int(matches[-1]) + 1
