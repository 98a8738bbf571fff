"""The adherence verifier and the held-out judge, on labelled procedural images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stepwatch.server.models.builtin import AdherenceScorer, Judge, PromptError, data
from stepwatch.server.models.builtin.classifier import AttributeClassifier, JudgeClassifier
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt

# A seed no training split uses, so these images are new to both classifiers.
UNSEEN = 987_654


def _images(count: int) -> tuple[torch.Tensor, list[ParsedPrompt]]:
    batch = data.generate(count, seed=UNSEEN)
    images = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 255
    truths = [
        ParsedPrompt(*(a.values[i] for a, i in zip(ATTRIBUTES, row, strict=True)))
        for row in batch.labels.tolist()
    ]
    return images, truths


def test_true_prompt_scores_high_and_a_wrong_colour_low(scorer: AdherenceScorer) -> None:
    images, truths = _images(16)
    for image, truth in zip(images, truths, strict=True):
        [(right, components)] = scorer.score(image[None], truth.text())
        assert set(components) == {"shape", "colour", "size", "background", "clean"}
        attributes = [v for k, v in components.items() if k != "clean"]
        assert right == pytest.approx(math.prod(attributes))
        wrong_colour = next(c for c in ATTRIBUTES[1].values if c != truth.colour)
        [(wrong, _)] = scorer.score(image[None], truth.text().replace(truth.colour, wrong_colour))
        assert wrong < 0.5 < right


def test_only_requested_attributes_are_scored(scorer: AdherenceScorer) -> None:
    images, truths = _images(4)
    results = scorer.score(images, "red")
    assert len(results) == 4
    for (score, components), truth in zip(results, truths, strict=True):
        assert list(components) == ["colour", "clean"]
        assert 0.0 <= score <= 1.0
        assert (score > 0.5) == (truth.colour == "red")


def test_empty_prompt_scores_how_clearly_a_shape_shows(scorer: AdherenceScorer) -> None:
    images, _ = _images(4)
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clear = [score for score, _ in scorer.score(images, "")]
    noisy = [score for score, _ in scorer.score(noise, "a shape")]
    assert min(clear) > max(noisy)
    assert set(scorer.score(images, "")[0][1]) == {"shape", "colour", "size", "background", "clean"}


def test_any_image_size_is_resized_inside(scorer: AdherenceScorer) -> None:
    images, truths = _images(4)
    large = F.interpolate(images, scale_factor=3, mode="nearest")
    for (small_score, _), (large_score, _) in zip(
        scorer.score(images, truths[0].text()), scorer.score(large, truths[0].text()), strict=True
    ):
        assert large_score == pytest.approx(small_score, abs=0.1)


def test_bad_input_is_rejected(scorer: AdherenceScorer) -> None:
    images, _ = _images(1)
    with pytest.raises(ValueError, match="N×3×H×W"):
        scorer.score(images[0], "red")
    with pytest.raises(PromptError):
        scorer.score(images, "a red dog")


def test_judge_reads_unseen_images_correctly(judge: Judge) -> None:
    images, truths = _images(64)
    readings = judge.predict(images)
    assert sum(r == t for r, t in zip(readings, truths, strict=True)) >= 62
    agreement = judge.agreement(images[:1], truths[0].text())
    assert agreement.joint == 1.0 and agreement.count == 1
    assert agreement.per_attribute == {a.name: 1.0 for a in ATTRIBUTES}


def test_judge_is_a_different_network_from_the_verifier(
    judge: Judge, scorer: AdherenceScorer
) -> None:
    assert isinstance(judge.classifier, JudgeClassifier)
    assert isinstance(scorer.classifier, AttributeClassifier)
    images, truths = _images(2)
    assert judge.matches(images, "") == [{}, {}]
    assert judge.agreement(images, "").joint == 1.0
