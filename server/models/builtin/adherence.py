"""Prompt adherence for the built-in model: the steering verifier and the held-out judge.

:class:`AdherenceScorer` wraps the small attribute CNN trained with the model. Its
:meth:`~AdherenceScorer.score` takes a batch of RGB images in [0, 1] (any size; resized to 32×32
inside) and a prompt, and returns per image ``(score, components)``:

- ``components[attribute]`` is the classifier's probability that the image shows the value the
  prompt requests, for each attribute the prompt names (omitted attributes are not scored);
- ``score`` is the product of the components: P(every requested attribute | image) under the
  classifier's per-attribute (independent) heads, in [0, 1]. A product, not a mean, so that one
  wrong attribute sinks the score.

A prompt that names nothing ("", "a shape") has nothing to adhere to; its score is then the
classifier's confidence that the image shows *some* clear shape (the product of each attribute's
top probability), with those top probabilities as the components.

Every image also gets a ``clean`` component from :class:`~.cleanliness.CleanlinessScorer`: how
finished the image looks, ``clamp((PSNR to the finished image - 10 dB) / 30 dB, 0, 1)`` as a
learned estimate (see :mod:`.cleanliness` for that contract). It is reported beside the attribute
components, for every prompt, and is *not* a factor of ``score``: the score stays P(requested
attributes | image), and a policy reads ``clean`` to decide whether an image is finished.

:class:`Judge` has the same API on a second classifier of another architecture, trained on another
seed and data split. It is for benchmarks only: never steer sampling with it, so that a quality
gain claimed by a benchmark is not the steering verifier grading its own homework. It adds argmax
helpers (:meth:`Judge.predict`, :meth:`Judge.agreement`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stepwatch.server.models.builtin.classifier import (
    AttributeClassifier,
    JudgeClassifier,
    split_logits,
    to_network_input,
)
from stepwatch.server.models.builtin.cleanliness import CleanlinessScorer
from stepwatch.server.models.builtin.pipeline import weights_dir
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt, parse_prompt

Scores = list[tuple[float, dict[str, float]]]


class AdherenceScorer:
    """Scores how well images show what a prompt asks for (see the module docstring)."""

    subfolder = "adherence"
    classifier_class: type[nn.Module] = AttributeClassifier
    #: Whether :meth:`load` also loads the cleanliness regressor (the judge does not).
    reports_clean = True

    def __init__(self, classifier: nn.Module, cleanliness: CleanlinessScorer | None = None) -> None:
        self.classifier = classifier.float().eval()
        self.cleanliness = cleanliness
        self.device = next(classifier.parameters()).device

    @classmethod
    def load(
        cls, device: str | torch.device = "cpu", folder: Path | None = None
    ) -> AdherenceScorer:
        """Load the shipped classifier (or one from ``folder``, a training output) offline."""
        path = (folder or weights_dir()) / cls.subfolder
        classifier = cls.classifier_class.from_pretrained(path, low_cpu_mem_usage=False)  # type: ignore[attr-defined]
        cleanliness = CleanlinessScorer.load(device, folder) if cls.reports_clean else None
        return cls(classifier.to(device), cleanliness)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return one N×classes probability block per attribute, in vocabulary order."""
        logits = self.classifier(to_network_input(images, self.device))
        return tuple(block.softmax(dim=1).cpu() for block in split_logits(logits))

    def score(self, images: torch.Tensor, prompt: str) -> Scores:
        """Return ``(score, components)`` per image; raises ``PromptError`` for a bad prompt."""
        wanted = parse_prompt(prompt).class_indices()
        probabilities = self.probabilities(images)
        named = [i for i, index in enumerate(wanted) if index is not None]
        clean = None if self.cleanliness is None else self.cleanliness.clean(images)
        results: Scores = []
        for row in range(images.shape[0]):
            if named:
                components = {
                    ATTRIBUTES[a].name: float(probabilities[a][row, wanted[a]]) for a in named
                }
            else:
                components = {
                    attribute.name: float(block[row].max())
                    for attribute, block in zip(ATTRIBUTES, probabilities, strict=True)
                }
            score = 1.0
            for value in components.values():
                score *= value
            if clean is not None:
                components["clean"] = clean[row]
            results.append((score, components))
        return results


@dataclass(frozen=True)
class Agreement:
    """How often the judge's argmax matches the prompt over a batch.

    ``per_attribute`` covers the attributes the prompt names; ``joint`` is the fraction of images
    on which every named attribute matches (1.0 for a prompt that names nothing).
    """

    per_attribute: dict[str, float]
    joint: float
    count: int


class Judge(AdherenceScorer):
    """The held-out benchmark classifier: :class:`AdherenceScorer`'s API plus argmax helpers."""

    subfolder = "judge"
    classifier_class = JudgeClassifier
    reports_clean = False

    @classmethod
    def load(cls, device: str | torch.device = "cpu", folder: Path | None = None) -> Judge:
        """Load the shipped judge (or one from ``folder``) offline."""
        judge = super().load(device, folder)
        assert isinstance(judge, Judge)
        return judge

    def predict(self, images: torch.Tensor) -> list[ParsedPrompt]:
        """Return the judge's reading of each image: the argmax value of every attribute."""
        indices = [block.argmax(dim=1).tolist() for block in self.probabilities(images)]
        return [
            ParsedPrompt(
                *(
                    attribute.values[column[row]]
                    for attribute, column in zip(ATTRIBUTES, indices, strict=True)
                )
            )
            for row in range(images.shape[0])
        ]

    def matches(self, images: torch.Tensor, prompt: str) -> list[dict[str, bool]]:
        """Return, per image, whether each attribute the prompt names is the judge's argmax."""
        wanted = parse_prompt(prompt).requested()
        readings = [p.requested() for p in self.predict(images)]
        return [{name: seen[name] == value for name, value in wanted.items()} for seen in readings]

    def agreement(self, images: torch.Tensor, prompt: str) -> Agreement:
        """Return per-attribute and joint argmax accuracy of the batch against ``prompt``."""
        rows = self.matches(images, prompt)
        count = len(rows)
        names = list(parse_prompt(prompt).requested())
        per_attribute = {n: sum(r[n] for r in rows) / max(count, 1) for n in names}
        joint = sum(all(r.values()) for r in rows) / max(count, 1)
        return Agreement(per_attribute=per_attribute, joint=joint, count=count)
