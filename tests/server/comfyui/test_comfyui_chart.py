"""The quality chart the InferenceScalingNode outputs as an IMAGE."""

from __future__ import annotations

import numpy as np

from stepwatch.protocol import Check, Decision
from stepwatch.server.comfyui.chart import HEIGHT, WIDTH, quality_chart


def record(step: int, score: float, decision: Decision, cfg: float) -> Check:
    return Check(step, score, {}, 0.5, decision, "", cfg, None)


def colour_count(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    pixels = np.round(image * 255).astype(int)
    return int((pixels == np.array(rgb)).all(axis=-1).sum())


def test_the_chart_draws_scores_by_decision_threshold_and_cfg() -> None:
    history = [
        record(5, 0.2, "raise_cfg", 4.0),
        record(10, 0.8, "early_stop", 5.0),
    ]
    image = quality_chart(history, 20, final_cfg=5.0)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert colour_count(image, (240, 140, 20)) > 10  # the raise
    assert colour_count(image, (30, 160, 60)) > 10  # the early stop
    assert colour_count(image, (200, 40, 40)) > 10  # the threshold
    assert colour_count(image, (40, 90, 200)) > 10  # CFG


def test_a_run_with_no_checks_still_gets_a_chart() -> None:
    image = quality_chart([], 20, final_cfg=4.0)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert colour_count(image, (30, 160, 60)) == 0
