"""Verifiers: the simple formula, the contract checks, and operator-registered custom verifiers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import Recorder

from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import VerifierError
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RunParams
from stepwatch.server.engine.verifiers import (
    ModelVerifier,
    Score,
    SimpleVerifier,
    VerifierInfo,
    VerifierRegistry,
    score_batch,
)


def test_simple_scores_a_flat_image_zero_and_a_sharp_one_high() -> None:
    flat = torch.full((1, 3, 16, 16), 0.5)
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., ::2] = 1.0
    flat_score, stripes_score = SimpleVerifier().score(torch.cat([flat, stripes]), "any")
    assert flat_score == Score(0.0, {"variance": 0.0, "edges": 0.0})
    assert stripes_score.components["variance"] == pytest.approx(1.0)
    assert stripes_score.components["edges"] == pytest.approx(1.0)
    assert stripes_score.value == pytest.approx(1.0)


def test_simple_follows_its_documented_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 12, 12, generator=generator) * 0.3
    [score] = SimpleVerifier().score(image, "any")
    luma = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)[0]
    variance = min(1.0, 4 * float(luma.var(unbiased=False)))
    dx, dy = luma[:-1, 1:] - luma[:-1, :-1], luma[1:, :-1] - luma[:-1, :-1]
    edges = min(1.0, float((dx**2 + dy**2).sqrt().mean()) / 0.1)
    assert score.components["variance"] == pytest.approx(variance, rel=1e-5)
    assert score.components["edges"] == pytest.approx(edges, rel=1e-5)
    assert score.value == pytest.approx((variance + edges) / 2, rel=1e-5)


class Fixed:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def score(self, images: torch.Tensor, prompt: str) -> Any:
        return self.answer


def test_bare_floats_are_scores_without_components() -> None:
    assert score_batch(Fixed([0.25]), torch.zeros(1, 3, 4, 4), "p") == [Score(0.25, {})]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([0.5, 0.5], "2 scores for 1 images"),
        ([1.2], "score must be a number in"),
        ([float("nan")], "score must be a number in"),
        ([Score(0.5, {"part": -0.1})], "part must be a number in"),
        (None, "TypeError"),
    ],
)
def test_answers_outside_the_contract_are_verifier_errors(answer: Any, message: str) -> None:
    with pytest.raises(VerifierError, match=message):
        score_batch(Fixed(answer), torch.zeros(1, 3, 4, 4), "p")


def test_the_registry_is_the_callers_and_makes_each_verifier_once() -> None:
    made: list[int] = []

    def factory() -> Fixed:
        made.append(1)
        return Fixed([0.5])

    first, second = VerifierRegistry(), VerifierRegistry()
    first.register("once", factory, "counts", "test")
    assert "once" in first and "once" not in second
    assert first.get("once") is first.get("once") and made == [1]
    assert [info.id for info in first.infos()] == ["once", "simple"]
    with pytest.raises(VerifierError, match="already registered"):
        first.register("once", factory)
    with pytest.raises(VerifierError, match="unknown verifier 'nope'; one of once, simple"):
        first.get("nope")
    with pytest.raises(VerifierError, match="a verifier id"):
        first.register("no spaces", factory)


def test_a_verifier_that_cannot_start_is_reported() -> None:
    def broken() -> Fixed:
        raise OSError("weights missing")

    registry = VerifierRegistry()
    registry.register("broken", broken)
    with pytest.raises(VerifierError, match="failed to start: weights missing"):
        registry.get("broken")


def test_model_verifiers_join_the_registry() -> None:
    registry = VerifierRegistry()
    info = VerifierInfo("adherence", "prompt adherence", "model shapes")
    registry.register_model_verifiers([ModelVerifier(info, lambda: Fixed([0.9]))])
    registry.register_model_verifiers([ModelVerifier(info, lambda: Fixed([0.1]))])
    assert registry.infos()[0] == info
    assert score_batch(registry.get("adherence"), torch.zeros(1, 3, 2, 2), "p")[0].value == 0.9


def _write_custom_verifier(root: Path) -> None:
    """Install a tiny distribution with a verifier entry point into ``root``."""
    (root / "sw_custom_verifier.py").write_text(
        textwrap.dedent(
            '''
            """A custom verifier: the mean brightness of the image."""
            from stepwatch.server.engine.verifiers import Score

            class Brightness:
                """Mean brightness."""

                def score(self, images, prompt):
                    means = images.mean(dim=(1, 2, 3)).tolist()
                    return [Score(m, {"brightness": m, "prompt_words": 0.5}) for m in means]
            '''
        )
    )
    dist_info = root / "sw_custom_verifier-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sw-custom-verifier\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[stepwatch.verifiers]\nbrightness = sw_custom_verifier:Brightness\n"
    )


def test_a_custom_verifier_registered_by_entry_point_scores_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sd_model: LoadedModel, recorder: Recorder
) -> None:
    _write_custom_verifier(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = VerifierRegistry()
    assert registry.load_entry_points() == ("brightness",)
    [info] = [i for i in registry.infos() if i.id == "brightness"]
    assert info.description == "Mean brightness."
    assert info.source == "entry point sw_custom_verifier:Brightness"
    params = RunParams("red circle", seed=1, steps=6, check_interval=3, verifier="brightness")
    result = run_monitored(sd_model, params, registry, RunControl(), recorder)
    assert [c.step for c in recorder.checks] == [3, 6]
    for check in recorder.checks:
        assert set(check.components) == {"brightness", "prompt_words"}
        assert check.score == check.components["brightness"]
    assert result.final_score == recorder.checks[-1].score


def test_a_custom_verifier_by_module_and_callable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_custom_verifier(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = VerifierRegistry()
    assert registry.register_spec("sw_custom_verifier:Brightness") == "brightness"
    assert registry.register_spec("bright2=sw_custom_verifier:Brightness") == "bright2"
    images = torch.full((2, 3, 4, 4), 0.25)
    assert [s.value for s in score_batch(registry.get("bright2"), images, "p")] == [0.25, 0.25]
    for spec, message in [
        ("nomodule", "module:callable"),
        ("sw_missing_module:X", "cannot load verifier"),
        ("sw_custom_verifier:Missing", "cannot load verifier"),
    ]:
        with pytest.raises(VerifierError, match=message):
            registry.register_spec(spec)
