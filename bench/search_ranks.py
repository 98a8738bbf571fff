"""Which step can a prune decide at? How well the verifier's early scores rank the candidates.

:mod:`search` runs best-of-8 checked at every step, so it holds every candidate's verifier score
at every step, and it judges every candidate's final image (candidate *i* is the single run of
seed + *i*). From those, per step *s*:

- ``rho_final``: the Spearman rank correlation, across one prompt's 8 candidates, of their scores
  at *s* with their scores at the last step, averaged over prompts: how far the verifier's early
  ranking agrees with its own final one. It needs no judge, so a schedule may be chosen by it.
- ``top1_final``: how often the best candidate at *s* is the verifier's best at the end (chance
  is 1/8).
- ``auc_judged``: over prompts whose candidates the judge splits, the chance that a candidate the
  judge passes at the end outscores, at *s*, one it fails (0.5: no better than chance); with
  its 95% bootstrap interval over prompts. The judge only measures here: nothing steers by it.
- ``prune_n_to_1``: the judged accuracy of keeping the best of the first N candidates at *s* (a
  prune to one there: the survivor is its own single run, so this is that prune's outcome) and
  its cost in denoiser evaluations, N·s + (steps - s).

Plain numbers in, plain numbers out: no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Pools whose prune to one :func:`step_table` reports.
POOLS = (2, 3, 4, 8)
BOOTSTRAP = 1000


@dataclass(frozen=True)
class StepRow:
    step: int
    rho_final: float
    top1_final: float
    auc_judged: float
    auc_low: float
    auc_high: float
    split_prompts: int
    prune_n_to_1: dict[int, float]
    prune_cost: dict[int, int]


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    array = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    mean_rank = starts + (counts - 1) / 2
    ranked: np.ndarray = mean_rank[inverse]
    return ranked


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(scores: Sequence[float], passed: Sequence[bool]) -> float | None:
    """P(a passed candidate outscores a failed one), ties half; None unless both occur."""
    values = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(passed, dtype=bool)
    good, bad = values[mask], values[~mask]
    if not len(good) or not len(bad):
        return None
    wins = (good[:, None] > bad[None, :]).mean() + 0.5 * (good[:, None] == bad[None, :]).mean()
    return float(wins)


def step_table(
    scores: Sequence[Sequence[Sequence[float]]], judged: Sequence[Sequence[bool]], seed: int = 0
) -> list[StepRow]:
    """``scores[prompt][step][candidate]`` and ``judged[prompt][candidate]`` to one row a step."""
    matrix = np.asarray(scores, dtype=np.float64)
    passed = np.asarray(judged, dtype=bool)
    prompts, steps, _ = matrix.shape
    rows = []
    for s in range(steps):
        rhos = [spearman(matrix[p, s], matrix[p, -1]) for p in range(prompts)]
        top1 = [np.argmax(matrix[p, s]) == np.argmax(matrix[p, -1]) for p in range(prompts)]
        aucs = np.asarray(
            [a for p in range(prompts) if (a := auc(matrix[p, s], passed[p])) is not None]
        )
        low, high = bootstrap_interval(aucs, seed + s)
        pools = [n for n in POOLS if n <= matrix.shape[2]]
        rows.append(
            StepRow(
                step=s + 1,
                rho_final=float(np.mean([r for r in rhos if r is not None])),
                top1_final=float(np.mean(top1)),
                auc_judged=float(aucs.mean()) if len(aucs) else float("nan"),
                auc_low=low,
                auc_high=high,
                split_prompts=len(aucs),
                prune_n_to_1={
                    n: float(
                        np.mean([passed[p, np.argmax(matrix[p, s, :n])] for p in range(prompts)])
                    )
                    for n in pools
                },
                prune_cost={n: n * (s + 1) + steps - (s + 1) for n in pools},
            )  # fmt: skip
        )
    return rows


def first_predictive_step(rows: Sequence[StepRow], threshold: float = 0.5) -> int | None:
    """The first step whose early ranking agrees with the final one at ``rho_final`` ≥
    ``threshold`` (judge-free)."""
    return next((r.step for r in rows if r.rho_final >= threshold), None)


def bootstrap_interval(values: Sequence[float] | np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval (2.5th and 97.5th percentiles) of the mean of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    if not len(array):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = [array[rng.integers(0, len(array), len(array))].mean() for _ in range(BOOTSTRAP)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
