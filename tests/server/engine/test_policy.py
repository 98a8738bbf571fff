"""The quality policy as a pure function: history and settings in, a reasoned decision out."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pytest

from stepwatch.server.engine.curves import ExpectedCurve
from stepwatch.server.engine.policy import (
    PolicySettings,
    cfg_refusal,
    decide,
    holding_streak,
)

# What this model usually scores: low early (a blurry x0), 0.9 at the end; low band 0.1 below.
CURVE = ExpectedCurve(
    progress=(0.25, 0.5, 0.75, 1.0),
    median=(0.3, 0.6, 0.8, 0.9),
    low=(0.2, 0.5, 0.7, 0.8),
    runs=40,
    source="shipped",
)
SETTINGS = PolicySettings(
    quality_threshold=0.6,
    scale_factor=1.5,
    cfg_max=9.0,
    patience=2,
    min_steps=10,
    early_stop=True,
    guidance_on=True,
    curve=CURVE,
)


@dataclass(frozen=True)
class Point:
    step: int
    score: float
    components: Mapping[str, float] = field(default_factory=dict)


def history(*scores: float, every: int = 5, clean: float | None = None) -> list[Point]:
    parts = {} if clean is None else {"clean": clean}
    return [Point(every * (i + 1), s, parts) for i, s in enumerate(scores)]


def test_the_policy_module_needs_no_torch() -> None:
    code = (
        "import sys, stepwatch.server.engine.policy, stepwatch.server.engine.control;"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_score_clearly_below_the_curve_raises_cfg_by_the_scale_factor() -> None:
    # Step 5 of 20 (25%): the curve's low band is 0.2, a run ending at the threshold is at 0.2.
    decision = decide(history(0.1), SETTINGS, cfg=4.0, total_steps=20)
    assert decision.decision == "raise_cfg" and decision.cfg == 6.0
    assert "clearly below the usual" in decision.reason and "4 -> 6" in decision.reason
    assert "shipped curve of 40 runs" in decision.reason


def test_a_low_early_score_that_is_usual_at_that_point_raises_nothing() -> None:
    # 0.25 is far below the threshold 0.6, but usual at 25% of a run: a blurry early x0.
    decision = decide(history(0.25), SETTINGS, cfg=4.0, total_steps=20)
    assert decision.decision == "continue" and "as usual at 25%" in decision.reason


def test_a_run_on_track_for_the_threshold_is_not_raised() -> None:
    # Under the low band (0.5 at 50%) but above where a run ending at 0.3 would be.
    settings = replace(SETTINGS, quality_threshold=0.3)
    decision = decide(history(0.2, 0.25), settings, cfg=4.0, total_steps=20)
    assert decision.decision == "continue"


def test_without_a_curve_cfg_is_left_alone() -> None:
    decision = decide(history(0.05), replace(SETTINGS, curve=None), cfg=4.0, total_steps=20)
    assert decision.decision == "continue" and "no expected-score curve" in decision.reason


def test_the_owners_cfg_holds_for_the_rest_of_the_run() -> None:
    settings = replace(SETTINGS, owner_cfg_step=3)
    decision = decide(history(0.05), settings, cfg=2.5, total_steps=20)
    assert decision.decision == "continue" and decision.cfg == 2.5
    assert "automatic CFG paused: the owner set CFG at step 3" in decision.reason
    # Early stopping still applies.
    stop = decide(history(0.9, 0.9, 0.9), settings, cfg=2.5, total_steps=30)
    assert stop.decision == "early_stop"


def test_a_raise_is_capped_then_stops_at_the_cap() -> None:
    capped = decide(history(0.1), SETTINGS, cfg=8.0, total_steps=20)
    assert capped.decision == "raise_cfg" and capped.cfg == 9.0
    assert "capped" in capped.reason
    at_cap = decide(history(0.1), SETTINGS, cfg=9.0, total_steps=20)
    assert at_cap.decision == "continue" and at_cap.cfg == 9.0
    assert "cap 9" in at_cap.reason


def test_no_raise_when_cfg_is_off_or_the_model_reads_guidance_once() -> None:
    off = decide(history(0.1), replace(SETTINGS, guidance_on=False), cfg=1.0, total_steps=20)
    assert off.decision == "continue" and off.cfg == 1.0
    assert "CFG is off" in off.reason
    once = decide(history(0.1), replace(SETTINGS, guidance_live=False), cfg=3.0, total_steps=20)
    assert once.decision == "continue" and "once per run" in once.reason


def test_a_scale_factor_of_one_does_not_raise() -> None:
    decision = decide(history(0.1), replace(SETTINGS, scale_factor=1.0), cfg=3.0, total_steps=20)
    assert decision.decision == "continue" and "does not raise" in decision.reason


def test_early_stop_needs_patience_checks_at_or_above_threshold() -> None:
    one = decide(history(0.2, 0.7), SETTINGS, cfg=3.0, total_steps=30)
    assert one.decision == "continue" and "1 of 2" in one.reason
    two = decide(history(0.2, 0.7, 0.6), SETTINGS, cfg=3.0, total_steps=30)
    assert two.decision == "early_stop" and "2 consecutive" in two.reason


def test_early_stop_waits_until_the_clean_component_says_the_image_is_settled() -> None:
    blurry = decide(history(0.2, 0.9, 0.9, clean=0.1), SETTINGS, cfg=3.0, total_steps=30)
    assert blurry.decision == "continue" and "not settled yet (clean 0.10" in blurry.reason
    settled = decide(history(0.2, 0.9, 0.9, clean=0.5), SETTINGS, cfg=3.0, total_steps=30)
    assert settled.decision == "early_stop" and "clean 0.50" in settled.reason


def test_no_early_stop_before_min_steps_and_checks_before_it_do_not_count() -> None:
    early = decide(history(0.9), SETTINGS, cfg=3.0, total_steps=30)
    assert early.decision == "continue" and "min_steps 10" in early.reason
    # Steps 5 and 10 hold, but step 5 is before min_steps: only one check counts at step 10.
    at_min = decide(history(0.9, 0.9), SETTINGS, cfg=3.0, total_steps=30)
    assert at_min.decision == "continue"
    assert holding_streak(history(0.9, 0.9, 0.9), SETTINGS) == 2


def test_early_stop_can_be_switched_off() -> None:
    settings = replace(SETTINGS, early_stop=False)
    decision = decide(history(0.9, 0.9, 0.9), settings, cfg=3.0, total_steps=30)
    assert decision.decision == "continue" and "early stopping is off" in decision.reason


def test_nothing_happens_at_the_last_step() -> None:
    low = decide(history(0.1, 0.1), SETTINGS, cfg=3.0, total_steps=10)
    high = decide(history(0.9, 0.9, 0.9), SETTINGS, cfg=3.0, total_steps=15)
    assert low.decision is high.decision == "continue"
    assert "last step" in low.reason


def test_a_changed_threshold_rereads_the_whole_history() -> None:
    scores = history(0.65, 0.65, 0.65)
    assert decide(scores, SETTINGS, cfg=3.0, total_steps=30).decision == "early_stop"
    stricter = replace(SETTINGS, quality_threshold=0.7)
    assert decide(scores, stricter, cfg=3.0, total_steps=30).decision == "continue"
    # At 50% of the run 0.45 is under the low band (0.5); a run that ends at 0.99 would be at
    # 0.99 * 0.6 / 0.9 = 0.66 by now, so a threshold of 0.99 asks for a raise.
    strictest = replace(SETTINGS, quality_threshold=0.99)
    assert decide(history(0.45, 0.45), strictest, cfg=3.0, total_steps=20).decision == ("raise_cfg")


def test_a_decision_needs_a_check() -> None:
    with pytest.raises(ValueError, match="at least one check"):
        decide([], SETTINGS, cfg=3.0, total_steps=30)


@pytest.mark.parametrize(
    ("start", "requested", "refused"),
    [(3.0, 5.0, ""), (3.0, 1.0, "off"), (3.0, 0.5, "off"), (1.0, 2.0, "on"), (0.0, 1.0, "")],
)
def test_cfg_never_crosses_the_on_off_boundary(
    start: float, requested: float, refused: str
) -> None:
    why = cfg_refusal(start, requested)
    assert (why == "") == (refused == "")
    if refused:
        assert f"switch guidance {refused}" in why


def test_with_patience_one_a_clean_component_stops_at_once_and_its_absence_asks_for_two() -> None:
    settings = replace(SETTINGS, patience=1)
    clean = decide(history(0.2, 0.9, clean=0.6), settings, cfg=3.0, total_steps=30)
    assert clean.decision == "early_stop" and "for 1 check, clean 0.60" in clean.reason
    unknown = decide(history(0.2, 0.9), settings, cfg=3.0, total_steps=30)
    assert unknown.decision == "continue" and "1 of 2 checks" in unknown.reason


def test_no_raise_where_raising_was_measured_to_leave_such_runs_worse() -> None:
    hurts = replace(CURVE, raise_gain=-0.12, raise_runs=7)
    decision = decide(history(0.1), replace(SETTINGS, curve=hurts), cfg=4.0, total_steps=20)
    assert decision.decision == "continue"
    assert "raising CFG has left such runs worse here (final score -0.120 over 7 runs)" in (
        decision.reason
    )
    helps = replace(CURVE, raise_gain=0.05, raise_runs=7)
    raised = decide(history(0.1), replace(SETTINGS, curve=helps), cfg=4.0, total_steps=20)
    assert raised.decision == "raise_cfg"
