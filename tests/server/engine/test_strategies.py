"""The search strategies as pure functions of scores and settings."""

from __future__ import annotations

import numpy as np
import pytest

from stepwatch.protocol import SearchSettings
from stepwatch.server.engine.strategies import (
    candidate_seed,
    effective_sample_size,
    fk_weights,
    plan,
    prune_keep,
    schedule_checks,
)


def test_candidate_i_is_the_seed_plus_i() -> None:
    assert [candidate_seed(7, i) for i in range(3)] == [7, 8, 9]
    assert candidate_seed(2**32 - 1, 1) == 0


@pytest.mark.parametrize(
    ("live", "fraction", "kept"), [(8, 0.5, 4), (4, 0.5, 2), (3, 0.5, 2), (2, 0.5, 1), (5, 0.0, 1)]
)
def test_prune_keeps_the_best_share_rounded_up_and_at_least_one(
    live: int, fraction: float, kept: int
) -> None:
    scores = [0.1 * i for i in range(live)][::-1]
    assert prune_keep(scores, fraction) == tuple(range(kept))


def test_prune_keeps_batch_order_and_breaks_ties_to_the_lower_lane() -> None:
    assert prune_keep([0.2, 0.9, 0.5, 0.9], 0.5) == (1, 3)
    assert prune_keep([0.5, 0.5, 0.5], 0.34) == (0, 1)


def test_fk_potential_uses_the_best_of_now_and_before() -> None:
    weights = fk_weights([0.1, 0.9], [0.9, 0.0], sharpness=5.0)
    assert weights == pytest.approx([0.5, 0.5])
    sharp = fk_weights([0.1, 0.9], [0.0, 0.0], sharpness=5.0)
    assert sharp[1] / sharp[0] == pytest.approx(np.exp(5.0 * 0.8))
    assert effective_sample_size(np.array([0.25] * 4)) == pytest.approx(4.0)
    assert effective_sample_size(np.array([1.0, 0.0])) == pytest.approx(1.0)


def test_fk_resamples_only_below_the_ess_threshold() -> None:
    rng = np.random.default_rng(0)
    even = plan(SearchSettings("fk"), 1, [0.5] * 4, [0.0] * 4, rng, last_step=False)
    assert even.order == (0, 1, 2, 3) and "kept" in even.reason
    settings = SearchSettings("fk", fk_lambda=100.0)
    skewed = plan(settings, 1, [0.9, 0.1, 0.1, 0.1], [0.0] * 4, rng, last_step=False)
    assert skewed.order == (0, 0, 0, 0) and "resampled" in skewed.reason


def test_fk_keeps_a_drawn_parent_in_its_own_slot() -> None:
    settings = SearchSettings("fk", fk_lambda=30.0, ess_threshold=1.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        decided = plan(settings, 1, [0.9, 0.1, 0.85, 0.2], [0.0] * 4, rng, last_step=False)
        for slot, parent in enumerate(decided.order):
            if parent in decided.order and slot in decided.order:
                assert decided.order[slot] == slot


def test_no_strategy_acts_at_the_last_step_or_on_one_candidate() -> None:
    rng = np.random.default_rng(0)
    for strategy in ("best_of_n", "prune", "fk"):
        settings = SearchSettings(strategy, fk_lambda=100.0)  # type: ignore[arg-type]
        assert plan(settings, 1, [0.9, 0.1], [0, 0], rng, last_step=True).keeps_all(2)
        assert plan(settings, 1, [0.9], [0], rng, last_step=False).keeps_all(1)


def test_prune_every_and_resample_every_skip_checks() -> None:
    rng = np.random.default_rng(0)
    prune = SearchSettings("prune", prune_every=2)
    assert plan(prune, 1, [0.9, 0.1], [0, 0], rng, last_step=False).keeps_all(2)
    assert plan(prune, 2, [0.9, 0.1], [0, 0], rng, last_step=False).order == (0,)
    fk = SearchSettings("fk", fk_lambda=100.0, resample_every=3)
    skewed, before = [0.9, 0.1, 0.1, 0.1], [0.0] * 4
    assert plan(fk, 2, skewed, before, rng, last_step=False).keeps_all(4)
    assert not plan(fk, 3, skewed, before, rng, last_step=False).keeps_all(4)
    assert plan(SearchSettings(), 1, [0.9, 0.1], [0, 0], rng, last_step=False).keeps_all(2)


def test_keep_top_keeps_the_best_k_whatever_the_fraction() -> None:
    scores = [0.1, 0.7, 0.4, 0.9, 0.2]
    assert prune_keep(scores, 0.5, keep_top=1) == (3,)
    assert prune_keep(scores, 0.0, keep_top=2) == (1, 3)
    assert prune_keep(scores[:2], 0.5, keep_top=4) == (0, 1)


def test_a_prune_schedule_prunes_at_its_steps_only() -> None:
    rng = np.random.default_rng(0)
    settings = SearchSettings("prune", prune_every=1, keep_top=2, prune_steps=(3, 6))
    scores, before = [0.2, 0.9, 0.5, 0.7], [0.0] * 4
    assert plan(settings, 1, scores, before, rng, last_step=False, step=2).keeps_all(4)
    assert plan(settings, 2, scores, before, rng, last_step=False, step=3).order == (1, 3)
    assert plan(settings, 3, scores, before, rng, last_step=False, step=4).keeps_all(4)
    assert plan(settings, 9, scores, before, rng, last_step=True, step=6).keeps_all(4)


def test_only_a_prune_schedule_asks_for_checks_of_its_own() -> None:
    settings = SearchSettings("prune", prune_steps=(1, 4))
    assert [step for step in range(1, 7) if schedule_checks(settings, step)] == [1, 4]
    assert not schedule_checks(SearchSettings("prune"), 1)
    assert not schedule_checks(SearchSettings("fk", prune_steps=(1,)), 1)
