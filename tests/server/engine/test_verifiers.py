"""Verifiers: ``structure`` and ``variance_edges`` (alias ``simple``), the contract checks, and
operator-registered custom verifiers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic_pictures import grey_noise, picture, uniform_noise
from tiny_models import Recorder

from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import VerifierError
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.structure import gaussian_blur
from stepwatch.server.engine.verifiers import (
    BUILTIN_COMPONENTS,
    SIMPLE,
    STRUCTURE,
    VARIANCE_EDGES,
    ModelVerifier,
    StructureVerifier,
    VarianceEdgeVerifier,
    VerifierEntry,
    VerifierRegistry,
    VerifierScore,
    score_batch,
)


def test_variance_edges_scores_a_flat_image_zero_and_a_sharp_one_high() -> None:
    flat = torch.full((1, 3, 16, 16), 0.5)
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., ::2] = 1.0
    flat_score, stripes_score = VarianceEdgeVerifier().score(torch.cat([flat, stripes]), "any")
    assert flat_score == VerifierScore(0.0, {"variance": 0.0, "edges": 0.0})
    assert stripes_score.components["variance"] == pytest.approx(1.0)
    assert stripes_score.components["edges"] == pytest.approx(1.0)
    assert stripes_score.value == pytest.approx(1.0)


def test_variance_edges_follows_its_documented_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 12, 12, generator=generator) * 0.3
    [score] = VarianceEdgeVerifier().score(image, "any")
    luma = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)[0]
    variance = min(1.0, 4 * float(luma.var(unbiased=False)))
    dx, dy = luma[:-1, 1:] - luma[:-1, :-1], luma[1:, :-1] - luma[:-1, :-1]
    edges = min(1.0, float((dx**2 + dy**2).sqrt().mean()) / 0.1)
    assert score.components["variance"] == pytest.approx(variance, rel=1e-5)
    assert score.components["edges"] == pytest.approx(edges, rel=1e-5)
    assert score.value == pytest.approx((variance + edges) / 2, rel=1e-5)


def test_simple_is_the_original_name_of_variance_edges() -> None:
    registry = VerifierRegistry()
    infos = {info.id: info for info in registry.infos()}
    assert "variance_edges" in infos[SIMPLE].description
    assert "noise scores high" in infos[VARIANCE_EDGES].description
    image = uniform_noise(16).float()
    [by_alias] = score_batch(registry.get(SIMPLE), image, "p")
    assert [by_alias] == score_batch(registry.get(VARIANCE_EDGES), image, "p")
    assert tuple(by_alias.components) == BUILTIN_COMPONENTS[SIMPLE]


def structure_scores(images: torch.Tensor) -> list[VerifierScore]:
    return score_batch(StructureVerifier(), images.float(), "any prompt")


def test_structure_ranks_noise_below_blur_below_a_clean_picture() -> None:
    clean = picture(64)
    blurred = gaussian_blur(clean, 4.0)
    noisy = (clean + grey_noise(clean.shape, 0.1)).clamp(0, 1)
    noise = uniform_noise(64)
    s_noise, s_noisy, s_blurred, s_clean = structure_scores(
        torch.cat([noise, noisy, blurred, clean])
    )
    assert s_noise.value < s_noisy.value < s_blurred.value < s_clean.value
    # Measured: noise 0.001, the picture plus noise 0.03, blurred 0.53, clean 0.80.
    assert s_noise.value < 0.05 and s_noisy.value < 0.1
    assert 0.4 < s_blurred.value < 0.65 and s_clean.value > 0.75
    # Noise keeps plenty of coarse contrast; it is `clean` that sinks it.
    assert s_noisy.components["structure"] > 0.7 and s_noisy.components["clean"] < 0.1
    assert s_clean.components["clean"] > 0.99 and s_blurred.components["clean"] > 0.99
    assert s_blurred.components["structure"] < s_clean.components["structure"]


def test_variance_edges_gets_the_ranking_wrong() -> None:
    # Why `structure` is the default: the original formula scores noise above the picture.
    clean, noise = picture(64), uniform_noise(64)
    s_noise, s_clean = VarianceEdgeVerifier().score(torch.cat([noise, clean]).float(), "p")
    assert s_noise.value > 0.5 > 0.1 > s_clean.value


def test_structure_components_are_the_policys_contract() -> None:
    flat = torch.full((1, 3, 32, 32), 0.5)
    [s_flat, s_noise] = structure_scores(torch.cat([flat, uniform_noise(32).float()]))
    assert tuple(s_flat.components) == BUILTIN_COMPONENTS[STRUCTURE] == ("structure", "clean")
    # `clean` 1 means no noise left: a flat image is clean, with nothing in it to score.
    assert s_flat == VerifierScore(0.0, {"structure": 0.0, "clean": 1.0})
    assert s_noise.components["clean"] < 0.01
    assert s_noise.value == pytest.approx(
        s_noise.components["structure"] * s_noise.components["clean"]
    )


TOLERANCE = 0.05


@pytest.mark.parametrize(
    "variant",
    [
        lambda image: image,
        lambda image: gaussian_blur(image, image.shape[-1] * 0.06),
    ],
    ids=["clean", "blurred"],
)
def test_structure_scores_one_picture_alike_at_every_preview_size(variant: Any) -> None:
    # 32 px: a latent-sized linear preview; 256 and 512 px: a VAE decode of the same picture.
    scores = [structure_scores(variant(picture(side)))[0] for side in (32, 64, 256, 512)]
    for name in ("score", "structure", "clean"):
        values = [s.value if name == "score" else s.components[name] for s in scores]
        # Measured spread: 0.028 (clean pictures, 0.770 at 32 px to 0.798 at 64 px).
        assert max(values) - min(values) <= TOLERANCE, (name, values)


def test_variance_edges_scores_one_picture_differently_at_every_size() -> None:
    scores = [VarianceEdgeVerifier().score(picture(side).float(), "p")[0] for side in (32, 512)]
    assert scores[0].value > 5 * scores[1].value


def test_structure_refuses_images_that_are_not_rgb() -> None:
    with pytest.raises(VerifierError, match="expected RGB images"):
        structure_scores(torch.zeros(1, 1, 16, 16))


def test_structure_sees_no_noise_in_a_preview_too_small_to_measure() -> None:
    # The linear preview of an 8-pixel image is one latent pixel: never "clean".
    [score] = structure_scores(torch.rand(1, 3, 2, 2))
    assert score.components["clean"] == 0.0 and score.value == 0.0


def test_structure_reads_the_built_in_models_estimates_as_they_finish(
    shapes_model: LoadedModel, recorder: Recorder
) -> None:
    registry = VerifierRegistry()
    params = RequestedParams(
        "red circle", seed=0, steps=20, check_interval=5, verifier=STRUCTURE, early_stop=False,
        quality_threshold=0.0,
    )  # fmt: skip
    run_monitored(shapes_model, shapes_model.resolve(params), registry, RunControl(), recorder)
    clean = {check.step: check.components["clean"] for check in recorder.checks}
    score = {check.step: check.score for check in recorder.checks}
    # The identity decoder's x0 estimates: noisy at step 5, speckled at 10, finished at 20.
    assert clean[5] < 0.1 and clean[10] < 0.6 and clean[20] > 0.8
    assert score[5] < score[10] < score[20] and score[20] > 0.6


@pytest.mark.parametrize("model_name", ["sd_model", "sdxl_model"])
def test_the_default_verifier_never_stops_early_on_a_noise_preview(
    model_name: str, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    assert model.defaults.verifier == STRUCTURE
    registry = VerifierRegistry()
    params = RequestedParams(
        "red circle", seed=3, steps=10, cfg=3.0, check_interval=1, early_stop=True,
        quality_threshold=0.05, patience=1, min_steps=0,
    )  # fmt: skip
    result = run_monitored(model, model.resolve(params), registry, RunControl(), recorder)
    assert result.reason == "completed" and result.steps_run == 10
    assert len(recorder.checks) == 10
    for check in recorder.checks:
        # The random-weight pipeline's previews are pure noise: far below the default
        # threshold (0.7), and not clean.
        assert check.score < 0.05 and check.components["clean"] < 0.1
        assert check.decision != "early_stop"


@pytest.mark.parametrize("decoder", ["linear", "tiny", "vae"])
def test_noise_previews_score_low_through_every_decoder(
    decoder: str, sd_model: LoadedModel, recorder: Recorder
) -> None:
    params = RequestedParams(
        "red circle", seed=3, steps=6, cfg=3.0, check_interval=2, early_stop=True,
        quality_threshold=0.3, patience=1, min_steps=0, preview_decoder=decoder,
    )  # fmt: skip
    result = run_monitored(
        sd_model, sd_model.resolve(params), VerifierRegistry(), RunControl(), recorder
    )
    # Measured: linear 0.00, tiny 0.10 (an almost black image), vae 0.13: even at a threshold
    # of 0.3, far under the default 0.7, none of them stops early.
    assert result.reason == "completed"
    assert [check.step for check in recorder.checks] == [2, 4, 6]
    assert all(check.score < 0.2 for check in recorder.checks)


class Fixed:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def score(self, images: torch.Tensor, prompt: str) -> Any:
        return self.answer


def test_bare_floats_are_scores_without_components() -> None:
    assert score_batch(Fixed([0.25]), torch.zeros(1, 3, 4, 4), "p") == [VerifierScore(0.25, {})]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([0.5, 0.5], "2 scores for 1 images"),
        ([1.2], "score must be a number in"),
        ([float("nan")], "score must be a number in"),
        ([VerifierScore(0.5, {"part": -0.1})], "part must be a number in"),
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
    assert [info.id for info in first.infos()] == ["once", "simple", "structure", "variance_edges"]
    with pytest.raises(VerifierError, match="already registered"):
        first.register("once", factory)
    with pytest.raises(
        VerifierError, match="unknown verifier 'nope'; one of once, simple, structure, variance"
    ):
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
    info = VerifierEntry("adherence", "prompt adherence", "model shapes")
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
            from stepwatch.server.engine.verifiers import VerifierScore

            class Brightness:
                """Mean brightness."""

                def score(self, images, prompt):
                    means = images.mean(dim=(1, 2, 3)).tolist()
                    return [VerifierScore(m, {"brightness": m, "prompt_words": 0.5}) for m in means]
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
    params = RequestedParams("red circle", seed=1, steps=6, check_interval=3, verifier="brightness")
    result = run_monitored(sd_model, sd_model.resolve(params), registry, RunControl(), recorder)
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
