"""The quality policy: a pure function from (quality history, settings, expected curve) to a
decision.

At each check the engine appends the verifier's score to the run's history and asks
:func:`decide` what to do next. A score is judged against what this model usually scores at this
point of a run (its :class:`~.curves.ExpectedCurve` for the verifier and sampler), because an
early x0 estimate is blurry and scores low however well the run goes:

- **stop early** when ``early_stop`` is on, the step is at or after ``min_steps``, the last
  ``patience`` checks scored at or above ``quality_threshold``, and the verifier's ``clean``
  component (1 = finished) is at least ``finished_clean``, so that the outcome is settled and
  the finishing tail (:mod:`.finish`) only has to polish it. A verifier that reports no
  ``clean`` needs at least two holding checks in a row instead.
- **raise CFG** (``cfg * scale_factor``, capped at ``cfg_max``) only when the run falls clearly
  below the curve: its score is under the curve's low band (the 10th percentile of runs at this
  point) *and* under the point a run that ends at the threshold would have reached
  (``threshold * median(p) / median(1)``), and unless the curve says that raising CFG left
  such runs worse off on this model and sampler (measured for the shipped curves: raising is
  not always the cure; DDIM on the built-in model breaks at higher CFG). Without a curve (a
  model with no shipped curve and fewer than :data:`~.curves.MIN_RUNS` completed runs in the
  history) CFG is left alone.
  A run that started with CFG off (``cfg <= 1``) never gets a raise: its pipeline computed no
  unconditional prediction, and switching guidance on mid-run would feed the denoiser a batch
  its conditioning does not match (see :func:`cfg_refusal`).
- **the owner's CFG holds**: once the run's owner sets ``cfg``, automatic CFG changes pause for
  the rest of the run (every later check says so); early stopping still applies.
- otherwise continue.

The threshold and settings are read as they are *now*, so a change mid-run changes later
decisions. Every decision carries a reason a person can read. This module imports neither torch
nor diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from stepwatch.protocol import Decision, RunParameters

from .curves import ExpectedCurve

CFG_OFF_AT = 1.0


class Scored(Protocol):
    """A check in the history: the step it ran at, its score and the score's components."""

    @property
    def step(self) -> int: ...

    @property
    def score(self) -> float: ...

    @property
    def components(self) -> Mapping[str, float]: ...


#: The ``clean`` component at or above which an image counts as settled enough to finish: for
#: the built-in model's learned component, an x0 estimate about 19 dB PSNR from the finished
#: image, which the finishing tail brings to 30-35 dB (see :mod:`.finish`).
FINISHED_CLEAN = 0.3
#: The name of the component that says how finished an image is (1 = finished).
CLEAN = "clean"


@dataclass(frozen=True)
class PolicySettings:
    """The settings the policy reads; the engine replaces them when a ``set`` arrives.

    ``guidance_live`` says whether the pipeline reads its guidance scale at every step (the
    standard CFG pipelines do); where it does not, a raise could not take effect.
    ``owner_cfg_step`` is the step at which the owner last set CFG (``None``: never), which
    pauses automatic CFG; ``curve`` what this model usually scores, if known.
    """

    quality_threshold: float
    scale_factor: float
    cfg_max: float
    patience: int
    min_steps: int
    early_stop: bool
    guidance_on: bool
    guidance_live: bool = True
    curve: ExpectedCurve | None = None
    owner_cfg_step: int | None = None
    finished_clean: float = FINISHED_CLEAN

    @classmethod
    def for_run(
        cls, params: RunParameters, *, guidance_live: bool, curve: ExpectedCurve | None
    ) -> PolicySettings:
        """The settings a run with ``params`` starts with."""
        return cls(
            quality_threshold=params.quality_threshold,
            scale_factor=params.scale_factor,
            cfg_max=params.cfg_max,
            patience=params.patience,
            min_steps=params.min_steps,
            early_stop=params.early_stop,
            guidance_on=params.cfg > CFG_OFF_AT,
            guidance_live=guidance_live,
            curve=curve,
        )


