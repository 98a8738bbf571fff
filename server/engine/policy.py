"""The quality policy: a pure function from (quality history, settings) to a decision.

At each check the engine appends the verifier's score to the run's history and asks
:func:`decide` what to do next:

- **below the threshold**: raise CFG, ``cfg * scale_factor``, capped at ``cfg_max``. A run that
  started with CFG off (``cfg <= 1``) never gets a raise: its pipeline computed no unconditional
  prediction, so there is nothing to strengthen, and switching guidance on mid-run would feed the
  denoiser a batch its conditioning does not match. For the same reason a run with CFG on is
  never taken to ``cfg <= 1`` (see :func:`cfg_refusal`).
- **at or above the threshold** for ``patience`` consecutive checks, all at or after
  ``min_steps``: stop early.
- otherwise continue.

The threshold is compared with the whole history as it is *now*, so a threshold changed mid-run
changes later decisions. Every decision carries a reason a person can read. This module imports
neither torch nor diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .events import Decision

CFG_OFF_AT = 1.0


class Scored(Protocol):
    """A check in the history: the step it ran at and its score."""

    @property
    def step(self) -> int: ...

    @property
    def score(self) -> float: ...


@dataclass(frozen=True)
class PolicySettings:
    """The settings the policy reads; the engine replaces them when a ``set`` arrives.

    ``guidance_live`` says whether the pipeline reads its guidance scale at every step (the
    standard CFG pipelines do); where it does not, a raise could not take effect.
    """

    quality_threshold: float
    scale_factor: float
    cfg_max: float
    patience: int
    min_steps: int
    early_stop: bool
    guidance_on: bool
    guidance_live: bool = True


@dataclass(frozen=True)
class PolicyDecision:
    """What to do, why, and the CFG to use from the next step on."""

    decision: Decision
    reason: str
    cfg: float


def decide(
    history: Sequence[Scored], settings: PolicySettings, *, cfg: float, total_steps: int
) -> PolicyDecision:
    """Decide after the latest check, the last entry of ``history``.

    ``cfg`` is the guidance scale in use; ``total_steps`` the run's planned number of steps (no
    action is taken at the last step, when there is nothing left to change).
    """
    if not history:
        raise ValueError("decide needs at least one check in the history")
    latest = history[-1]
    threshold = settings.quality_threshold
    if latest.step >= total_steps:
        return _keep(cfg, f"score {latest.score:.3f} at the last step; nothing left to change")
    if latest.score < threshold:
        return _below_threshold(latest.score, settings, cfg)
    return _at_or_above_threshold(history, settings, cfg)


def _keep(cfg: float, reason: str) -> PolicyDecision:
    return PolicyDecision(Decision.CONTINUE, reason, cfg)


def _below_threshold(score: float, settings: PolicySettings, cfg: float) -> PolicyDecision:
    why = f"score {score:.3f} < threshold {settings.quality_threshold:.3f}"
    if not settings.guidance_on:
        return _keep(cfg, f"{why}, but CFG is off (cfg <= 1): no unconditional branch to raise")
    if not settings.guidance_live:
        return _keep(cfg, f"{why}, but this model reads its guidance only once per run")
    if cfg >= settings.cfg_max:
        return _keep(cfg, f"{why}, but CFG {cfg:g} is already at its cap {settings.cfg_max:g}")
    raised = min(cfg * settings.scale_factor, settings.cfg_max)
    if raised <= cfg:
        return _keep(cfg, f"{why}, but scale_factor {settings.scale_factor:g} does not raise CFG")
    capped = " (capped)" if raised == settings.cfg_max else ""
    return PolicyDecision(
        Decision.RAISE_CFG, f"{why}: raise CFG {cfg:g} -> {raised:g}{capped}", raised
    )


def _at_or_above_threshold(
    history: Sequence[Scored], settings: PolicySettings, cfg: float
) -> PolicyDecision:
    latest = history[-1]
    why = f"score {latest.score:.3f} >= threshold {settings.quality_threshold:.3f}"
    if not settings.early_stop:
        return _keep(cfg, f"{why}; early stopping is off")
    if latest.step < settings.min_steps:
        return _keep(cfg, f"{why}, but step {latest.step} < min_steps {settings.min_steps}")
    streak = holding_streak(history, settings)
    if streak >= settings.patience:
        return PolicyDecision(
            Decision.EARLY_STOP, f"{why} for {streak} consecutive checks: stop early", cfg
        )
    return _keep(cfg, f"{why} ({streak} of {settings.patience} checks needed to stop)")


def holding_streak(history: Sequence[Scored], settings: PolicySettings) -> int:
    """Count the trailing checks at or after ``min_steps`` that score at or above the threshold."""
    streak = 0
    for check in reversed(history):
        if check.step < settings.min_steps or check.score < settings.quality_threshold:
            break
        streak += 1
    return streak


def cfg_refusal(start_cfg: float, requested: float) -> str:
    """Say why a CFG of ``requested`` cannot be used in a run that started at ``start_cfg``.

    Returns an empty string when it can. A pipeline decides once, from its starting guidance,
    whether to compute the unconditional prediction; a value on the other side of 1.0 would make
    it build a batch its prompt embeddings do not match.
    """
    if (start_cfg > CFG_OFF_AT) == (requested > CFG_OFF_AT):
        return ""
    if start_cfg > CFG_OFF_AT:
        return f"cfg {requested:g} would switch guidance off in a run that started with it on"
    return f"cfg {requested:g} would switch guidance on in a run that started with it off"
