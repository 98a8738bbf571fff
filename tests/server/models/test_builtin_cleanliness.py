"""The ``clean`` component: the shipped regressor on real trajectories, and its training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from stepwatch.server.models.builtin import AdherenceScorer, Judge, ShapesPipeline, data
from stepwatch.server.models.builtin.cleanliness import (
    CleanlinessScorer,
    clean_target,
    psnr,
)
from stepwatch.server.models.builtin.train_cleanliness import (
    SAMPLERS,
    random_prompt,
    sample_trajectories,
    tiny_cleanliness_settings,
    train_cleanliness,
)

# A seed no training batch uses (they derive from seed 0), so these trajectories are new.
UNSEEN = 424_242
PROMPTS = ["red circle", "", "large blue", "square on a light background", "small green cross"]


@pytest.fixture(scope="module")
def cleanliness() -> CleanlinessScorer:
    return CleanlinessScorer.load()


def _with_psnr(image: torch.Tensor, decibels: float) -> torch.Tensor:
    """``image`` plus a fixed pattern scaled to exactly ``decibels`` PSNR from it."""
    pattern = torch.ones_like(image)
    pattern[..., ::2] = -1
    return image + pattern * 10 ** (-decibels / 20)


def test_the_target_maps_psnr_onto_the_documented_scale() -> None:
    final = torch.full((1, 3, 32, 32), 0.5)
    for decibels, expected in ((40.0, 1.0), (28.0, 0.6), (10.0, 0.0), (55.0, 1.0), (4.0, 0.0)):
        image = _with_psnr(final, decibels)
        assert float(psnr(image, final)) == pytest.approx(decibels, abs=1e-3)
        assert float(clean_target(image, final)) == pytest.approx(expected, abs=1e-4)
    assert float(clean_target(final, final)) == 1.0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_clean_rises_along_real_trajectories(
    pipe: ShapesPipeline, cleanliness: CleanlinessScorer, sampler: str
) -> None:
    generator = torch.Generator().manual_seed(UNSEEN)
    estimates, finals = sample_trajectories(pipe, sampler, 20, 3.0, PROMPTS, generator)
    means = [
        sum(cleanliness.clean(images)) / len(PROMPTS)
        for images in (estimates[4], estimates[9], estimates[14], finals)
    ]
    assert means == sorted(means) and len(set(means)) == 4, means
    assert means[0] < 0.4 and means[-1] > 0.7, means


def test_noise_scores_low_and_finished_images_high(
    pipe: ShapesPipeline, cleanliness: CleanlinessScorer
) -> None:
    generator = torch.Generator().manual_seed(UNSEEN)
    noise = torch.rand(8, 3, 32, 32, generator=generator)
    gaussian = (0.5 + 0.5 * torch.randn(8, 3, 32, 32, generator=generator)).clamp(0, 1)
    assert max(cleanliness.clean(torch.cat([noise, gaussian]))) < 0.15
    finished = pipe(PROMPTS, generator=generator, output_type="pt").images
    drawn = torch.from_numpy(data.generate(8, seed=UNSEEN).images).permute(0, 3, 1, 2) / 255
    finished_clean, drawn_clean = cleanliness.clean(finished), cleanliness.clean(drawn.float())
    assert min(finished_clean) > 0.65 and sum(finished_clean) / len(finished_clean) > 0.75
    assert min(drawn_clean) > 0.65 and sum(drawn_clean) / len(drawn_clean) > 0.75
    padded = torch.nn.functional.pad(finished, (2, 2, 2, 2), mode="replicate")
    blurred = torch.nn.functional.avg_pool2d(padded, 5, stride=1)
    noised = (finished + 0.1 * torch.randn(finished.shape, generator=generator)).clamp(0, 1)
    for degraded in (blurred, noised):
        estimate = cleanliness.clean(degraded)
        assert sum(estimate) / len(estimate) < sum(finished_clean) / len(finished_clean) - 0.2
        for value, target in zip(estimate, clean_target(degraded, finished), strict=True):
            assert value == pytest.approx(float(target), abs=0.2)


def test_adherence_reports_clean_beside_an_unchanged_score(scorer: AdherenceScorer) -> None:
    assert scorer.cleanliness is not None
    without = AdherenceScorer(scorer.classifier)
    images = torch.from_numpy(data.generate(4, seed=UNSEEN).images).permute(0, 3, 1, 2) / 255
    images = torch.cat([images.float(), torch.rand(2, 3, 32, 32)])
    clean = scorer.cleanliness.clean(images)
    for prompt in ("red circle", "", "large"):
        plain = without.score(images, prompt)
        for row, ((score, components), (bare, bare_components)) in enumerate(
            zip(scorer.score(images, prompt), plain, strict=True)
        ):
            assert "clean" not in bare_components
            assert components == {**bare_components, "clean": clean[row]}
            assert score == bare == pytest.approx(math.prod(bare_components.values()))
    assert min(clean[:4]) > max(clean[4:])


def test_the_judge_reports_no_clean(judge: Judge) -> None:
    assert judge.cleanliness is None
    images = torch.rand(1, 3, 32, 32)
    assert "clean" not in judge.score(images, "red")[0][1]


def test_prompts_are_drawn_from_the_vocabulary_including_partial_ones() -> None:
    from stepwatch.server.models.builtin import parse_prompt

    generator = torch.Generator().manual_seed(0)
    prompts = [random_prompt(generator, 0.6) for _ in range(200)]
    named = [len(parse_prompt(p).requested()) for p in prompts]
    assert set(named) == {0, 1, 2, 3, 4}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "cleanliness_summary.json"
    }


def test_training_is_reproducible_and_loadable(tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(True)
    runs = [tmp_path / "first", tmp_path / "second"]
    summaries = [
        train_cleanliness(tiny_cleanliness_settings(), 5, out, log=lambda line: None)
        for out in runs
    ]
    first, second = (_files(out) for out in runs)
    assert set(first) == {
        "cleanliness/config.json",
        "cleanliness/diffusion_pytorch_model.safetensors",
        "training/cleanliness_loss.json",
        "training/cleanliness_settings.json",
    }
    assert first == second
    validation = [s["validation"] for s in summaries]
    assert validation[0] == validation[1]
    assert validation[0]["examples"] > 0 and validation[0]["mae_db"] >= 0
    settings = json.loads((runs[0] / "training" / "cleanliness_settings.json").read_text())
    assert settings["seed"] == 5
    loaded = CleanlinessScorer.load(folder=runs[0])
    values = loaded.clean(torch.rand(2, 3, 32, 32))
    assert all(0.0 <= v <= 1.0 for v in values)
