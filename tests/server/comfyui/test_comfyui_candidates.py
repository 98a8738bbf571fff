"""The InferenceScalingNode's best-of-N without ComfyUI: seeds, checks, the choice, the chart."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from stepwatch.protocol import Check
from stepwatch.server.comfyui.adapter import NodeError
from stepwatch.server.comfyui.candidates import CandidateWatch, candidate_seeds
from stepwatch.server.comfyui.chart import HEIGHT, WIDTH, candidates_chart
from stepwatch.server.engine.strategies import candidate_seed
from stepwatch.server.engine.verifiers import VerifierScore


class ScoresPerCall:
    """A verifier at the declared interface: each call answers the next row of scores."""

    def __init__(self, *rows: Sequence[float]) -> None:
        self.rows = [list(row) for row in rows]
        self.batch_sizes: list[int] = []

    def score(self, images: torch.Tensor, prompt: str) -> Sequence[VerifierScore | float]:
        self.batch_sizes.append(images.shape[0])
        return self.rows.pop(0)


def make_watch(verifier: object, candidates: int = 3, steps: int = 5) -> CandidateWatch:
    return CandidateWatch(
        verifier,  # type: ignore[arg-type]
        "fixed",
        candidate_seeds(7, candidates),
        steps=steps,
        cfg=4.0,
        check_interval=2,
        quality_threshold=0.5,
    )


def test_candidate_seeds_are_the_services_and_candidate_zero_is_always_the_seed() -> None:
    assert candidate_seeds(7, 3) == [7, 8, 9] == [candidate_seed(7, i) for i in range(3)]
    # Past the service's 32-bit seeds the node follows ComfyUI's 64-bit ones.
    assert candidate_seeds(2**32 - 1, 2) == [2**32 - 1, 2**32]
    assert candidate_seeds(2**64 - 1, 2) == [2**64 - 1, 0]


def test_every_candidate_is_scored_in_one_call_at_every_check_and_the_last_step() -> None:
    verifier = ScoresPerCall([0.2, 0.6, 0.4], [0.9, 0.5, 0.3], [0.1, 0.7, 0.7])
    watch = make_watch(verifier)
    assert [step for step in range(1, 6) if watch.due(step)] == [2, 4, 5]
    for step in (2, 4, 5):
        watch.check(step, torch.zeros(3, 3, 8, 8))
    assert verifier.batch_sizes == [3, 3, 3] and watch.verifier_calls == 3
    assert watch.final_scores() == [0.1, 0.7, 0.7]
    # The best final score wins, not the best score along the way; a tie goes to the lower.
    assert watch.leader() == 1
    assert watch.summary(5, 5) == "step 5/5: best_of_n of 3: #0 0.100, *#1 0.700, #2 0.700"
    assert {record.decision for history in watch.histories for record in history} == {"continue"}
    history = json.loads(watch.history_json(5))
    assert (history["chosen"], history["seed"], history["strategy"]) == (1, 8, "best_of_n")
    assert [c["fate"] for c in history["candidates"]] == ["finished", "chosen", "finished"]
    assert [check["score"] for check in history["checks"]] == [0.6, 0.5, 0.7]
    assert [check["step"] for check in history["candidates"][0]["checks"]] == [2, 4, 5]


def test_a_verifier_answering_too_few_scores_fails_the_node() -> None:
    watch = make_watch(ScoresPerCall([0.5, 0.5]))
    with pytest.raises(NodeError, match="verifier fixed failed: returned 2 scores for 3"):
        watch.check(2, torch.zeros(3, 3, 8, 8))


def colour_count(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    pixels = np.round(image * 255).astype(int)
    return int((pixels == np.array(rgb)).all(axis=-1).sum())


def test_the_candidates_chart_draws_a_line_per_candidate_the_chosen_one_black() -> None:
    def run(*scores: float) -> list[Check]:
        return [
            Check(2 * (i + 1), s, {}, 0.5, "continue", "", 4.0, None) for i, s in enumerate(scores)
        ]

    histories = [run(0.2, 0.3, 0.4), run(0.5, 0.7, 0.9), run(0.1, 0.2, 0.1)]
    image = candidates_chart(histories, 6, chosen=1)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.float32
    assert colour_count(image, (30, 30, 30)) > 50  # the chosen candidate's thick line
    assert colour_count(image, (31, 119, 180)) > 10  # candidate 0
    assert colour_count(image, (44, 160, 44)) > 10  # candidate 2
    assert colour_count(image, (255, 127, 14)) == 0  # candidate 1 is drawn black
    assert colour_count(image, (200, 40, 40)) > 10  # the threshold
    empty = candidates_chart([[], []], 6, chosen=0)
    assert colour_count(empty, (200, 40, 40)) == 0