@dataclass(frozen=True)
class PolicyDecision:
    """What to do, why, and the CFG to use from the next step on."""

    decision: Decision
    reason: str
    cfg: float


def decide(
    history: Sequence[Scored],
    settings: PolicySettings,
    *,
    cfg: float,
    total_steps: int,
    applies_at: int | None = None,
) -> PolicyDecision:
    """Decide after the latest check, the last entry of ``history``.

    ``cfg`` is the guidance scale in use; ``total_steps`` the run's planned number of steps (no
    action is taken at the last step, when there is nothing left to change); ``applies_at`` the
    step after which the decision takes effect, when later than the check's (overlapped checks).
    """
    if not history:
        raise ValueError("decide needs at least one check in the history")
    latest = history[-1]
    if max(latest.step, applies_at or 0) >= total_steps:
        return _keep(cfg, f"score {latest.score:.3f} at the last step; nothing left to change")
    if latest.score >= settings.quality_threshold:
        return _at_or_above_threshold(history, settings, cfg)
    return _below_threshold(latest, settings, cfg, latest.step / total_steps)


def _keep(cfg: float, reason: str) -> PolicyDecision:
    return PolicyDecision("continue", reason, cfg)


def _below_threshold(
    latest: Scored, settings: PolicySettings, cfg: float, progress: float
) -> PolicyDecision:
    score, threshold = latest.score, settings.quality_threshold
    why = f"score {score:.3f} < threshold {threshold:.3f}"
    if settings.owner_cfg_step is not None:
        return _keep(
            cfg, f"{why}; automatic CFG paused: the owner set CFG at step {settings.owner_cfg_step}"
        )
    curve = settings.curve
    if curve is None:
        return _keep(cfg, f"{why}, but no expected-score curve is known for this model yet")
    median, low = curve.at(progress)
    on_track = threshold * median / curve.final if curve.final > 0 else 0.0
    where = f"at {progress:.0%} of the run ({curve.describe()}: median {median:.3f}, low {low:.3f})"
    if score >= low or score >= on_track:
        return _keep(cfg, f"{why}, as usual {where}")
    behind = f"{why}, clearly below the usual {where}"
    if curve.raising_hurts:
        return _keep(
            cfg, f"{behind}, but raising CFG has left such runs worse here "
            f"(final score {curve.raise_gain:+.3f} over {curve.raise_runs} runs)",
        )  # fmt: skip
    return _raise_cfg(behind, settings, cfg)


def _raise_cfg(why: str, settings: PolicySettings, cfg: float) -> PolicyDecision:
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
    return PolicyDecision("raise_cfg", f"{why}: raise CFG {cfg:g} -> {raised:g}{capped}", raised)


def _at_or_above_threshold(
    history: Sequence[Scored], settings: PolicySettings, cfg: float
) -> PolicyDecision:
    latest = history[-1]
    why = f"score {latest.score:.3f} >= threshold {settings.quality_threshold:.3f}"
    if not settings.early_stop:
        return _keep(cfg, f"{why}; early stopping is off")
    if latest.step < settings.min_steps:
        return _keep(cfg, f"{why}, but step {latest.step} < min_steps {settings.min_steps}")
    clean = latest.components.get(CLEAN)
    # Without a clean component only a second holding check says the score has settled.
    needed = settings.patience if clean is not None else max(settings.patience, 2)
    streak = holding_streak(history, settings)
    if streak < needed:
        return _keep(cfg, f"{why} ({streak} of {needed} checks needed to stop)")
    if clean is not None and clean < settings.finished_clean:
        return _keep(
            cfg, f"{why}, but the image is not settled yet (clean {clean:.2f} < "
            f"{settings.finished_clean:.2f})",
        )  # fmt: skip
    settled = "" if clean is None else f", clean {clean:.2f}"
    checks = "1 check" if streak == 1 else f"{streak} consecutive checks"
    return PolicyDecision("early_stop", f"{why} for {checks}{settled}: stop early and finish", cfg)


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
