"""What a search does with its candidates at a check: pure functions of scores and settings.

A strategy sees the live candidates' scores (in batch order) and answers with the batch's new
order: a list of positions into the current batch. ``prune`` answers a shorter list (the lanes
it keeps); ``fk`` a list of the same length whose entries may repeat (each slot's parent);
``best_of_n`` keeps every lane. The engine re-indexes every batch tensor with that list
(:mod:`.lanes`), and asks :func:`schedule_checks` whether a step it would not otherwise check
is one a ``prune`` schedule prunes at. No torch here: these are unit-tested on plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stepwatch.protocol import SearchSettings

__all__ = [
    "Plan",
    "candidate_seed",
    "effective_sample_size",
    "fk_weights",
    "plan",
    "prune_keep",
    "schedule_checks",
]


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of a search's candidate: candidate *i* is the single run of ``seed + i``."""
    return (seed + candidate) % 2**32


@dataclass(frozen=True)
class Plan:
    """A strategy's answer at one check: the batch's new order and whether it changed."""

    order: tuple[int, ...]
    reason: str

    def keeps_all(self, live: int) -> bool:
        """True when the batch goes on unchanged."""
        return self.order == tuple(range(live))


def prune_keep(
    scores: Sequence[float], keep_fraction: float, keep_top: int | None = None
) -> tuple[int, ...]:
    """The positions ``prune`` keeps: the best ``keep_top`` when it is set, else the best
    ``ceil(keep_fraction × live)`` (at least one), in batch order; ties go to the lower
    position."""
    live = len(scores)
    share = keep_top if keep_top is not None else math.ceil(keep_fraction * live - 1e-9)
    keep = min(live, max(1, share))
    ranked = sorted(range(live), key=lambda i: (-scores[i], i))
    return tuple(sorted(ranked[:keep]))


def fk_weights(scores: Sequence[float], best: Sequence[float], sharpness: float) -> np.ndarray:
    """Normalised Feynman–Kac potentials exp(λ·max(r, r_prev)) of the candidates (Singhal et
    al. 2025, the "max" potential); ``best`` holds each candidate's best earlier score."""
    values = np.maximum(np.asarray(scores, dtype=np.float64), np.asarray(best, dtype=np.float64))
    logits = sharpness * values
    weights = np.exp(logits - logits.max())
    normalised: np.ndarray = weights / weights.sum()
    return normalised


def effective_sample_size(weights: np.ndarray) -> float:
    """1 / Σ w², for normalised weights ``w``: k when all are equal, 1 when one holds all."""
    return float(1.0 / np.square(weights).sum())


def schedule_checks(settings: SearchSettings, step: int) -> bool:
    """True when ``settings`` prune at ``step`` (1-based) on a schedule: the engine checks
    there whatever its check interval."""
    return settings.strategy == "prune" and step in settings.prune_steps


def plan(
    settings: SearchSettings,
    check_number: int,
    scores: Sequence[float],
    best: Sequence[float],
    rng: np.random.Generator,
    *,
    last_step: bool,
    step: int = 0,
) -> Plan:
    """What ``settings``' strategy does at the ``check_number``-th check (1-based), at
    ``step``, of a search whose live candidates scored ``scores``; ``rng`` draws FK's
    multinomial resampling."""
    live = len(scores)
    unchanged = Plan(tuple(range(live)), "all candidates go on")
    if last_step or live < 2:
        return unchanged
    match settings.strategy:
        case "best_of_n":
            return unchanged
        case "prune":
            if settings.prune_steps:
                if step not in settings.prune_steps:
                    return unchanged
            elif check_number % settings.prune_every:
                return unchanged
            order = prune_keep(scores, settings.keep_fraction, settings.keep_top)
            return Plan(order, f"pruned to {len(order)} of {live} candidates")
        case "fk":
            if check_number % settings.resample_every:
                return unchanged
            weights = fk_weights(scores, best, settings.fk_lambda)
            ess = effective_sample_size(weights)
            if ess >= settings.ess_threshold * live:
                return Plan(unchanged.order, f"effective sample size {ess:.2f} of {live}: kept")
            drawn = rng.multinomial(live, weights)
            # Parents in batch order: slot j continues from order[j]; a parent drawn once keeps
            # its own slot where it can, so a surviving candidate is never moved.
            order = _assign_slots([int(n) for n in drawn])
            return Plan(order, f"effective sample size {ess:.2f} of {live}: resampled")
    raise AssertionError(settings.strategy)  # pragma: no cover


def _assign_slots(counts: Sequence[int]) -> tuple[int, ...]:
    """Slots for drawn copies: every drawn parent keeps its own slot, extra copies fill the
    slots of the candidates that were not drawn, in order."""
    live = len(counts)
    order = [i if counts[i] > 0 else -1 for i in range(live)]
    extra = [i for i in range(live) for _ in range(max(counts[i] - 1, 0))]
    free = [j for j in range(live) if order[j] < 0]
    for slot, parent in zip(free, extra, strict=True):
        order[slot] = parent
    return tuple(order)
