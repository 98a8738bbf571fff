"""The nodes' quality history: runs recorded as JSON lines, a curve once enough of them exist."""

from __future__ import annotations

from pathlib import Path

from stepwatch.protocol import Check, Decision
from stepwatch.server.comfyui.history import QualityHistory
from stepwatch.server.engine.curves import MIN_RUNS


def record(step: int, score: float, decision: Decision = "continue") -> Check:
    return Check(step, score, {}, 0.7, decision, "", 3.0, None)


def test_a_curve_appears_once_enough_runs_of_that_verifier_and_sampler_are_recorded(
    tmp_path: Path,
) -> None:
    book = QualityHistory(tmp_path / "user" / "stepwatch" / "history.jsonl")
    assert book.curve("simple", "euler") is None  # no file yet
    for index in range(MIN_RUNS):
        assert book.curve("simple", "euler") is None
        book.record("simple", "euler", 10, [record(5, 0.2 + index / 100), record(10, 0.8)])
        book.record("structure", "euler", 10, [record(5, 0.5)])
    curve = book.curve("simple", "euler")
    assert curve is not None and curve.runs == MIN_RUNS
    assert curve.progress == (0.5, 1.0) and curve.median[-1] == 0.8
    assert book.curve("simple", "dpmpp_2m") is None


def test_checks_after_a_raise_and_unreadable_lines_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    book = QualityHistory(path)
    for _ in range(MIN_RUNS):
        book.record("simple", "euler", 10, [record(5, 0.1, "raise_cfg"), record(10, 0.9)])
    book.record("simple", "euler", 10, [])
    with path.open("a") as file:
        file.write('not json\n{"verifier": "simple"}\n')
    curve = book.curve("simple", "euler")
    assert curve is not None and curve.runs == MIN_RUNS and curve.progress == (0.5,)
