"""Expected-score curves: learned from runs' checks, read at any point of a run."""

from __future__ import annotations

import pytest

from stepwatch.server.engine.curves import BINS, ExpectedCurve, curve_key


def test_a_curve_learned_from_runs_keeps_median_and_low_band_per_point() -> None:
    # Ten runs of 20 steps checked every 5 steps; run i scores i/10 higher than run 0.
    runs = [[(step / 20, step / 40 + i / 100) for step in (5, 10, 15, 20)] for i in range(10)]
    curve = ExpectedCurve.from_runs(runs)
    assert curve is not None and curve.runs == 10 and curve.source == "history"
    assert curve.progress == (0.25, 0.5, 0.75, 1.0)
    assert curve.median[-1] == pytest.approx(0.5 + 0.045)
    assert curve.low[-1] == pytest.approx(0.5 + 0.009)  # the 10th percentile of 0.00..0.09
    assert all(low <= median for low, median in zip(curve.low, curve.median, strict=True))


def test_a_curve_interpolates_between_points_and_holds_beyond_its_ends() -> None:
    curve = ExpectedCurve((0.25, 0.75), (0.2, 0.6), (0.1, 0.5), runs=3)
    assert curve.at(0.5) == pytest.approx((0.4, 0.3))
    assert curve.at(0.0) == (0.2, 0.1) and curve.at(1.0) == (0.6, 0.5)
    assert curve.final == 0.6 and curve.describe() == "history curve of 3 runs"


def test_checks_fall_into_the_bin_their_progress_rounds_up_into() -> None:
    curve = ExpectedCurve.from_runs([[(0.01, 0.1), (0.05, 0.2), (0.051, 0.3), (1.0, 0.9)]])
    assert curve is not None
    assert curve.progress == (1 / BINS, 2 / BINS, 1.0)
    assert curve.median == pytest.approx((0.15, 0.3, 0.9))


def test_a_curve_survives_json_and_refuses_bad_shapes() -> None:
    curve = ExpectedCurve((0.5, 1.0), (0.3, 0.9), (0.2, 0.8), runs=12)
    again = ExpectedCurve.from_json(curve.to_json())
    assert again.source == "shipped" and again.at(0.75) == pytest.approx(curve.at(0.75))
    assert ExpectedCurve.from_runs([]) is None and ExpectedCurve.from_runs([[]]) is None
    with pytest.raises(ValueError, match="one median"):
        ExpectedCurve((0.5,), (0.3, 0.9), (0.2,), runs=1)
    with pytest.raises(ValueError, match="increasing"):
        ExpectedCurve((1.0, 0.5), (0.3, 0.9), (0.2, 0.8), runs=1)
    assert curve_key("adherence", "ddim") == "adherence/ddim"
